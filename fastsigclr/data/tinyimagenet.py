"""Tiny-ImageNet-200 in its official layout: index, validation labels and a decoded cache.

    tiny-imagenet-200/wnids.txt                        the class ids (200)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG       500 per class
    tiny-imagenet-200/val/val_annotations.txt          "<file>\t<wnid>\t<box>" (10,000 lines)
    tiny-imagenet-200/val/images/*.JPEG

Labels are the index of the wnid in sorted order; the "test" split is the labelled validation set
(the official test images have no labels). Samples are the JPEG files (DALI and FFCV read them);
the gpu loader's array is decoded once (with a progress bar) into a cache beside the folder.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from fastsigclr.config import listed
from fastsigclr.data import cache
from fastsigclr.data.files import redownload_hint
from fastsigclr.data.info import DatasetError, DatasetInfo
from fastsigclr.data.samples import SampleIndex, file_index, image_size


def _wnids(info: DatasetInfo, folder: Path) -> list[str]:
    path = folder / "wnids.txt"
    if not path.is_file():
        raise DatasetError(f"missing {path}: not the Tiny-ImageNet layout; delete {folder} to fetch it again")
    wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if len(wnids) != info.num_classes:
        raise DatasetError(
            f"{path} lists {len(wnids)} classes, expected {info.num_classes}: not the official file; "
            f"{redownload_hint(info, folder)}"
        )
    return wnids


def _train_files(info: DatasetInfo, folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    per_class = info.train_count // info.num_classes
    files: list[Path] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        found = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
        if len(found) != per_class:
            raise DatasetError(_count_message(info, folder, wnid, found, per_class))
        files += found
        labels += [label] * per_class
    return files, labels


def _count_message(info: DatasetInfo, folder: Path, wnid: str, found: list[Path], per_class: int) -> str:
    """Why a class folder does not hold ``per_class`` JPEGs, naming the files the official ones
    (``<wnid>_<k>.JPEG``, k < per_class) leave over or lack, with the fix for each case."""
    where = folder / "train" / wnid / "images"
    official = {f"{wnid}_{k}.JPEG" for k in range(per_class)}
    names = {path.name for path in found}
    if len(found) > per_class:  # a copy or a stray file: the rest is whole, removing it is enough
        extra = sorted(names - official)
        one = len(extra) == 1
        return (
            f"{where} holds {len(found)} JPEGs, {len(found) - per_class} more than the official "
            f"{per_class}: {listed(extra)} {'is not an official file' if one else 'are not official files'}; "
            f"remove {'it' if one else 'them'} (or {redownload_hint(info, folder)})"
        )
    missing = sorted(official - names) if names <= official else []
    lack = f" (missing: {listed(missing)})" if missing else ""
    return (
        f"{where} holds {len(found)} JPEGs, expected {per_class}{lack}: the dataset is incomplete; "
        f"{redownload_hint(info, folder)}"
    )


def _val_files(info: DatasetInfo, folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    index = {w: i for i, w in enumerate(wnids)}
    notes = folder / "val" / "val_annotations.txt"
    fix = redownload_hint(info, folder)
    if not notes.is_file():
        raise DatasetError(f"missing {notes}: the validation labels; {fix}")
    files: list[Path] = []
    labels: list[int] = []
    for n, line in enumerate(notes.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise DatasetError(
                f"{notes}:{n}: expected '<file>\\t<wnid>...' with a known wnid, got {line!r}; {fix}"
            )
        path = folder / "val" / "images" / parts[0]
        if not path.is_file():
            raise DatasetError(f"{notes}:{n}: {path} does not exist: the dataset is incomplete; {fix}")
        files.append(path)
        labels.append(index[parts[1]])
    if len(files) != info.test_count:
        raise DatasetError(f"{notes} labels {len(files)} images, expected {info.test_count}; {fix}")
    return files, labels


def split_files(info: DatasetInfo, folder: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """The split's JPEG paths and int64 labels, in a fixed order, after checking the layout."""
    if split not in ("pretrain", "train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    wnids = _wnids(info, folder)
    files, labels = (_val_files if split == "test" else _train_files)(info, folder, wnids)
    return files, np.asarray(labels, dtype=np.int64)


class TinyImageNetReader:
    """The JPEG folders of Tiny-ImageNet-200 (64² each); "pretrain" is the train split."""

    pretrain_split = "train"  # the split pre-training reads
    layout_marks = ("wnids.txt", "train/", "val/")  # what tells a --data-dir that is this folder itself

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.info, self.folder = info, Path(folder)

    def index(self, split: str) -> SampleIndex:
        files, labels = split_files(self.info, self.folder, split)
        size = (self.info.image_size, self.info.image_size)
        index = file_index(f"{self.info.name} {split}", files, labels, sizes=size)
        index.cache_dir = self.folder.parent / f"{self.info.folder}-decoded"
        index.cache_name = "test" if split == "test" else "train"
        return index

    def _check(self, split: str) -> None:
        index, side = self.index(split), self.info.image_size
        key = cache.fingerprint(index.files, None)
        stale = cache.drop_stale(index.cache_dir, index.cache_name, key)
        dropped = f"; the decoded {split} cache, made from other bytes, was removed" if stale else ""
        bad = [path for path, _ in index.undecodable(progress=False)]
        seen = set(bad)
        bad += [str(f) for f in index.files if str(f) not in seen and image_size(f) != (side, side)]
        if bad:
            raise DatasetError(
                f"{len(bad)} of {len(index)} {split} JPEGs do not decode as {side}² images (first: "
                f"{', '.join(bad[:3])}){dropped}: the files are damaged; delete {self.folder} to fetch "
                f"it again"
            )
        if stale:
            where = index.cache_dir
            print(f"note: {dropped[2:]} ({where}): the files changed since it was decoded", file=sys.stderr)

    def verify(self) -> dict[str, str]:
        """Checks the files themselves: the layout and counts (split_files), every JPEG decodes at
        its size, and a decoded cache made from other bytes than the files' is removed. Returns
        the md5 of the index files."""
        for split in ("train", "test"):
            self._check(split)
        out = {}
        for name in ("wnids.txt", "words.txt", "val/val_annotations.txt"):
            path = self.folder / name
            if path.is_file():
                out[name] = hashlib.md5(path.read_bytes()).hexdigest()
        return out
