"""The GPU-resident loader: the whole dataset on the device as uint8, shuffled on the device each
epoch, augmented in batches by the fused kernel (CUDA) or the PyTorch reference (CPU).

The order and the augmentation parameters come from ``order.epoch_plan`` (seeded by (seed,
epoch); each rank its slice of every global batch; the rows of ``plan.AugmentPlan``), as for
every backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fastsigclr.config import FastSigCLRError
from fastsigclr.data.augment import augment_reference, finish, gaussian_blur
from fastsigclr.data.base import LoaderBase
from fastsigclr.data.plan import AugmentSpec, Col
from fastsigclr.data.samples import SampleIndex
from fastsigclr.runinfo import available_memory_bytes

# The parameter table's columns by name, as the augmentation kernel reads them.
KERNEL_COLUMNS = {col.name.lower(): int(col) for col in Col}


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
        return two_view_augment(
            images, index, params, spec.size, spec.mean, spec.std, dtype, columns=KERNEL_COLUMNS
        )
    # The blur needs whole neighbourhoods of the jittered view, so it runs between the kernel
    # (crop, flip, jitter, grayscale) and the solarise/normalise step.
    raw = two_view_augment(
        images,
        index,
        params,
        spec.size,
        spec.mean,
        spec.std,
        torch.float32,
        columns=KERNEL_COLUMNS,
        finish=False,
    )
    x = raw.permute(0, 2, 3, 1)
    p = params.reshape(-1, params.shape[-1])
    x = finish(gaussian_blur(x, p[:, Col.BLUR]), p, spec)
    return x.permute(0, 3, 1, 2).to(dtype).contiguous(memory_format=torch.channels_last)


def memory_budget(device: torch.device) -> int:
    """Bytes the decoded images may take by default: half the free memory of the device (CUDA)
    or half the available host memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return available_memory_bytes() // 2


def _gib(size: int) -> str:
    """Bytes in GiB to 2 decimals, or in bytes where that shows 0.00 (--memory-budget 0.000001)."""
    return f"{size / (1 << 30):.2f} GiB" if size >= (1 << 30) / 200 else f"{size:,} bytes"


def check_budget(samples: SampleIndex, store_size: int | None, budget: int, device: torch.device) -> None:
    """A FastSigCLRError naming the streaming loaders when the decoded split exceeds ``budget``."""
    need = samples.nbytes(store_size)
    if need > budget:
        raise FastSigCLRError(
            f"the gpu loader keeps every decoded image in {device.type} memory: {samples.name} needs "
            f"{_gib(need)}, more than its budget of {_gib(budget)} (--memory-budget). Use "
            f"--loader dali (decodes the files as it goes) or --loader ffcv (reads a .beton), or "
            f"--limit-train, or a smaller --store-size"
        )


class GpuLoader(LoaderBase):
    """The dataset on the device as uint8, augmented a batch at a time by the fused kernel (CUDA)
    or the PyTorch reference; see LoaderBase for the contract.

    A split that is not yet decoded is decoded here (``SampleIndex.in_memory``: images of mixed
    sizes stored at ``store_size``², undecodable files listed and skipped up to ``max_broken``,
    ``keep_out`` left out unread), when it fits in ``budget`` bytes (default ``memory_budget``)."""

    def __init__(
        self,
        images: np.ndarray | SampleIndex,
        labels: np.ndarray | None,
        spec: AugmentSpec,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        *,
        use_kernel: bool | None = None,
        store_size: int | None = None,
        budget: int | None = None,
        max_broken: float = 0.0,
        progress: bool = False,
        keep_out: tuple[int, ...] = (),
        **kwargs,
    ) -> None:
        samples = images if isinstance(images, SampleIndex) else SampleIndex.from_array(images, labels)
        if not samples.decoded or device.type == "cuda":  # an array already in host memory fits there
            check_budget(samples, store_size, memory_budget(device) if budget is None else budget, device)
        samples = samples.in_memory(store_size, progress=progress, max_broken=max_broken, keep_out=keep_out)
        super().__init__(samples, None, spec, batch_size, device, dtype, **kwargs)
        self.images = torch.from_numpy(np.ascontiguousarray(samples.array())).to(self.device)
        self.labels = torch.from_numpy(self.labels).to(self.device)
        self.use_kernel = self.device.type == "cuda" if use_kernel is None else use_kernel

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index, params in self.plan(epoch, self.device, start):
            views = augment_batch(self.images, index, params, self.spec, self.dtype, self.use_kernel)
            yield views, self.labels[index]


def normalized(images: torch.Tensor, mean, std, dtype: torch.dtype) -> torch.Tensor:
    """Un-augmented uint8 (B, H, W, 3) → normalised (B, 3, H, W) channels_last (for evaluation)."""
    m = torch.tensor(mean, device=images.device)
    s = torch.tensor(std, device=images.device)
    x = (images.float() / 255.0 - m) / s
    return x.permute(0, 3, 1, 2).to(dtype).contiguous(memory_format=torch.channels_last)
