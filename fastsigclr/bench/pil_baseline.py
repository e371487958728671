"""The baseline ``bench augment`` measures the loaders against: the way most SSL code augments,
PIL operations per image in ``torch.utils.data.DataLoader`` workers (torchvision-style, written
here with PIL directly, one view at a time), applying the rows of the same ``AugmentPlan``."""

from __future__ import annotations

import os

import numpy as np
import torch

from fastsigclr.data.plan import AugmentPlan, AugmentSpec, Col, seed_for
from fastsigclr.data.samples import SampleIndex


def _pil_view(img, row: np.ndarray, spec: AugmentSpec) -> np.ndarray:
    """One view by PIL operations from its row of the plan (columns ``Col``)."""
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    y0, x0, ch, cw = (float(row[c]) for c in (Col.Y0, Col.X0, Col.H, Col.W))
    out = img.resize((spec.size, spec.size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    if row[Col.FLIP] > 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance, col in (
        (ImageEnhance.Brightness, Col.BRIGHT),
        (ImageEnhance.Contrast, Col.CONTRAST),
        (ImageEnhance.Color, Col.SAT),
    ):
        if row[col] != 1:
            out = enhance(out).enhance(float(row[col]))
    if row[Col.HUE] != 0:
        hsv = np.array(out.convert("HSV"))
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(row[Col.HUE] * 255)) % 256
        out = Image.fromarray(hsv, "HSV").convert("RGB")
    if row[Col.GRAY] > 0.5:
        out = out.convert("L").convert("RGB")
    if row[Col.BLUR] > 0:
        out = out.filter(ImageFilter.GaussianBlur(float(row[Col.BLUR])))
    if row[Col.SOLAR] > 0.5:
        out = ImageOps.solarize(out, 128)
    x = np.asarray(out, dtype=np.float32) / 255.0
    return (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)


class PilViews(torch.utils.data.Dataset):
    """Per-image PIL augmentation of every view, as torchvision transforms do it, applying the
    rows of the run's AugmentPlan; keys are (epoch, sample id) pairs (each worker process keeps
    its copy of the epoch's table)."""

    def __init__(self, images: np.ndarray | SampleIndex, spec: AugmentSpec, seed: int = 0) -> None:
        self.samples = (
            images
            if isinstance(images, SampleIndex)
            else SampleIndex.from_array(images, np.zeros(len(images)))
        )
        self.spec = spec
        self.plan = AugmentPlan(spec, len(self.samples), self.samples.sizes, seed)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        from PIL import Image

        epoch, i = key
        rows = self.plan.table(epoch)[:, i].numpy()
        img = Image.fromarray(self.samples.decode(i))  # a file: decoded here, in the worker
        return torch.stack([torch.from_numpy(_pil_view(img, row, self.spec)) for row in rows]), i


class _EpochOrder(torch.utils.data.Sampler):
    """(epoch, sample id) keys in the epoch's seeded random order; ``epoch`` is set per epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        gen = torch.Generator().manual_seed(seed_for(self.seed, self.epoch))
        return ((self.epoch, i) for i in torch.randperm(self.n, generator=gen).tolist())


class PilLoader:
    """The baseline behind the loader interface: DataLoader workers, then channels_last views."""

    def __init__(self, images, labels, spec, batch_size, device, dtype, *, seed=0, workers=None):
        self.device, self.dtype = device, dtype
        self.workers = workers if workers is not None else min(8, os.cpu_count() or 1)
        self.order = _EpochOrder(len(images), seed)  # images: uint8 array or SampleIndex
        self.loader = torch.utils.data.DataLoader(
            PilViews(images, spec, seed),
            batch_size=batch_size,
            sampler=self.order,
            drop_last=True,
            num_workers=self.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=self.workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int):
        self.order.epoch = epoch
        for views, ids in self.loader:
            b, v = views.shape[:2]
            # Moved as the workers pinned it, reordered on the device: a reshape first would copy
            # the batch into pageable memory, and the copy to the GPU would wait for it.
            x = views.to(self.device, non_blocking=True).transpose(0, 1).reshape(v * b, *views.shape[2:])
            x = x.permute(0, 3, 1, 2).to(self.dtype)
            yield x.contiguous(memory_format=torch.channels_last), ids.to(self.device)
