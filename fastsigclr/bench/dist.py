"""``fastsigclr bench dist``: the cost of the distributed sigmoid loss's machinery with one rank,
against the plain loss on the same rows (forward + backward, same device, same run).

With world size 1 no bytes travel, so the difference is the bookkeeping: the block loop, the fp32
gradient accumulator, the shape check and the all-reduce of three floats. Multi-GPU scaling needs
a multi-GPU machine and is not measured here.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from fastsigclr.bench.common import DTYPES, check_even_sizes, result_paths, time_fn, write_results
from fastsigclr.config import FastSigCLRError, check_fields, check_not_empty, option, to_dict
from fastsigclr.runinfo import available_memory_bytes, device_option, resolve_device, run_record

# Peak bytes per element of the 2N×D input, input and gradient included: measured on the CPU in
# fp32 (VmHWM) at most 8.2× the input's 4 bytes above it (plain, 2N = 8192; 3–4× at 32,768), so
# 4 + 4 + 33, rounded up. Every provider holds O(N·D): the 2N×2N matrix is never formed.
BYTES_PER_ELEMENT = 48
PROVIDERS = ("plain", "ring", "gather")


@dataclass(frozen=True)
class BenchDistConfig:
    device: str = device_option("device to measure on")
    sizes: tuple[int, ...] | None = option(
        None, "rows 2N (even); unset: 8192,16384 on CUDA, 512,1024 on CPU", ge=2
    )
    dim: int = option(128, "feature size D", ge=1)
    dtype: str | None = option(None, "input dtype; unset: bf16 on CUDA, fp32 on CPU", choices=tuple(DTYPES))
    reps: int | None = option(None, "timed calls; unset: 20 on CUDA, 10 on CPU", ge=1)
    out: str = option("benchmarks/local", "directory for dist-<device>.json and .png", path=True)
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_not_empty(self, "sizes")
        check_fields(self)
        check_even_sizes(self.sizes)

    def resolved(self, device: torch.device) -> BenchDistConfig:
        cuda = device.type == "cuda"
        return dataclasses.replace(
            self,
            device=device.type,
            sizes=self.sizes or ((8192, 16384) if cuda else (512, 1024)),
            dtype=self.dtype or ("bf16" if cuda else "fp32"),
            reps=self.reps or (20 if cuda else 10),
        )


def check_fits(cfg: BenchDistConfig, device: torch.device, available: int | None = None) -> None:
    """Refuse, before the process group starts, a ``--sizes`` whose largest case cannot fit in memory
    (``BYTES_PER_ELEMENT`` of the 2N×D input)."""
    if available is None:
        available = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory_bytes()
    rows = max(cfg.sizes or ())
    need = BYTES_PER_ELEMENT * rows * cfg.dim
    if need > available:
        largest = 2 * (int(available / (BYTES_PER_ELEMENT * cfg.dim)) // 2)
        smaller = (
            f"--sizes ≤ {largest}"
            if largest >= 2
            else f"--dim ≤ {max(1, int(available / (BYTES_PER_ELEMENT * rows)))}"  # not even 2 rows fit
        )
        raise FastSigCLRError(
            f"--sizes {rows} with --dim {cfg.dim} needs about {need / 2**30:,.1f} GiB ({BYTES_PER_ELEMENT} "
            f"bytes per input element, measured), more than the {available / 2**30:.1f} GiB available: "
            f"use {smaller}"
        )


def run(cfg: BenchDistConfig, command: list[str] | None = None) -> dict[str, Any]:
    from fastsigclr.bench.plot import plot_dist
    from fastsigclr.losses import sigmoid_pairwise_loss, sigmoid_pairwise_loss_distributed
    from fastsigclr.losses.sigmoid import LOGIT_BIAS
    from fastsigclr.losses.sigmoid import LOGIT_SCALE as t

    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    paths = result_paths(cfg.out, "dist", device)
    check_fits(cfg, device)
    own_group = not dist.is_initialized()
    if own_group:
        store_dir = tempfile.mkdtemp(prefix="fastsigclr-dist-")
        store = dist.FileStore(os.path.join(store_dir, "store"), 1)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1
        )
    bar = tqdm(
        total=len(cfg.sizes or ()) * len(PROVIDERS), desc="bench dist", unit="case", disable=not cfg.progress
    )
    try:
        results = []
        for rows in cfg.sizes or ():
            z = torch.randn(rows, cfg.dim, device=device, dtype=DTYPES[cfg.dtype], requires_grad=True)
            bias = torch.tensor(LOGIT_BIAS, device=device, requires_grad=True)
            providers = {
                "plain": lambda z=z, b=bias: sigmoid_pairwise_loss(z, t, b),
                **{
                    mode: lambda z=z, b=bias, mode=mode: sigmoid_pairwise_loss_distributed(z, t, b, mode=mode)
                    for mode in PROVIDERS[1:]
                },
            }
            for name, fn in providers.items():

                def step(fn=fn, z=z):
                    z.grad = None
                    fn().backward()

                bar.set_postfix_str(f"{name} 2N={rows}")
                timing = time_fn(step, device, warmup=2, reps=cfg.reps)
                results.append({"provider": name, "rows": rows, "dim": cfg.dim, "dtype": cfg.dtype, **timing})
                bar.update()
            plain = next(r for r in results if r["rows"] == rows and r["provider"] == "plain")
            for r in results:
                if r["rows"] == rows:
                    r["overhead_vs_plain"] = r["median_ms"] / plain["median_ms"]
    finally:
        bar.close()
        if own_group:
            dist.destroy_process_group()
            shutil.rmtree(store_dir, ignore_errors=True)  # the store's folder, left by FileStore
    payload = {
        "benchmark": "dist",
        "config": to_dict(cfg),
        **run_record(device, command),
        "world_size": 1,
        "results": results,
    }
    write_results(payload, paths, plot_dist)
    return payload
