"""Tiny-ImageNet-200 in its official layout: index, validation, labels, and a decoded cache.

    tiny-imagenet-200/wnids.txt                        the class ids (200)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG       500 per class
    tiny-imagenet-200/val/val_annotations.txt          "<file>\t<wnid>\t<box>" (10,000 lines)
    tiny-imagenet-200/val/images/*.JPEG

Labels are the index of the wnid in sorted order; the "test" split is the labelled validation set
(the official test images have no labels). JPEGs stay JPEG for DALI and FFCV; the gpu loader
reads a uint8 (N, 64, 64, 3) cache decoded once (with a progress bar) beside the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from fastsigclr.data.datasets import DatasetError, DatasetInfo


def _wnids(info: DatasetInfo, folder: Path) -> list[str]:
    path = folder / "wnids.txt"
    if not path.is_file():
        raise DatasetError(f"missing {path}: not the Tiny-ImageNet layout; delete {folder} to fetch it again")
    wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if len(wnids) != info.num_classes:
        raise DatasetError(f"{path} lists {len(wnids)} classes, expected {info.num_classes}")
    return wnids


def split_files(info: DatasetInfo, folder: Path, split: str) -> tuple[list[Path], np.ndarray]:
    """The split's JPEG paths and int64 labels, in a fixed order, after checking the layout."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    wnids = _wnids(info, folder)
    index = {w: i for i, w in enumerate(wnids)}
    files: list[Path] = []
    labels: list[int] = []
    if split == "train":
        per_class = info.train_count // info.num_classes
        for wnid in wnids:
            found = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
            if len(found) != per_class:
                raise DatasetError(
                    f"{folder / 'train' / wnid / 'images'} holds {len(found)} JPEGs, expected {per_class}: "
                    f"the dataset is incomplete; delete {folder} to fetch it again"
                )
            files += found
            labels += [index[wnid]] * per_class
    else:
        notes = folder / "val" / "val_annotations.txt"
        if not notes.is_file():
            raise DatasetError(f"missing {notes}: the validation labels; delete {folder} to fetch it again")
        for n, line in enumerate(notes.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                raise DatasetError(
                    f"{notes}:{n}: expected '<file>\\t<wnid>...' with a known wnid, got {line!r}"
                )
            path = folder / "val" / "images" / parts[0]
            if not path.is_file():
                raise DatasetError(f"{notes}:{n}: {path} does not exist")
            files.append(path)
            labels.append(index[parts[1]])
        if len(files) != info.test_count:
            raise DatasetError(f"{notes} labels {len(files)} images, expected {info.test_count}")
    return files, np.asarray(labels, dtype=np.int64)


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)  # a few are grayscale JPEGs
    except (OSError, UnidentifiedImageError) as err:
        raise DatasetError(
            f"{path} is not a readable JPEG ({err}); delete it to fetch the dataset again"
        ) from err
    if rgb.shape != (size, size, 3):
        raise DatasetError(f"{path} is {rgb.shape[1]}×{rgb.shape[0]}, expected {size}×{size}")
    return rgb


def content_key(files: list[Path]) -> str:
    """The decoded cache's key: every file's name and a digest of its bytes, so a file changed in
    place (even to the same size and mtime) re-decodes instead of reading stale pixels. Reading the
    bytes costs far less than decoding them (figures in docs/design.md §7)."""
    h = hashlib.sha1()
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as err:  # ELOOP: a JPEG that is a symlink to itself
            raise DatasetError(
                f"{f} cannot be read ({err.strerror}); delete it to fetch the dataset again"
            ) from None
        h.update(f"{f.name}:{hashlib.sha1(data).hexdigest()}\n".encode())
    return h.hexdigest()


def _cached_key(meta_path: Path) -> str | None:
    """The key the cache was decoded under; None when its meta file is unreadable."""
    try:
        meta = json.loads(meta_path.read_text())
        return meta.get("fingerprint") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def load_split(
    info: DatasetInfo, folder: Path, split: str, *, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 64, 64, 3) and labels, from the decoded cache when it matches the files."""
    folder = Path(folder)
    files, labels = split_files(info, folder, split)
    cache = folder.parent / f"{info.folder}-decoded"
    images_path, meta_path = cache / f"{split}-images.npy", cache / f"{split}-meta.json"
    fingerprint = content_key(files)
    if images_path.is_file() and meta_path.is_file() and _cached_key(meta_path) == fingerprint:
        images = np.load(images_path, mmap_mode="r")
        if images.shape == (len(files), info.image_size, info.image_size, 3):
            return np.ascontiguousarray(images), labels
    images = np.empty((len(files), info.image_size, info.image_size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        decoded = pool.map(lambda f: _decode(f, info.image_size), files, chunksize=64)
        for i, rgb in enumerate(
            tqdm(
                decoded,
                total=len(files),
                desc=f"decode {info.name} {split}",
                unit="img",
                disable=not progress,
            )
        ):
            images[i] = rgb
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = images_path.with_name(f".{images_path.name}.partial")
        with open(tmp, "wb") as f:
            np.save(f, images)
        os.replace(tmp, images_path)
        meta_path.write_text(json.dumps({"fingerprint": fingerprint, "count": len(files)}) + "\n")
    except OSError as err:  # a read-only data dir: train anyway, decode again next time
        print(f"note: cannot cache the decoded images in {cache} ({err.strerror or err})", file=sys.stderr)
    return images, labels


def _undecodable(files: list[Path], size: int) -> list[str]:
    def check(path: Path) -> str | None:
        try:
            _decode(path, size)
        except DatasetError:
            return str(path)
        return None

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return [name for name in pool.map(check, files, chunksize=64) if name is not None]


def verify(info: DatasetInfo, folder: Path) -> dict[str, str]:
    """Checks the files themselves: the layout and counts (split_files), every JPEG decodes at its
    size, and a decoded cache made from other bytes than the files' is removed. Returns the md5 of
    the index files."""
    folder = Path(folder)
    cache = folder.parent / f"{info.folder}-decoded"
    for split in ("train", "test"):
        files, _ = split_files(info, folder, split)
        bad = _undecodable(files, info.image_size)
        meta = cache / f"{split}-meta.json"
        stale = meta.is_file() and _cached_key(meta) != content_key(files)
        if stale:  # the next load decodes the files again
            meta.unlink()
            (cache / f"{split}-images.npy").unlink(missing_ok=True)
        dropped = f"; the decoded {split} cache, made from other bytes, was removed" if stale else ""
        if bad:
            raise DatasetError(
                f"{len(bad)} of {len(files)} {split} JPEGs do not decode as {info.image_size}² images "
                f"(first: {', '.join(bad[:3])}){dropped}: the files are damaged; delete {folder} to fetch "
                f"it again"
            )
        if stale:
            print(f"note: {dropped[2:]} ({cache}): the files changed since it was decoded", file=sys.stderr)
    out = {}
    for name in ("wnids.txt", "words.txt", "val/val_annotations.txt"):
        path = folder / name
        if path.is_file():
            out[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return out
