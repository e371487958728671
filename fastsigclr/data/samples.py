"""A split as an index of samples: labels, each image's size, and how to decode sample i on
demand. Every reader (CIFAR pickles, Tiny-ImageNet, STL-10 binaries, image folders) yields one;
the loaders read from it. Decoding a whole split into one uint8 array (``SampleIndex.in_memory``)
is the strategy of the gpu loader and of the kNN monitor for a split that fits, not the data
model (``SampleIndex.stream`` decodes one a batch at a time).

Image files are decoded by ``imagefile.decode_file``: any Pillow format, converted to RGB (grayscale,
CMYK, palette, 16-bit; transparency composited on white). A file that cannot be decoded is a
``broken`` entry: listed with its path and reason, skipped with a count up to ``max_broken`` (a
fraction of the split), beyond which the run stops (``broken.report_broken``).
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from fastsigclr.data import cache
from fastsigclr.data.broken import report_broken
from fastsigclr.data.imagefile import (  # noqa: F401 (decode_file, image_size, DALI_FORMATS: read from here too)
    DALI_FORMATS,
    decode_file,
    image_header,
    image_size,
    resize_center,
    resize_rule,
    to_rgb,
)
from fastsigclr.data.info import DatasetInfo

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
UNLABELED = -1  # the label of an image without a class


# Why a resumed run leaves out an image its earlier sessions could not decode (in_memory's keep_out).
KEPT_OUT = "left out: an earlier session of this run could not decode it"


class Reader(Protocol):
    """One dataset layout. ``index(split)`` for split in ``splits``: "pretrain" (what the SSL
    loader trains on), "train" (the labelled images of the kNN bank and the probe), "test"."""

    info: DatasetInfo

    def __init__(self, info: DatasetInfo, folder: Path) -> None: ...

    def index(self, split: str) -> SampleIndex | None: ...

    def verify(self) -> dict[str, str]: ...


def workers() -> int:
    """Decoding threads: the CPUs, at most 16, shared by the processes torchrun starts on this node
    (LOCAL_WORLD_SIZE), which decode their shares at once (8 ranks took 16 threads each)."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(16, (os.cpu_count() or 1) // local))


class SampleIndex:
    """The samples of one split. ``labels`` int64 (UNLABELED: none), ``sizes`` (N, 2) int64
    (height, width) of each decoded image, ``decode(i)`` its uint8 (H, W, 3) pixels, ``files``
    the encoded file of each sample when it has one (DALI and FFCV read them)."""

    def __init__(
        self,
        name: str,
        labels: np.ndarray,
        sizes: np.ndarray,
        decode: Callable[[int], np.ndarray],
        *,
        files: Sequence[Path] | None = None,
        classes: Sequence[str] = (),
        array: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(len(self.labels), 2)
        self._decode = decode
        self.files = None if files is None else [Path(f) for f in files]
        self.classes = tuple(classes)
        self._array = array
        self.broken: list[tuple[str, str]] = []  # files left out of the index: (path, reason)
        self.undecoded: tuple[int, ...] = ()  # decoded by in_memory: the source's ids it left out
        self.notes: dict[int, str] = {}  # sample → what only some decoders read (image_header)
        self.cache_dir: Path | None = None  # where in_memory keeps the decoded array (files only)
        self.cache_name = "images"
        # Stored at the storage size even when the images share a size that fits it: set on both
        # labelled splits when only one would be resized (DataSplits), so kNN compares alike.
        self.resize_always = False

    @classmethod
    def from_array(cls, images: np.ndarray, labels: np.ndarray, name: str = "images", **kw) -> SampleIndex:
        """Images already decoded, uint8 (N, H, W, 3)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        sizes = np.broadcast_to(np.asarray(images.shape[1:3]), (len(images), 2))
        return cls(name, labels, sizes, images.__getitem__, array=images, **kw)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def decoded(self) -> bool:
        """Whether the images are one array in memory (``in_memory`` has run)."""
        return self._array is not None

    @property
    def labelled(self) -> bool:
        return len(self) > 0 and bool((self.labels != UNLABELED).all())

    def identity(self) -> dict[str, int | str]:
        """The number of samples and a digest of their labels, sizes and file names (relative to
        the files' common folder, so a moved dataset keeps it): what a resumed run checks it trains
        on. Not the pixels: reading them all would cost a pass over the data."""
        h = hashlib.sha256(self.labels.astype("<i8").tobytes() + self.sizes.astype("<i8").tobytes())
        if self.files:
            names = [str(f) for f in self.files]
            # Every name between the least and the greatest shares their common prefix; cut at a
            # separator, it is the folder to name files from. For 1.28 M names os.path.commonpath
            # took 3.4 s; this whole digest 1.8 s, 1.5 of them in str() of the paths (2-core CPU).
            prefix = os.path.commonprefix([min(names), max(names)])  # noqa: RUF071 (cut below)
            cut = prefix.rfind(os.sep) + 1
            # Encoded as os.fsencode does (a name that is not UTF-8 gives back its own bytes), in
            # chunks: one string of every name held ~300 MB at ImageNet's 1.28 M.
            encoding = sys.getfilesystemencoding()
            for start in range(0, len(names), 1 << 16):
                chunk = "\0".join(name[cut:] for name in names[start : start + (1 << 16)]) + "\0"
                h.update(chunk.encode(encoding, "surrogateescape"))
        return {"images": len(self), "digest": h.hexdigest()[:16]}

    @property
    def uniform_size(self) -> tuple[int, int] | None:
        """(h, w) when every image has it, else None."""
        if len(self) and (self.sizes == self.sizes[0]).all():
            return int(self.sizes[0, 0]), int(self.sizes[0, 1])
        return None

    def resized(self, size: int | None) -> int | None:
        """The side of the squares ``in_memory(size)``, ``stream`` and FFCV store the images at
        (shorter side resized, centre crop); None: as they are, when all share one size no
        larger than ``size``² (CIFAR's 32² at 37). 4000×3000 photos of one camera were kept
        whole (22 GB for 16) and compared by kNN with a split resized."""
        same = self.uniform_size
        if self.decoded or (
            same is not None and not self.resize_always and (size is None or max(same) <= size)
        ):
            return None  # an array held (CIFAR's) is what in_memory returns: as it is
        if size is None:
            raise ValueError("images of different sizes need a storage size")
        return size

    def stored_hw(self, size: int | None) -> tuple[int, int]:
        """(h, w) of the images as ``in_memory(size)`` stores them (``resized``)."""
        side = self.resized(size)
        return (side, side) if side is not None else self.uniform_size  # type: ignore[return-value]

    def decode(self, i: int) -> np.ndarray:
        return self._decode(int(i))

    def subset(self, keep: np.ndarray) -> SampleIndex:
        keep = np.asarray(keep, dtype=np.int64)
        base = self._decode
        part = SampleIndex(
            self.name,
            self.labels[keep],
            self.sizes[keep],
            lambda i: base(int(keep[i])),
            files=None if self.files is None else [self.files[i] for i in keep],
            classes=self.classes,
            array=None if self._array is None else self._array[keep],
        )
        part.resize_always = self.resize_always
        position = {int(old): new for new, old in enumerate(keep)}
        part.notes = {position[i]: note for i, note in self.notes.items() if i in position}
        return part  # its split's header failures were counted against the whole split (open_splits)

    def nbytes(self, size: int | None = None) -> int:
        """Bytes of the decoded uint8 array ``in_memory(size)`` would hold."""
        h, w = self.stored_hw(size)
        return len(self) * h * w * 3

    def in_memory(
        self,
        size: int | None = None,
        *,
        progress: bool = True,
        max_broken: float = 0.0,
        keep_out: Collection[int] = (),
    ) -> SampleIndex:
        """This split decoded into one uint8 (N, H, W, 3) array (as a SampleIndex over it). Images
        of one size that fits ``size``² are kept as they are; others are stored at ``size``²
        (``resized``). Files that cannot be decoded are reported (``report_broken``) and left out,
        as are ``keep_out`` (the ids a resumed run's earlier sessions could not decode: a file
        repaired since stays out, as in a run that never stopped), unread; the result's
        ``undecoded`` holds the ids of both. With ``cache_dir`` set, the array is kept there."""
        if self._array is not None:
            return self
        side, hw = self.resized(size), self.stored_hw(size)
        key = None
        if self.cache_dir and self.files:
            key = cache.fingerprint(self.files, side, resize_rule(self.sizes, side))
        name = self.cache_name if side is None else f"{self.cache_name}-{side}px"  # one per storage
        found = cache.load(self.cache_dir, name, key) if key else None
        if found is None:
            images, kept = self._decode_all(hw, side is not None, progress, max_broken, keep_out)
            if key and not keep_out:  # a cache holds every file that decodes
                cache.save(self.cache_dir, name, key, images, kept)
        else:  # the files that did not decode when it was made count against this run's limit too
            images, kept = found
            if keep_out and (out := np.isin(kept, np.fromiter(keep_out, np.int64))).any():
                images, kept = images[~out], kept[~out]  # repaired since the run left them out
        undecoded = tuple(int(i) for i in np.setdiff1d(np.arange(len(self)), kept))
        if found is not None:  # _decode_all reported its own
            left_out = [
                (str(self.files[i]), KEPT_OUT if i in keep_out else "did not decode") for i in undecoded
            ]
            report_broken(self.name, left_out, len(self) + len(self.broken), max_broken, len(self.broken))
        files = None if self.files is None else [self.files[i] for i in kept]
        decoded = SampleIndex.from_array(
            images, self.labels[kept], self.name, files=files, classes=self.classes
        )
        decoded.undecoded = undecoded
        return decoded

    def _decode_all(
        self, hw: tuple[int, int], resize: bool, progress: bool, max_broken: float, keep_out: Collection[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (n, h, w, 3), the ids of the n samples that decoded; ``resize``: to ``hw``)."""
        h, w = hw
        images = np.empty((len(self), h, w, 3), dtype=np.uint8)
        ok = np.ones(len(self), dtype=bool)
        broken: list[tuple[str, str]] = []
        out = frozenset(keep_out)

        def load(i: int) -> tuple[int, np.ndarray | str]:
            if i in out:
                return i, KEPT_OUT
            return i, self._decoded_at(i, hw, resize)

        with ThreadPoolExecutor(max_workers=workers()) as pool:
            decoded = pool.map(load, range(len(self)), chunksize=64)
            for i, rgb in tqdm(
                decoded, total=len(self), desc=f"decode {self.name}", unit="img", disable=not progress
            ):
                if isinstance(rgb, str):
                    ok[i] = False
                    broken.append((self.source(i), rgb))
                else:
                    images[i] = rgb
        report_broken(self.name, broken, len(self) + len(self.broken), max_broken, len(self.broken))
        kept = np.flatnonzero(ok)
        return (images if ok.all() else images[kept]), kept

    def source(self, i: int) -> str:
        """What a message names sample i by: its file, else its place in the split."""
        return str(self.files[i]) if self.files else f"sample {i}"

    def _decoded_at(self, i: int, hw: tuple[int, int], resize: bool) -> np.ndarray | str:
        """Sample i decoded at ``hw`` (``resize``: resized and centre-cropped to it), or why it is
        not."""
        h, w = hw
        try:
            rgb = self.decode(i)
        except (OSError, ValueError) as err:
            return str(err) or type(err).__name__
        rgb = resize_center(rgb, h) if resize else rgb
        return rgb if rgb.shape == (h, w, 3) else f"is {rgb.shape[1]}×{rgb.shape[0]}, expected {w}×{h}"

    def stream(
        self,
        size: int | None,
        *,
        batch: int,
        skip: Collection[int] = (),
        progress: bool = False,
        ids: range | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]]:
        """The split (or its samples ``ids``) decoded a batch at a time, in order, as
        ``in_memory(size)`` would store them but never all at once: (uint8 (n, H, W, 3), their
        labels, the (id, reason) of the batch's samples that did not decode, left out). Ids in
        ``skip`` are left out unread. The storage size is the split's: a run of ``ids`` that
        happens to hold one size is stored at ``size`` as the rest."""
        hw, skip, resize = self.stored_hw(size), set(skip), self.resized(size) is not None
        wanted = [i for i in (range(len(self)) if ids is None else ids) if i not in skip]
        bar = tqdm(total=len(wanted), desc=f"decode {self.name}", unit="img", disable=not progress)
        batches = [wanted[start : start + batch] for start in range(0, len(wanted), batch)]
        with ThreadPoolExecutor(max_workers=workers()) as pool, bar:
            # The next batch decodes while the caller uses this one (a forward pass, say).
            ahead = [pool.submit(self._decoded_at, i, hw, resize) for i in batches[0]] if batches else []
            for k, ids in enumerate(batches):
                got = [future.result() for future in ahead]
                ahead = (
                    [pool.submit(self._decoded_at, i, hw, resize) for i in batches[k + 1]]
                    if k + 1 < len(batches)
                    else []
                )
                bar.update(len(ids))
                keep = [k for k, rgb in enumerate(got) if not isinstance(rgb, str)]
                images = np.stack([got[k] for k in keep]) if keep else np.empty((0, *hw, 3), np.uint8)
                broken = [(ids[k], rgb) for k, rgb in enumerate(got) if isinstance(rgb, str)]
                yield images, self.labels[[ids[k] for k in keep]], broken

    def undecodable(self, *, progress: bool = True) -> list[tuple[str, str]]:
        """(path, reason) of every sample that fails to decode (each decoded once, not kept)."""

        def check(i: int) -> tuple[str, str] | None:
            try:
                self.decode(i)
            except (OSError, ValueError) as err:
                return self.source(i), str(err) or type(err).__name__
            return None

        with ThreadPoolExecutor(max_workers=workers()) as pool:
            found = pool.map(check, range(len(self)), chunksize=64)
            bar = tqdm(found, total=len(self), desc=f"decode {self.name}", unit="img", disable=not progress)
            return [x for x in bar if x is not None]

    def array(self) -> np.ndarray:
        """The decoded array of an in-memory index."""
        if self._array is None:
            raise ValueError(f"{self.name} is not decoded: call in_memory() first")
        return self._array


def file_index(
    name: str, files: Sequence[Path], labels: np.ndarray, *, classes: Sequence[str] = (), sizes=None
) -> SampleIndex:
    """An index over image files; ``sizes`` (h, w) for all (a layout of one size) or, when None,
    read from each file's header (a file whose header cannot be read is left out and listed:
    ``index.broken``)."""
    files = [Path(f) for f in files]
    labels = np.asarray(labels, dtype=np.int64)
    broken: list[tuple[str, str]] = []
    notes: dict[int, str] = {}
    if sizes is not None:
        table = np.broadcast_to(np.asarray(sizes, dtype=np.int64), (len(files), 2))
    else:

        def header(path: Path):
            try:
                return image_header(path)
            except (OSError, ValueError) as err:
                return str(err) or type(err).__name__

        with ThreadPoolExecutor(max_workers=workers()) as pool:
            found = list(pool.map(header, files, chunksize=256))
        ok = np.array([isinstance(x, tuple) for x in found], dtype=bool)
        broken = [(str(f), x) for f, x in zip(files, found, strict=True) if not isinstance(x, tuple)]
        headers = [x for x in found if isinstance(x, tuple)]
        table = np.array([x[:2] for x in headers], dtype=np.int64).reshape(-1, 2)
        notes = {i: x[2] for i, x in enumerate(headers) if x[2]}
        files = [f for f, good in zip(files, ok, strict=True) if good]
        labels = labels[ok]
    index = SampleIndex(name, labels, table, lambda i: decode_file(files[i]), files=files, classes=classes)
    index.broken = broken
    index.notes = notes
    return index
