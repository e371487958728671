"""STL-10 in its official binary layout (``stl10_binary.tar.gz``):

    stl10_binary/unlabeled_X.bin      100,000 images for pre-training, no labels
    stl10_binary/train_X.bin, train_y.bin   5,000 labelled images (labels 1..10, one byte each)
    stl10_binary/test_X.bin, test_y.bin     8,000 labelled images
    stl10_binary/class_names.txt, fold_indices.txt

Each image is 3·96·96 bytes, channel by channel, each channel column-major. A sample is an
offset into its file, read through a memory map and decoded by a transpose: nothing is loaded
until it is asked for. "pretrain" is the unlabeled file; "train" and "test" the labelled ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastsigclr.data.files import md5sum
from fastsigclr.data.info import DatasetError, DatasetInfo
from fastsigclr.data.samples import UNLABELED, SampleIndex

SIDE = 96
STL10_FILES = ("unlabeled_X.bin", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


class Stl10Reader:
    pretrain_split = "pretrain"  # the split pre-training reads

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.info, self.folder = info, Path(folder)
        names = self._class_names(self.folder / "class_names.txt")
        self.classes = tuple(names) if len(names) == info.num_classes else ()

    def _class_names(self, path: Path) -> list[str]:
        """The names in ``path`` (none when it is missing), or a DatasetError when it is not text."""
        if not path.is_file():
            return []
        try:
            return path.read_bytes().decode("utf-8").split()
        except UnicodeDecodeError as err:
            raise DatasetError(
                f"{path} is not UTF-8 text ({err.reason} at byte {err.start}): not the STL-10 class names; "
                f"delete {self.folder} to fetch it again"
            ) from err

    def _images(self, name: str, count: int) -> np.memmap:
        path = self.folder / name
        if not path.is_file():
            raise DatasetError(
                f"missing {path}: the STL-10 folder is incomplete; delete {self.folder} to fetch it again"
            )
        expected = count * 3 * SIDE * SIDE
        if path.stat().st_size != expected:
            raise DatasetError(
                f"{path} has {path.stat().st_size} bytes, expected {expected} ({count} images of "
                f"3×{SIDE}×{SIDE}): truncated or not STL-10; delete {self.folder} to fetch it again"
            )
        return np.memmap(path, dtype=np.uint8, mode="r", shape=(count, 3, SIDE, SIDE))

    def _labels(self, name: str, count: int) -> np.ndarray:
        path = self.folder / name
        if not path.is_file():
            raise DatasetError(
                f"missing {path}: the STL-10 folder is incomplete; delete {self.folder} to fetch it again"
            )
        raw = np.fromfile(path, dtype=np.uint8).astype(np.int64)
        if len(raw) != count or raw.min() < 1 or raw.max() > self.info.num_classes:
            raise DatasetError(
                f"{path}: expected {count} labels in 1..{self.info.num_classes}, found {len(raw)} "
                f"(range {raw.min() if len(raw) else '-'}..{raw.max() if len(raw) else '-'})"
            )
        return raw - 1

    def index(self, split: str) -> SampleIndex:
        info = self.info
        if split == "pretrain":
            images = self._images("unlabeled_X.bin", info.pretrain_count)
            labels = np.full(len(images), UNLABELED, dtype=np.int64)
        else:
            stem, count = ("test", info.test_count) if split == "test" else ("train", info.train_count)
            images, labels = self._images(f"{stem}_X.bin", count), self._labels(f"{stem}_y.bin", count)
        sizes = np.broadcast_to(np.array([SIDE, SIDE]), (len(images), 2))
        return SampleIndex(
            f"{info.name} {split}",
            labels,
            sizes,
            lambda i: np.ascontiguousarray(images[i].transpose(2, 1, 0)),  # column-major CHW → HWC
            classes=self.classes,
        )

    def verify(self) -> dict[str, str]:
        """md5 of each file, after checking sizes and labels (STL-10 publishes only the archive's md5)."""
        for split in ("pretrain", "train", "test"):
            self.index(split)
        return {name: md5sum(self.folder / name) for name in STL10_FILES}
