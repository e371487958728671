"""A toy loader backend, the worked example of adding one: this module and one entry of
``fastsigclr.data.loaders.LOADERS`` (``tests/test_loader_registry.py`` adds it and trains with it).

Its views are the images un-augmented, every second view mirrored; its rank-0 preparation writes
a file the loader then requires, as FFCV's writes the .beton its loader reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsigclr.data.base import LoaderBase, LoaderEntry, LoaderSource


def prepared_file(src: LoaderSource) -> Path:
    return src.data_dir / f"toy-{src.info.name}-{len(src.samples)}.txt"


def prepare(src: LoaderSource) -> None:
    """Rank 0, before the others: write what every rank's loader reads."""
    prepared_file(src).write_text(f"{len(src.samples)}\n")


def options(src: LoaderSource) -> dict[str, Any]:
    return {"prepared": prepared_file(src)}


class ToyLoader(LoaderBase):
    """Un-augmented views (odd views mirrored) of the images the plan draws; LoaderBase's contract."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *args: Any, prepared: Path, **kwargs: Any):
        super().__init__(images, labels, *args, **kwargs)
        self.images = self.samples.in_memory(progress=False).array()  # the split decoded, uint8
        if int(Path(prepared).read_text()) != len(self.images):
            raise ValueError(f"{prepared} was prepared for other images")
        self.epochs_served = 0

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        mean, std = torch.tensor(self.spec.mean), torch.tensor(self.spec.std)
        for index, _ in self.plan(epoch, start=start):
            x = (torch.from_numpy(self.images[index.numpy()]).float() / 255 - mean) / std
            x = x.permute(0, 3, 1, 2)
            views = torch.cat([x.flip(-1) if v % 2 else x for v in range(len(self.spec.views))])
            labels = torch.from_numpy(self.labels[index.numpy()])
            yield views.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last), labels
        self.epochs_served += 1


ENTRY = LoaderEntry(
    ToyLoader, runs_on=("un-augmented views", "un-augmented views"), prepare=prepare, options=options
)
