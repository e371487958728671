#!/usr/bin/env python3
"""ResNet train step on one device in channels_last vs contiguous memory (docs/design.md §9).

The trainer's model (recipe.build_model) and loss, one SGD step on random views; the two formats
alternate step by step, so drift in a shared machine's load hits both alike. Prints the median
milliseconds of each and their ratio. On an AVX-512 CPU run it with ONEDNN_MAX_CPU_ISA=AVX2, or
the channels_last backward crashes (docs/upstream-onednn-crash.md):

    ONEDNN_MAX_CPU_ISA=AVX2 python tools/bench_memory_format.py --batch 64 --reps 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastsigclr.data import DATASETS
from fastsigclr.models import resnet
from fastsigclr.recipe import TrainConfig, build_model


def step_fn(fmt: torch.memory_format, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    cfg = TrainConfig(dataset="cifar10", arch=args.arch, width=args.width, device=device.type).resolved()
    model, criterion, _ = build_model(cfg, DATASETS["cifar10"], device)
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    views = torch.randn(2 * args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)

    def step() -> None:
        resnet.memory_format = lambda _device: fmt  # the format under test reaches the forward
        opt.zero_grad(set_to_none=True)
        criterion(model(views)[1], None).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="images per step (two views each)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    formats = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    steps = {name: step_fn(fmt, args, device) for name, fmt in formats.items()}
    times: dict[str, list[float]] = {name: [] for name in formats}
    for rep in range(args.reps + 2):  # two warm-up rounds
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if rep >= 2:
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        q = statistics.quantiles(t, n=5, method="inclusive")
        print(f"{name:>14}: median {med[name]:8.1f} ms  (p20 {q[0]:.1f}, p80 {q[3]:.1f}, {len(t)} steps)")
    print(f"contiguous / channels_last: {med['contiguous'] / med['channels_last']:.3f}")


if __name__ == "__main__":
    main()
