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
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fastsigclr import distributed
from fastsigclr.bench.common import result_paths, time_fn, write_results
from fastsigclr.config import check_fields, option, option_from, to_dict
from fastsigclr.data import DATASETS
from fastsigclr.data.gpu_loader import augment_batch
from fastsigclr.data.plan import sample_params
from fastsigclr.data.samples import SampleIndex
from fastsigclr.data.splits import DataSplits
from fastsigclr.recipe import Setup, build, load_data
from fastsigclr.runconfig import PRESETS, TrainConfig
from fastsigclr.runinfo import resolve_device, run_record
from fastsigclr.train import StepParts


@dataclass(frozen=True)
class BenchTrainConfig:
    """The model, data and precision of the timed steps; everything else (loss, optimiser, learning
    rate) is `fastsigclr train`'s default."""

    dataset: str = option_from(TrainConfig, "dataset")
    data_dir: str | None = option_from(TrainConfig, "data_dir")
    device: str = option_from(TrainConfig, "device")
    arch: str | None = option_from(TrainConfig, "arch")
    width: int | None = option(None, "first-stage channels; unset: 64 on CUDA, 16 on CPU", ge=1)
    batch_size: int | None = option(None, "images per step; unset: 512 on CUDA, 64 on CPU", ge=1)
    limit_train: int | None = option(
        None, "images kept on the device (class-balanced); unset: the whole training split", ge=1
    )
    data: str = option(
        "auto",
        "images: the dataset (real), synthetic ones of its shape, or auto (real when already downloaded; "
        "with --data-dir, real, without downloading)",
        choices=("auto", "real", "synthetic"),
    )
    compile: bool = option_from(TrainConfig, "compile")
    precision: str = option_from(TrainConfig, "precision")
    warmup: int = option(3, "untimed steps before timing", ge=0)
    reps: int | None = option(None, "timed steps; unset: 30 on CUDA, 3 on CPU", ge=1)
    out: str = option("benchmarks/local", "directory for train-<device>.json and .png", path=True)
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.compile and self.warmup < 1:  # the first step compiles: 83 s timed as a step (CPU)
            raise ValueError(
                "--compile needs --warmup 1 or more: the first step compiles the model, which would be "
                "timed as a training step"
            )

    def resolved(self, device: torch.device) -> BenchTrainConfig:
        cuda = device.type == "cuda"
        return dataclasses.replace(
            self,
            device=device.type,
            arch=self.arch or PRESETS[self.dataset]["arch"],
            width=self.width or (64 if cuda else 16),
            batch_size=self.batch_size or (512 if cuda else 64),
            reps=self.reps or (30 if cuda else 3),
        )

    def train_config(self) -> TrainConfig:
        """The `fastsigclr train` config of the timed steps: the trainer's defaults with this
        benchmark's dataset, model, batch and device (one test image: nothing evaluates)."""
        mine = ("dataset", "data_dir", "device", "arch", "width", "batch_size", "limit_train", "compile",
                "precision")  # fmt: skip
        given = {k: getattr(self, k) for k in mine if getattr(self, k) is not None}
        return TrainConfig(**given, limit_test=1, progress=False, out="-").resolved()


def _images(cfg: BenchTrainConfig, tcfg: TrainConfig) -> tuple[DataSplits, str]:
    """(splits, "real" | "synthetic"): the dataset's images, or smooth random images of its
    shape where it is not downloaded (a fresh clone, no network)."""
    from fastsigclr.bench.augment import synthetic_images
    from fastsigclr.data.datasets import DatasetError

    info = DATASETS[cfg.dataset]
    if cfg.data != "synthetic":
        try:
            return load_data(dataclasses.replace(tcfg, download=cfg.data == "real")), "real"
        except DatasetError:
            if cfg.data == "real":
                raise
            if cfg.data_dir is not None:  # a folder was named: its images were meant
                raise DatasetError(
                    f"{cfg.dataset} is not in --data-dir {cfg.data_dir}: name the folder that holds it, "
                    f"add --data real to download it there, or --data synthetic to time random images"
                ) from None
            note = f"{cfg.dataset} is not in {tcfg.data_dir}: timing synthetic images of its shape"
            print(f"fastsigclr: {note} (--data real downloads it and times those)", file=sys.stderr)
    n = cfg.limit_train or 4096
    images, labels = synthetic_images(n, info.image_size), np.arange(n) % max(info.num_classes, 1)
    train = SampleIndex.from_array(images, labels, "synthetic")
    return DataSplits(info, train, train, train.subset(np.arange(1))), "synthetic"


def run(cfg: BenchTrainConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Time (a), (b) and (c) on the trainer's own ``build`` and ``train_step``; write
    train-<device>.json and .png under ``cfg.out``."""
    from fastsigclr.bench.plot import plot_train
    from fastsigclr.train import step_parts

    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    paths = result_paths(cfg.out, "train", device)
    tcfg = cfg.train_config()
    data, data_kind = _images(cfg, tcfg)
    ctx = distributed.Context(device=device)
    setup = build(tcfg, ctx, data)
    results = _time_steps(cfg, setup, step_parts(setup, ctx))
    payload = {
        "benchmark": "train",
        **run_record(device, command),
        "config": to_dict(cfg),
        "model": {"arch": cfg.arch, "width": cfg.width, "projector": list(tcfg.proj_dims or ())},
        "views_dtype": str(setup.loader.dtype).removeprefix("torch."),
        "autocast_dtype": str(setup.autocast_dtype).removeprefix("torch.") if setup.autocast_dtype else None,
        "augment_path": "triton kernel" if setup.loader.use_kernel else "pytorch reference",
        "data": data_kind,
        "results": results,
        "full_over_model": results["full_step"]["img_per_s"] / results["model_step"]["img_per_s"],
    }
    write_results(payload, paths, plot_train)
    return payload


def _time_steps(cfg: BenchTrainConfig, setup: Setup, parts: StepParts) -> dict[str, dict[str, float]]:
    """(a) full steps from the loader, (b) model steps on fixed synthetic views, (c) augmentation."""
    from fastsigclr.train import train_step

    loader, device = setup.loader, setup.loader.device
    batches = itertools.chain.from_iterable(loader.epoch(e) for e in itertools.count())

    def full_step() -> None:
        train_step(parts, *next(batches))

    views, labels = next(batches)
    synthetic = torch.randn_like(views, dtype=torch.float32).to(views.dtype)
    synthetic = synthetic.contiguous(memory_format=torch.channels_last)
    batch = len(labels)
    _, h, w, _ = loader.images.shape
    gen = torch.Generator(device=device).manual_seed(1)
    index = torch.arange(batch, device=device) % len(loader.images)

    def augment_only() -> None:
        params = sample_params(loader.spec, batch, h, w, gen)
        augment_batch(loader.images, index, params, loader.spec, views.dtype, loader.use_kernel)

    results = {}
    cases = [
        ("full_step", full_step),
        ("model_step", lambda: train_step(parts, synthetic, labels)),
        ("augment", augment_only),
    ]
    for name, fn in tqdm(cases, desc="bench train", unit="case", disable=not cfg.progress):
        timing = time_fn(fn, device, warmup=cfg.warmup, reps=cfg.reps or 1)
        per_second = batch / (timing["median_ms"] * 1e-3)
        results[name] = {
            **timing,
            "img_per_s": per_second,
            "views_per_s": per_second * len(loader.spec.views),
        }
    return results
