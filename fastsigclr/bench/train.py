"""``fastsigclr bench train``: how much of the training step is the model, and how fast the
augmentation is on its own, measured in one run on the same model and batch.

(a) the full step: next batch from the loader (device-resident uint8 → augmented views) + forward
    + loss + backward + optimizer steps, exactly the trainer's ``train_step``;
(b) the same model step on views already in memory (synthetic tensors): the ceiling for (a);
(c) the augmentation alone, in views per second.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsigclr.bench.common import time_fn, write_json
from fastsigclr.config import check_fields, option, to_dict
from fastsigclr.data import DATASETS, LOADERS, AugmentSpec
from fastsigclr.data.augment import sample_params
from fastsigclr.data.datasets import data_dir_option
from fastsigclr.data.gpu_loader import augment_batch
from fastsigclr.runinfo import resolve_device, run_record


@dataclass(frozen=True)
class BenchTrainConfig:
    dataset: str = option("cifar10", "dataset whose images feed the loader", choices=tuple(DATASETS))
    data_dir: str | None = data_dir_option()
    device: str = option("auto", "device to measure on", choices=("auto", "cpu", "cuda"))
    arch: str = option("resnet18", "backbone")
    width: int | None = option(None, "first-stage channels; unset: 64 on CUDA, 16 on CPU", ge=1)
    batch_size: int | None = option(None, "images per step; unset: 512 on CUDA, 64 on CPU", ge=1)
    limit_train: int | None = option(
        None, "images kept on the device (class-balanced); unset: the whole training split", ge=1
    )
    data: str = option(
        "auto",
        "images: the dataset (real), synthetic ones of its shape, or auto (real when already downloaded)",
        choices=("auto", "real", "synthetic"),
    )
    compile: bool = option(False, "torch.compile the model (compilation stays outside the timing)")
    warmup: int = option(3, "untimed steps before timing", ge=0)
    reps: int | None = option(None, "timed steps; unset: 30 on CUDA, 3 on CPU", ge=1)
    out: str = option("benchmarks/local", "directory for train-<device>.json and .png")

    def __post_init__(self) -> None:
        check_fields(self)

    def resolved(self, device: torch.device) -> BenchTrainConfig:
        cuda = device.type == "cuda"
        return dataclasses.replace(
            self,
            device=device.type,
            width=self.width or (64 if cuda else 16),
            batch_size=self.batch_size or (512 if cuda else 64),
            reps=self.reps or (30 if cuda else 3),
        )


def _images(cfg: BenchTrainConfig, tcfg):
    """(info, (images, labels), "real" | "synthetic"): the dataset's training images, or smooth
    random images of its shape where it is not downloaded (a fresh clone, no network)."""
    from fastsigclr.bench.augment import synthetic_images
    from fastsigclr.data.datasets import DatasetError
    from fastsigclr.recipe import load_data

    info = DATASETS[cfg.dataset]
    if cfg.data != "synthetic":
        try:
            download = cfg.data == "real"
            loaded = load_data(dataclasses.replace(tcfg, download=download))
            return loaded[0], loaded[1], "real"
        except DatasetError:
            if cfg.data == "real":
                raise
    n = cfg.limit_train or 4096
    images = synthetic_images(n, info.image_size)
    return info, (images, np.arange(n) % info.num_classes), "synthetic"


def run(cfg: BenchTrainConfig, command: list[str] | None = None) -> dict[str, Any]:
    from fastsigclr.bench.plot import plot_train
    from fastsigclr.optim import build_optimizer, param_groups
    from fastsigclr.recipe import (
        StepParts,
        TrainConfig,
        build_model,
        compute_dtypes,
        train_step,
    )

    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    record = run_record(device, command)
    tcfg = TrainConfig(
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        arch=cfg.arch,
        width=cfg.width or 64,
        batch_size=cfg.batch_size,
        limit_train=cfg.limit_train,
        limit_test=1,
        progress=False,
        out="-",
    ).resolved()
    info, (train_x, train_y), data_kind = _images(cfg, tcfg)
    view_dtype, autocast_dtype = compute_dtypes(tcfg, device)
    spec = AugmentSpec.simclr(info.image_size, info.mean, info.std)
    batch = cfg.batch_size or 1
    loader = LOADERS["gpu"](train_x, train_y, spec, batch, device, view_dtype, seed=0)
    model, criterion, probe = build_model(tcfg, info, device)
    optimizer = build_optimizer("lars", param_groups([model, criterion], 1e-4), 0.1, 0.9)
    probe_opt = torch.optim.SGD(probe.parameters(), lr=0.1, momentum=0.9)
    forward = torch.compile(model) if cfg.compile else model
    parts = StepParts(forward, criterion, probe, optimizer, probe_opt, autocast_dtype)
    batches = itertools.chain.from_iterable(loader.epoch(e) for e in itertools.count())
    reps = cfg.reps or 1

    def full_step() -> None:
        views, labels = next(batches)
        train_step(parts, views, labels)

    views, labels = next(batches)
    synthetic = (
        torch.randn_like(views, dtype=torch.float32)
        .to(view_dtype)
        .contiguous(memory_format=torch.channels_last)
    )
    _, h, w, _ = loader.images.shape
    gen = torch.Generator(device=device).manual_seed(1)
    index = torch.arange(batch, device=device) % len(loader.images)

    def augment_only() -> None:
        params = sample_params(spec, batch, h, w, gen)
        augment_batch(loader.images, index, params, spec, view_dtype, loader.use_kernel)

    results = {}
    for name, fn in (
        ("full_step", full_step),
        ("model_step", lambda: train_step(parts, synthetic, labels)),
        ("augment", augment_only),
    ):
        timing = time_fn(fn, device, warmup=cfg.warmup, reps=reps)
        per_second = batch / (timing["median_ms"] * 1e-3)
        results[name] = {**timing, "img_per_s": per_second, "views_per_s": per_second * len(spec.views)}
    payload = {
        "benchmark": "train",
        **record,
        "config": to_dict(cfg),
        "model": {"arch": cfg.arch, "width": cfg.width, "projector": list(tcfg.proj_dims or ())},
        "views_dtype": str(view_dtype).removeprefix("torch."),
        "augment_path": "triton kernel" if loader.use_kernel else "pytorch reference",
        "data": data_kind,
        "results": results,
        "full_over_model": results["full_step"]["img_per_s"] / results["model_step"]["img_per_s"],
    }
    out = Path(cfg.out)
    stem = f"train-{device.type}"
    write_json(out / f"{stem}.json", payload)
    plot_train(payload, out / f"{stem}.png")
    return payload
