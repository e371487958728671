"""What a run reads: the split the loader pre-trains on, and the labelled splits of the kNN
monitor and the probe, with ``--limit-train``/``--limit-test`` and the undecodable-file policy
applied, and the class count of a folder resolved."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastsigclr.config import ConfigError
from fastsigclr.data.broken import over_limit, report_broken, skipped_line
from fastsigclr.data.datasets import open_dataset
from fastsigclr.data.files import unofficial_unsaid
from fastsigclr.data.info import DatasetError, DatasetInfo
from fastsigclr.data.samples import SampleIndex
from fastsigclr.data.subset import balanced_indices
from fastsigclr.runinfo import available_memory_bytes

SPLITS = ("train", "test")  # a dataset's splits, as commands name them


@dataclass
class DataSplits:
    """``pretrain``: what the loader trains on; ``train`` and ``test``: the labelled splits of the
    kNN monitor and the probe (None when the dataset has none: an unlabeled folder, no val/)."""

    info: DatasetInfo
    pretrain: SampleIndex | None  # None only where the caller does not read it (``open_splits``)
    train: SampleIndex | None
    test: SampleIndex | None
    store_size: int | None = None  # mixed-size images are decoded at this size for kNN and eval
    max_broken: float = 0.0
    # A labelled split decoded for kNN and eval is kept in host memory up to this many bytes (None:
    # a quarter of the available memory); a larger one streams, decoded again at each use.
    keep_bytes: int | None = None
    _arrays: dict = field(default_factory=dict, repr=False)
    _left_out: dict = field(default_factory=dict, repr=False)  # split → ids a stream found broken
    _kept: dict = field(default_factory=dict, repr=False)  # split → kept (True) or streamed
    _checked: dict = field(default_factory=dict, repr=False)  # split → ids the ranks' union checked
    _undecoded: dict = field(default_factory=dict, repr=False)  # split → ids ``arrays`` left out

    def __post_init__(self) -> None:
        # kNN compares features of the two labelled splits: when only one of them would be resized
        # (its own images larger than --store-size², or of mixed sizes), both are, so that the
        # bank and the queries are embedded at one resolution (128×96 against 18² was embedded
        # apart). Splits held as one array (official datasets) are what they are.
        labelled = [s for s in (self.train, self.test) if s is not None and not s.decoded]
        if self.store_size and len({s.stored_hw(self.store_size) for s in labelled}) > 1:
            for s in labelled:
                s.resize_always = True

    @property
    def has_knn(self) -> bool:
        return all(s is not None and s.labelled for s in (self.train, self.test))

    def adopt(self, decoded: SampleIndex) -> None:
        """Take the pre-training split as a loader decoded it (the gpu loader): the kNN monitor
        then reads the same array, neither decoded nor reported twice."""
        if self.train is self.pretrain:
            self.train = decoded
        self.pretrain = decoded

    def index(self, split: str) -> SampleIndex:
        """The SampleIndex of "pretrain", "train" or "test"."""
        return self.pretrain if split == "pretrain" else getattr(self, split)

    def kept(self, split: str) -> bool:
        """Whether ``batches(split)`` reads an array decoded once and kept (else it streams);
        decided at the first call, so a split does not flip between the two as memory moves."""
        index = self.index(split)
        if split in self._arrays or index._array is not None:
            return True
        if split not in self._kept:
            budget = self.keep_bytes if self.keep_bytes is not None else available_memory_bytes() // 4
            self._kept[split] = index.nbytes(self.store_size) <= budget
        return self._kept[split]

    def batches(
        self, split: str, *, batch: int = 1024, progress: bool = False, part: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """uint8 (n, H, W, 3) images of a split and their labels, in order, ``batch`` at a time:
        slices of ``arrays(split)`` when the split is ``kept``, else decoded as they stream (for
        ImageNet's 1.28 M images at 256², 252 GB as one array). A stream's undecodable files are
        left out and reported once, after the pass that met them, against ``max_broken``.
        ``part`` (rank, ranks): only that rank's share of the split (``part_batches``)."""
        if part[1] > 1:
            yield from self.part_batches(split, *part, batch=batch, progress=progress)
            return
        if self.kept(split):
            images, labels = self.arrays(split, progress=progress)
            for start in range(0, len(images), batch):
                yield images[start : start + batch], labels[start : start + batch]
            return
        yield from self._stream(split, range(len(self.index(split))), batch, progress)

    def part_range(self, split: str, rank: int, ranks: int) -> tuple[int, int]:
        """The rows [lo, hi) of ``rank``'s share of a split: ``ranks`` contiguous shares, in order,
        their sizes at most one apart, of the split's ids (of its array where one is kept, which
        leaves out the files that did not decode)."""
        n = len(self._arrays[split][1]) if split in self._arrays else len(self.index(split))
        return n * rank // ranks, n * (rank + 1) // ranks

    def part_batches(
        self, split: str, rank: int, ranks: int, *, batch: int = 1024, progress: bool = False
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``rank``'s share of a split (``part_range``), as ``batches`` gives the whole: sliced from
        the split when this process holds it decoded (the gpu loader's, an in-memory dataset),
        else decoded, and kept when the whole split would be (each rank then holds its share, so
        a node of ``ranks`` processes holds the split once). The files that do not decode are
        listed and left out but not counted here: the ranks check the limit on the union of their
        finds (``left_out`` → ``check_left_out``), so that they stop together."""
        index, (lo, hi) = self.index(split), self.part_range(split, rank, ranks)
        key = (split, rank, ranks)
        if split in self._arrays or index.decoded:
            images, labels = self._arrays[split] if split in self._arrays else (index.array(), index.labels)
            held = images[lo:hi], labels[lo:hi]
        elif key in self._arrays:
            held = self._arrays[key]
        else:
            yield from self._stream(split, range(lo, hi), batch, progress, key)
            return
        for start in range(0, len(held[0]), batch):
            yield held[0][start : start + batch], held[1][start : start + batch]

    def _stream(
        self, split: str, ids: range, batch: int, progress: bool, key: tuple | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The samples ``ids`` of a split decoded as they stream, those known undecodable left out
        unread; its new undecodable ones reported after the pass. ``key``: a rank's share, kept
        under it when the whole split would be, its finds only listed (the ranks check the limit
        on their union, ``check_left_out``)."""
        index, known = self.index(split), self.left_out(split)
        hw = index.stored_hw(self.store_size)
        keep = key is not None and self.kept(split)  # the whole split's decision: a rank keeps its share
        kept = (np.empty((len(ids), *hw, 3), np.uint8), np.empty(len(ids), np.int64)) if keep else None
        filled, found = 0, []
        stream = index.stream(self.store_size, batch=batch, skip=known, progress=progress, ids=ids)
        for images, labels, broken in stream:
            found += broken
            if kept is not None:
                rows = slice(filled, filled + len(images))
                kept[0][rows], kept[1][rows], filled = images, labels, filled + len(images)
            yield images, labels
        if kept is not None:  # a pass that stopped early keeps nothing
            self._arrays[key] = kept[0][:filled], kept[1][:filled]
        if found:
            already = len(index.broken) + len(known) if key is None else 0  # a share lists its own
            known.update(i for i, _ in found)
            listed = [(index.source(i), why) for i, why in found]
            total = len(index) + len(index.broken)
            report_broken(index.name, listed, total, self.max_broken, already, limit=key is None)

    def left_out(self, split: str) -> set[int]:
        """The ids of ``split`` this process found undecodable when it streamed it (a view)."""
        return self._left_out.setdefault(split, set())

    def check_left_out(self, split: str, found: set[int], *, announce: bool = False) -> None:
        """Adopt ``found``, the union of the ranks' ``left_out(split)``, and check it (with the
        header pass's failures) against ``max_broken``: a DatasetError on every rank alike. Within
        the limit, ``announce`` says how many are skipped when the union has grown."""
        index = self.index(split)
        known = self.left_out(split)
        known.update(found)
        count, total = len(known) + len(index.broken), len(index) + len(index.broken)
        first = index.source(min(known)) if known else None
        if error := over_limit(index.name, count, total, self.max_broken, first):
            raise error
        if announce and len(known) > self._checked.get(split, 0):
            print(skipped_line(index.name, count, self.max_broken), file=sys.stderr)
        self._checked[split] = len(known)

    def arrays(self, split: str, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (N, H, W, 3), labels) of "train" or "test", decoded once and kept."""
        if split not in self._arrays:
            index = self.index(split)
            if index is self.pretrain and "pretrain" in self._arrays:
                self._arrays[split] = self._arrays["pretrain"]
            else:
                decoded = index.in_memory(self.store_size, progress=progress, max_broken=self.max_broken)
                self._arrays[split] = (decoded.array(), decoded.labels)
                # ids of the files index holds (an index decoded already holds only those that decoded)
                self._undecoded[split] = set() if decoded is index else set(decoded.undecoded)
        return self._arrays[split]

    def row_files(self, split: str) -> list[str] | None:
        """The files of the rows ``batches(split)`` gave, in order, after a pass over the whole
        split (those that did not decode left out); None for a split without files (an array)."""
        index = self.index(split)
        if not index.files:
            return None
        gone = self._undecoded.get(split, set()) if split in self._arrays else self.left_out(split)
        return [str(f) for i, f in enumerate(index.files) if i not in gone]


class LimitError(ConfigError):
    """A limit (``option``: --limit-train, --limit-test) past the images of its split. ``problem``
    says which, without the fix: a run's evaluation on other data reports it as not the run's."""

    def __init__(self, option: str, limit: int, available: int, split: str, dataset: str) -> None:
        self.option, self.limit, self.available = option, limit, available
        self._args = (option, limit, available, split, dataset)
        self.problem = f"{option} {limit} is more than the {available} {split} images of {dataset}"
        super().__init__(
            f"{self.problem}: pass {option} {available} or less, or leave it out to use them all"
        )

    def __reduce__(self):  # pickled with its fields (the default passes the message alone)
        return (LimitError, self._args)


def _limited(
    index: SampleIndex | None, limit: int | None, flag: str | None = None, dataset: str = "", option: str = ""
) -> SampleIndex | None:
    """A class-balanced subset of ``limit`` samples. A limit past the split's size is refused
    (``--limit-<flag>``) rather than capped: config.json would record a subset never used."""
    if index is None or not limit:
        return index
    if flag is not None and limit > len(index):
        raise LimitError(option or f"--limit-{flag}", limit, len(index), flag, dataset)
    if limit >= len(index):
        return index
    return index.subset(balanced_indices(index.labels, limit))


def open_splits(
    info: DatasetInfo,
    folder: Path,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    store_size: int | None = None,
    max_broken: float = 0.0,
    announce: bool = True,
    limit_option: str = "--limit-train",
    reads: tuple[str, ...] = SPLITS,
) -> DataSplits:
    """The splits of ``info`` in ``folder``; files whose header cannot be read are reported
    (``report_broken``) and a folder's classes and counts printed (when ``announce``).
    ``limit_option``: what the caller's option for ``limit_train`` is called, for its errors.
    ``reads``: the splits the caller reads ("train" includes the pre-training images); another
    one that cannot be read is None rather than an error (`embed --split train` beside a
    missing test batch), and is indexed when it can be, since the storage side of the labelled
    splits follows all of them."""
    reader = open_dataset(info, folder)

    def index(split: str, name: str) -> SampleIndex | None:
        if name in reads:
            return reader.index(split)
        try:
            with unofficial_unsaid():  # its files are not read for what they hold
                return reader.index(split)
        except DatasetError:
            return None

    train, test = index("train", "train"), index("test", "test")
    pretrain = train if reader.pretrain_split == "train" else index(reader.pretrain_split, "train")
    read = [s for s, name in ((pretrain, "train"), (train, "train"), (test, "test")) if name in reads]
    for split in {id(s): s for s in read if s is not None}.values():
        report_broken(split.name, split.broken, len(split) + len(split.broken), max_broken)
    if hasattr(reader, "describe") and announce:
        print(reader.describe(train, test))
    same = pretrain is train
    train = _limited(train, limit_train, "train" if same else None, info.name, limit_option)
    test = _limited(test, limit_test, "test", info.name)
    pretrain = train if same else _limited(pretrain, limit_train, "train", info.name, limit_option)
    if train is not None and not train.labelled:
        train = None
    classes = train.classes if train is not None else ()
    if classes and info.num_classes in (0, len(classes)):
        info = dataclasses.replace(info, num_classes=len(classes))
    return DataSplits(info, pretrain, train, test, store_size=store_size, max_broken=max_broken)
