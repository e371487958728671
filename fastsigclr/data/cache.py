"""The decoded-array cache of a file-based split: ``in_memory`` decodes a split's files once
(with a progress bar) and keeps the uint8 array beside the data, keyed by the files' names, sizes
and times, so a second run reads it back (Tiny-ImageNet's 100,000 JPEGs: one .npy)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from fastsigclr.config import speaks_for_node
from fastsigclr.data.files import own_partial
from fastsigclr.data.info import DatasetError
from fastsigclr.filetype import json_loads


def fingerprint(files: list[Path], size: int | None, rule: str = "") -> str:
    """The cache's key: every file's name and a digest of its bytes, so a file changed in place
    (even to the same size and mtime) is decoded again (reading the bytes costs far less than
    decoding them: docs/design.md §7); ``rule``: how images are resized to ``size``, where it
    changed (``imagefile.resize_rule``)."""
    h = hashlib.sha1(f"size={size}{rule}\n".encode())
    for f in files:
        try:
            data = f.read_bytes()
        except OSError as err:  # ELOOP: a file that is a symlink to itself
            raise DatasetError(
                f"{f} cannot be read ({err.strerror}); delete it to fetch the dataset again"
            ) from None
        h.update(os.fsencode(f.name) + f":{hashlib.sha1(data).hexdigest()}\n".encode())
    return h.hexdigest()


def drop_stale(folder: Path, name: str, key: str) -> bool:
    """Remove the cache ``name`` when it was made from other bytes than ``key``'s; whether it did."""
    meta = folder / f"{name}-meta.json"
    try:
        stale = meta.is_file() and json_loads(meta.read_text()).get("fingerprint") != key
    except (OSError, ValueError, AttributeError):
        stale = meta.is_file()
    if stale:
        meta.unlink()
        (folder / f"{name}-images.npy").unlink(missing_ok=True)
    return stale


def load(folder: Path, name: str, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, kept sample ids) cached under ``key``, or None."""
    images_path, meta_path = folder / f"{name}-images.npy", folder / f"{name}-meta.json"
    if not (images_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json_loads(meta_path.read_text())
        if meta.get("fingerprint") != key:
            return None
        images = np.load(images_path)
        kept = np.asarray(meta["kept"], dtype=np.int64)
    except (OSError, ValueError, KeyError):
        return None
    if images.ndim != 4 or len(images) != len(kept):
        return None
    return images, kept


def save(folder: Path, name: str, key: str, images: np.ndarray, kept: np.ndarray) -> None:
    """Write atomically; a read-only data dir is a note, not an error (decoded again next time)."""
    images_path, meta_path = folder / f"{name}-images.npy", folder / f"{name}-meta.json"
    temporaries: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Each writer its own temporaries: two runs may cache the same split at once.
        temporaries = [own_partial(images_path), own_partial(meta_path)]
        with open(temporaries[0], "wb") as f:
            np.save(f, images)
        os.replace(temporaries[0], images_path)
        temporaries[1].write_text(json.dumps({"fingerprint": key, "kept": kept.tolist()}) + "\n")
        os.replace(temporaries[1], meta_path)
    except OSError as err:
        for tmp in temporaries:  # a full disk leaves no half-written cache behind
            with contextlib.suppress(OSError):  # a read-only folder: EROFS, even for no file
                tmp.unlink()
        if speaks_for_node():  # every process of a torchrun node tries the same folder
            print(f"note: cannot cache the decoded images in {folder} ({err.strerror or err})",
                  file=sys.stderr)  # fmt: skip
