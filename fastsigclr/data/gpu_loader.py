"""The GPU-resident loader: the whole dataset on the device as uint8, shuffled on the device each
epoch, augmented in batches by the fused kernel (CUDA) or the PyTorch reference (CPU).

The order and the augmentation parameters come from ``order.epoch_plan`` (seeded by (seed,
epoch); each rank its slice of every global batch), as for every backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fastsigclr.data.augment import (
    P_BLUR,
    AugmentSpec,
    augment_reference,
    finish,
    gaussian_blur,
)
from fastsigclr.data.order import check_sharding, epoch_plan, num_batches


def augment_batch(
    images: torch.Tensor,
    index: torch.Tensor,
    params: torch.Tensor,
    spec: AugmentSpec,
    dtype: torch.dtype,
    use_kernel: bool,
) -> torch.Tensor:
    """Views of ``images[index]``: (V·B, 3, S, S) channels_last in ``dtype``."""
    if not use_kernel:
        return augment_reference(images[index], params, spec, dtype)
    from fastsigclr.kernels import two_view_augment

    if not spec.uses_blur:
        return two_view_augment(images, index, params, spec.size, spec.mean, spec.std, dtype)
    # The blur needs whole neighbourhoods of the jittered view, so it runs between the kernel
    # (crop, flip, jitter, grayscale) and the solarise/normalise step.
    raw = two_view_augment(images, index, params, spec.size, spec.mean, spec.std, torch.float32, finish=False)
    x = raw.permute(0, 2, 3, 1)
    p = params.reshape(-1, params.shape[-1])
    x = finish(gaussian_blur(x, p[:, P_BLUR]), p, spec)
    return x.permute(0, 3, 1, 2).to(dtype).contiguous(memory_format=torch.channels_last)


class GpuLoader:
    """Yields ``(views, labels)``: views (V·B, 3, S, S) channels_last in ``dtype``, view-major
    (rows v·B … v·B + B − 1 are view v of the batch), labels (B,) int64 on the device.

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
        use_kernel: bool | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        check_sharding(len(images), batch_size, drop_last, rank, world_size)
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.spec = spec
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.use_kernel = device.type == "cuda" if use_kernel is None else use_kernel

    def __len__(self) -> int:
        return num_batches(len(self.images), self.batch_size, self.drop_last)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        _, h, w, _ = self.images.shape
        plan = epoch_plan(
            len(self.images),
            (h, w),
            self.spec,
            self.batch_size,
            seed=self.seed,
            epoch=epoch,
            drop_last=self.drop_last,
            rank=self.rank,
            world_size=self.world_size,
            device=self.device,
        )
        for index, params in plan:
            views = augment_batch(self.images, index, params, self.spec, self.dtype, self.use_kernel)
            yield views, self.labels[index]


def normalized(images: torch.Tensor, mean, std, dtype: torch.dtype) -> torch.Tensor:
    """Un-augmented uint8 (B, H, W, 3) → normalised (B, 3, H, W) channels_last (for evaluation)."""
    m = torch.tensor(mean, device=images.device)
    s = torch.tensor(std, device=images.device)
    x = (images.float() / 255.0 - m) / s
    return x.permute(0, 3, 1, 2).to(dtype).contiguous(memory_format=torch.channels_last)
