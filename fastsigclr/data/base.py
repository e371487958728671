"""What every loader backend takes, checks and stores; the backends add how they augment."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

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
