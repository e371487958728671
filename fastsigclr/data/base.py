"""What every loader backend takes, checks and stores (the backends add how they augment), and
``LoaderEntry``, what the registry ``loaders.LOADERS`` holds for each."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsigclr.data.info import DatasetInfo
from fastsigclr.data.order import check_sharding, epoch_plan, num_batches
from fastsigclr.data.plan import AugmentPlan, AugmentSpec
from fastsigclr.data.samples import SampleIndex


class LoaderBase:
    """The loader contract: ``images`` is a split (``samples.SampleIndex``), or uint8 (N, H, W, 3)
    images with their ``labels``; ``epoch(e)`` yields ``(views, labels)``, views (V·B, 3, S, S)
    channels_last in ``dtype``, view-major (rows v·B … v·B + B − 1 are view v of the batch),
    labels (B,) int64, both on ``device``; ``len()`` is the number of batches per epoch.

    batch_size is the global batch; each of world_size ranks gets batch_size / world_size of it.
    """

    # Whether an epoch's order depends on the number of ranks (FFCV's own distributed order): a
    # checkpoint inside an epoch then resumes only at the rank count that wrote it.
    order_by_ranks = False

    def __init__(
        self,
        images: np.ndarray | SampleIndex,
        labels: np.ndarray | None,
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
        samples = images if isinstance(images, SampleIndex) else SampleIndex.from_array(images, labels)
        check_sharding(len(samples), batch_size, drop_last, rank, world_size)
        self.samples = samples
        self.labels = samples.labels
        self.spec = spec
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.augment_plan = AugmentPlan(spec, len(samples), self.image_sizes(), seed)

    def image_sizes(self) -> np.ndarray:
        """(N, 2) sizes of the images this loader crops (the crop boxes are in their pixels)."""
        return self.samples.sizes

    def __len__(self) -> int:
        return num_batches(len(self.samples), self.batch_size, self.drop_last)

    def left_out(self) -> Collection[int]:
        """Sample ids this rank found undecodable as it trained, and left out (DALI meets a file's
        data only then); every other loader decodes up front, or reads what was: none. With
        several ranks the trainer joins them to check ``--max-broken`` on all ranks at once."""
        return ()

    def plan(
        self, epoch: int, device: torch.device | str = "cpu", start: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (indices, augmentation parameters) of each batch of ``epoch`` from batch
        ``start`` on."""
        return epoch_plan(
            self.augment_plan,
            self.batch_size,
            epoch=epoch,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
            device=device,
            start=start,
        )

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``start`` on: the same batches an uninterrupted epoch
        yields there (a run resumed from a mid-epoch checkpoint)."""
        raise NotImplementedError


@dataclass(frozen=True)
class LoaderSource:
    """Where a run's training images come from, for a backend's extra constructor arguments:
    the dataset, its folder, the pre-training split (after ``--limit-train``, which is ``limit``),
    ``--ffcv-dir``, whether to show progress, the image-folder options (``--store-size``,
    ``--memory-budget`` in bytes, ``--max-broken``), and the ids a resumed run's earlier sessions
    could not decode up front (its checkpoint's ``undecoded``: the gpu loader) or left out as they
    trained (``left_out``: DALI), which stay out: each backend takes its ``keep_out``."""

    info: DatasetInfo
    data_dir: Path
    samples: SampleIndex
    limit: int | None = None
    ffcv_dir: str | Path | None = None
    progress: bool = True
    store_size: int | None = None
    budget: int | None = None
    max_broken: float = 0.0
    undecoded: tuple[int, ...] = ()
    left_out: tuple[int, ...] = ()


def _no_options(*_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class LoaderEntry:
    """One backend of ``loaders.LOADERS``: everything the trainer, ``fastsigclr bench augment``,
    ``fastsigclr info`` and the run records need to know about it, so none of them names it.

    ``cls`` takes LoaderBase's constructor plus the keyword arguments that ``options`` (training:
    from a ``LoaderSource``, on every rank) or ``bench_options`` (``bench augment``: from
    (samples, spec, workers, scratch folder, storage side of mixed sizes)) return.
    ``prepare``, when given, runs first on rank 0 alone while the other ranks wait (it writes what
    ``options`` then reads, e.g. FFCV's .beton). ``package``: the name ``info`` and the run
    records show for its version, found under the first installed of ``distributions``; None:
    nothing beyond torch. ``runs_on``: what ``info`` says it runs (with CUDA, without)."""

    cls: type[LoaderBase]
    runs_on: tuple[str, str]
    package: str | None = None
    distributions: tuple[str, ...] = ()
    install_hint: str = ""
    options: Callable[[LoaderSource], dict[str, Any]] = _no_options
    prepare: Callable[[LoaderSource], Any] | None = None
    bench_options: Callable[..., dict[str, Any]] = _no_options
