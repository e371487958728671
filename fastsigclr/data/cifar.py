"""CIFAR-10 and CIFAR-100 in the official "python version" layout: pickled batches of uint8 rows
(3·32·32, channel-major) with their labels. A sample is a row of its split, decoded by a reshape.

``read_batch`` (one file) and ``split_problems``/``read_split`` (a split's files and their total)
are the only checks of the batches: ``index`` (training) and ``data verify`` both run them, so
verify never calls usable what training then refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fastsigclr.data import plain_pickle
from fastsigclr.data.files import md5sum, redownload_hint, warn_unofficial
from fastsigclr.data.info import DatasetError, DatasetInfo
from fastsigclr.data.samples import SampleIndex


class BatchError(DatasetError):
    """A batch file training cannot use: the message names its path and the fix; ``entry`` is the
    same problem named by the file's name alone, for the list ``data verify`` prints."""

    def __init__(self, message: str, entry: str) -> None:
        super().__init__(message)
        self.entry = entry


def load_pickle(path: Path, hint: str = "delete its folder to fetch again") -> dict:
    """The batch dictionary in ``path`` (keys as str), or a ``BatchError`` that ends with ``hint``."""
    if not path.is_file():
        raise BatchError(
            f"missing file {path}: the dataset folder is incomplete; {hint}", f"{path.name} is missing"
        )
    try:
        with open(path, "rb") as f:
            raw = plain_pickle.load(f)  # never calls what a crafted file names
        if isinstance(raw, dict):
            return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
    except OSError:  # the file cannot be read: not a damaged batch (said where it is caught)
        raise
    # Whatever else a damaged or crafted file makes the unpickler (or a key's decoding) raise: an
    # UnpicklingError, UnicodeDecodeError, TypeError, MemoryError, RecursionError (deep nesting), ...
    except Exception as err:
        said = " ".join(str(err).split())  # on one line, whatever the file put in the message
        reason = f"{type(err).__name__}: {said[:200]}" if said else type(err).__name__
        raise BatchError(
            f"{path} is truncated or corrupt ({reason}); {hint}", f"{path.name} does not load ({reason})"
        ) from err
    raise BatchError(
        f"{path} does not hold a CIFAR batch dictionary; {hint}",
        f"{path.name} does not load (not a CIFAR batch dictionary)",
    )


def _whole(value: object) -> bool:
    """An integer label: an int, or a float with no fraction (2.0); never a bool, 1.7, nan, text."""
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, int | np.integer) or (
        isinstance(value, float | np.floating) and float(value).is_integer()
    )


def _labels(info: DatasetInfo, path: Path, raw: object, rows: int, hint: str) -> np.ndarray:
    """The batch's labels as int64: one per image, integers, in 0..num_classes-1, else a BatchError
    (a float label was truncated by the cast, 1.7 → 1, and trained on silently)."""
    key, labels = info.label_key, np.asarray(raw)

    def bad(clause: str) -> BatchError:
        return BatchError(f"{path} {clause}; {hint}", f"{path.name} {clause}")

    if labels.ndim != 1:
        raise bad(f"holds '{key}' of shape {labels.shape}, expected a list of {rows} labels")
    if len(labels) != rows:
        raise bad(f"holds {rows} images and {len(labels)} labels ('{key}'): one label per image expected")
    if labels.dtype.kind not in "iu":  # floats, bools, objects, text: each value is looked at
        values = labels.tolist()
        at = next((i for i, v in enumerate(values) if not _whole(v)), None)
        if at is not None:
            raise bad(f"holds a label that is not an integer ('{key}'): {values[at]!r} at row {at}")
        labels = np.asarray([int(v) for v in values]) if values else np.zeros(0, np.int64)
    outside = np.flatnonzero((labels < 0) | (labels >= info.num_classes))
    if outside.size:
        first, many = int(outside[0]), "s" * (outside.size != 1)
        raise bad(
            f"holds {outside.size} label{many} outside 0..{info.num_classes - 1} ('{key}'; first: "
            f"{labels[first]} at row {first})"
        )
    return labels.astype(np.int64)


def read_batch(info: DatasetInfo, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file: uint8 (N, H, W, 3) images and int64 labels (one per image, integers
    in range), or a ``BatchError`` naming the file and the fix."""
    path = Path(path)
    hint = redownload_hint(info, path.parent)
    batch = load_pickle(path, hint)
    if "data" not in batch or info.label_key not in batch:
        clause = f"lacks 'data' or '{info.label_key}': not the {info.name} python layout"
        raise BatchError(f"{path} {clause}; {hint}", f"{path.name} {clause}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * info.image_size**2:
        clause = (
            f"holds 'data' of dtype {data.dtype} and shape {data.shape}, expected uint8 "
            f"(N, {3 * info.image_size**2}): not the {info.name} python layout"
        )
        raise BatchError(f"{path} {clause}; {hint}", f"{path.name} {clause}")
    labels = _labels(info, path, batch[info.label_key], len(data), hint)
    images = data.reshape(-1, 3, info.image_size, info.image_size).transpose(0, 2, 3, 1)
    return images, labels


def _count_problems(info: DatasetInfo, folder: Path, split: str, counts: dict[str, int]) -> list[BatchError]:
    """One error per file whose image count is off when the split's total is not the official
    count (a total that matches is kept however the files share it)."""
    expected = info.test_count if split == "test" else info.train_count
    total = sum(counts.values())
    if total == expected:
        return []
    share, rest = divmod(expected, len(counts))  # official batches hold equal shares (10,000 each)
    odd = [(name, n) for name, n in counts.items() if rest or n != share]
    whole = f" ({total} of the expected {expected} {split} images)" if len(counts) > 1 else ""
    hint = redownload_hint(info, folder)
    errors = []
    for name, n in odd:
        clause = f"holds {n} images, expected {f'{expected} in all' if rest else share}{whole}"
        errors.append(BatchError(f"{folder / name} {clause}; {hint}", f"{name} {clause}"))
    return errors


def split_problems(info: DatasetInfo, folder: Path, split: str) -> list[BatchError]:
    """Every reason training would refuse ``split`` (``data verify`` lists them all)."""
    files = info.test_files if split == "test" else info.train_files
    problems: list[BatchError] = []
    counts = {}
    for name in files:
        try:
            counts[name] = len(read_batch(info, Path(folder) / name)[1])
        except BatchError as err:
            problems.append(err)
    return problems or _count_problems(info, Path(folder), split, counts)


def read_split(info: DatasetInfo, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The split's images and labels after the checks of ``split_problems``, or its first error."""
    files = info.test_files if split == "test" else info.train_files
    images, labels = [], []
    for name in files:
        batch_images, batch_labels = read_batch(info, Path(folder) / name)
        images.append(batch_images)
        labels.append(batch_labels)
    counts = {name: len(y) for name, y in zip(files, labels, strict=True)}
    problems = _count_problems(info, Path(folder), split, counts)
    if problems:
        raise problems[0]
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


class CifarReader:
    """The pickled batches of one CIFAR folder; "pretrain" is the train split."""

    pretrain_split = "train"  # the split pre-training reads

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.info, self.folder = info, Path(folder)

    def index(self, split: str) -> SampleIndex:
        info = self.info
        warn_unofficial(info, self.folder, info.test_files if split == "test" else info.train_files)
        x, y = read_split(info, self.folder, split)
        return SampleIndex.from_array(x, y, f"{info.name} {split}")

    def verify(self) -> dict[str, str]:
        """md5 of each file; files missing or unlike the official ones are judged by
        ``verdict.check_official`` (unusable for training: download again; usable: kept)."""
        from fastsigclr.data.verdict import check_official  # verdict reads batches with split_problems

        sums = {p.name: md5sum(p) for p in sorted(self.folder.iterdir()) if p.is_file()}
        check_official(self.info, self.folder, sums)
        return sums
