"""CIFAR-10 and CIFAR-100 in the official "python version" layout: pickled batches of uint8 rows
(3·32·32, channel-major) with their labels. A sample is a row of its split, decoded by a reshape."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from fastsigclr.data import plain_pickle
from fastsigclr.data.files import md5sum, warn_unofficial
from fastsigclr.data.info import DatasetError, DatasetInfo
from fastsigclr.data.samples import SampleIndex


def load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"missing file {path}: the dataset folder is incomplete; delete it to fetch again")
    try:
        with open(path, "rb") as f:
            raw = plain_pickle.load(f)  # never calls what a crafted file names
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError, IndexError) as err:
        raise DatasetError(
            f"{path} is truncated or corrupt ({type(err).__name__}: {err}); delete its folder to fetch again"
        ) from err
    if not isinstance(raw, dict):
        raise DatasetError(f"{path} does not hold a CIFAR batch dictionary")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def read_batch(info: DatasetInfo, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file: uint8 (N, H, W, 3) images and int64 labels, or a DatasetError."""
    batch = load_pickle(path)
    if "data" not in batch or info.label_key not in batch:
        raise DatasetError(f"{path} lacks 'data' or '{info.label_key}': not the {info.name} python layout")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * info.image_size**2:
        raise DatasetError(
            f"{path}: data has dtype {data.dtype} and shape {data.shape}, "
            f"expected uint8 (N, {3 * info.image_size**2})"
        )
    images = data.reshape(-1, 3, info.image_size, info.image_size).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[info.label_key], dtype=np.int64)


class CifarReader:
    """The pickled batches of one CIFAR folder; "pretrain" is the train split."""

    pretrain_split = "train"  # the split pre-training reads

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.info, self.folder = info, Path(folder)

    def index(self, split: str) -> SampleIndex:
        info, folder = self.info, self.folder
        files = info.test_files if split == "test" else info.train_files
        warn_unofficial(info, folder, files)
        images, labels = [], []
        for name in files:
            batch_images, batch_labels = read_batch(info, folder / name)
            images.append(batch_images)
            labels.append(batch_labels)
        x = np.ascontiguousarray(np.concatenate(images))
        y = np.concatenate(labels)
        expected = info.test_count if split == "test" else info.train_count
        if len(x) != expected or len(y) != expected:
            raise DatasetError(
                f"{info.name} {split}: found {len(x)} images and {len(y)} labels, expected {expected}; "
                f"the folder {folder} is incomplete"
            )
        if y.min() < 0 or y.max() >= info.num_classes:
            raise DatasetError(f"{info.name} {split}: labels outside 0..{info.num_classes - 1}")
        return SampleIndex.from_array(x, y, f"{info.name} {split}")

    def verify(self) -> dict[str, str]:
        """md5 of each file; files missing or unlike the official ones are judged by
        ``verdict.check_official`` (unloadable: download again; loadable: usable data, kept)."""
        from fastsigclr.data.verdict import check_official  # verdict reads batches with read_batch

        sums = {p.name: md5sum(p) for p in sorted(self.folder.iterdir()) if p.is_file()}
        check_official(self.info, self.folder, sums)
        return sums
