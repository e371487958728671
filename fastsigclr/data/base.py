"""What every loader backend takes, checks and stores (the backends add how they augment), and
``LoaderEntry``, what the registry ``loaders.LOADERS`` holds for each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsigclr.data.datasets import DatasetInfo
from fastsigclr.data.order import check_sharding, epoch_plan, num_batches
from fastsigclr.data.plan import AugmentPlan, AugmentSpec


class LoaderBase:
    """The loader contract: ``epoch(e)`` yields ``(views, labels)``, views (V·B, 3, S, S)
    channels_last in ``dtype``, view-major (rows v·B … v·B + B − 1 are view v of the batch),
    labels (B,) int64, both on ``device``; ``len()`` is the number of batches per epoch.

    batch_size is the global batch; each of world_size ranks gets batch_size / world_size of it.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        spec: AugmentSpec,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        *,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        check_sharding(len(images), batch_size, drop_last, rank, world_size)
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.spec = spec
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.augment_plan = AugmentPlan(spec, len(images), tuple(images.shape[1:3]), seed)

    def __len__(self) -> int:
        return num_batches(len(self.images), self.batch_size, self.drop_last)

    def plan(
        self, epoch: int, device: torch.device | str = "cpu"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (indices, augmentation parameters) of each batch of ``epoch``."""
        return epoch_plan(
            self.augment_plan,
            self.batch_size,
            epoch=epoch,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
            device=device,
        )

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError


@dataclass(frozen=True)
class LoaderSource:
    """Where a run's training images come from, for a backend's extra constructor arguments:
    the dataset, its folder, the training split (after ``--limit-train``, which is ``limit``),
    ``--ffcv-dir``, and whether to show progress."""

    info: DatasetInfo
    data_dir: Path
    train: tuple[np.ndarray, np.ndarray]
    limit: int | None = None
    ffcv_dir: str | Path | None = None
    progress: bool = True


def _no_options(*_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class LoaderEntry:
    """One backend of ``loaders.LOADERS``: everything the trainer, ``fastsigclr bench augment``,
    ``fastsigclr info`` and the run records need to know about it, so none of them names it.

    ``cls`` takes LoaderBase's constructor plus the keyword arguments that ``options`` (training:
    from a ``LoaderSource``, on every rank) or ``bench_options`` (``bench augment``: from
    (images, labels, spec, workers, scratch folder)) return. ``prepare``, when given, runs first
    on rank 0 alone while the other ranks wait (it writes what ``options`` then reads, e.g. FFCV's
    .beton). ``package``: the name ``info`` and the run records show for its version, found under
    the first installed of ``distributions``; None: nothing beyond torch. ``runs_on``: what
    ``info`` says it runs (with CUDA, without)."""

    cls: type[LoaderBase]
    runs_on: tuple[str, str]
    package: str | None = None
    distributions: tuple[str, ...] = ()
    install_hint: str = ""
    options: Callable[[LoaderSource], dict[str, Any]] = _no_options
    prepare: Callable[[LoaderSource], Any] | None = None
    bench_options: Callable[..., dict[str, Any]] = _no_options
