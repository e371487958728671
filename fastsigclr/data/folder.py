"""Image folders: your own images, ImageNet and ImageNet-100.

    DIR/train/<class>/**    labelled training images (class = folder name, sorted; subfolders too)
    DIR/val/<class>/**      optional: labelled images for the kNN monitor and the probe
    DIR/*                   or: a flat folder of unlabeled images (kNN and probe off)

JPEG, PNG, WebP and BMP files of any size and mode (``samples.decode_file`` makes them RGB).
Each file's size is read from its header when the index is built; a file whose header cannot be
read is listed and left out (``broken.report_broken``), as is one that later fails to decode.
A preset may keep only some class folders (ImageNet-100's 100 wnids). What is not read is said
at the start (images outside class folders, a repeated or looping linked folder, test/ without
val/), and a layout that is probably another one (torchvision's DIR/<class>/) is refused naming it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import NoReturn

import numpy as np

from fastsigclr.data.broken import report_broken
from fastsigclr.data.info import FFCV_SUBFOLDER, DatasetError, DatasetInfo
from fastsigclr.data.samples import IMAGE_SUFFIXES, UNLABELED, SampleIndex, file_index


def _images_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) directly in ``folder``, sorted. Hidden files (.DS_Store) are
    ignored; not is_file(): a link to nothing named like an image is listed as one that does not read."""
    return _by_suffix(p for p in folder.iterdir() if not p.name.startswith(".") and not p.is_dir())


def _by_suffix(entries) -> tuple[list[Path], list[Path]]:
    entries = sorted(entries)
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    return images, [p for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]


def _folder_key(path: Path) -> tuple[int, int]:
    """The (device, inode) of the folder ``path`` names, links followed: one per real folder."""
    try:
        st = os.stat(path)
    except OSError as err:
        _unreadable(err)
    return st.st_dev, st.st_ino


def _one_class_per_folder(split_dir: Path, class_dirs: list[Path]) -> None:
    """Refuse two class folders that are one real folder (one a link to the other, or both links
    to a third): its images would be trained under two labels, and skipping one would change the
    class list."""
    taken: dict[tuple[int, int], Path] = {}
    for folder in class_dirs:
        first = taken.setdefault(_folder_key(folder), folder)
        if first is not folder:
            if folder.is_symlink() or first.is_symlink():
                fix = f"remove the link {folder if folder.is_symlink() else first}"
            else:  # neither is a link: one folder mounted at two paths (a bind mount, say)
                fix = f"neither is a link (a bind mount?): unmount {folder} or move it out of {split_dir}"
            raise DatasetError(
                f"the class folders {first.name} and {folder.name} of {split_dir} are one folder "
                f"({os.path.realpath(folder)}): its images would have two labels; {fix}"
            )


def _walk(folder: Path, seen: set[tuple[int, int]], looped: list[Path]) -> tuple[list[Path], list[Path]]:
    """(image files, other files) in ``folder`` and its subfolders, sorted (a class's images are
    often kept in folders by date or source). Links to folders are followed, as a linked class
    folder is, but each real folder is read once per split: one already in ``seen`` (a second
    link to it, a link to a class folder) or a link to a folder holding this one (a walk without
    end) is skipped and appended to ``looped``, to be said. Hidden files and folders
    (.ipynb_checkpoints, .DS_Store) are ignored."""
    entries = []
    for root, dirs, names in os.walk(folder, onerror=_unreadable, followlinks=True):
        kept = []
        # Real folders before links, so that of a folder and a link to it the link is the one
        # skipped and named (sorted by name, the link could come first).
        paths = sorted(
            (Path(root) / d for d in dirs if not d.startswith(".")), key=lambda p: (p.is_symlink(), p)
        )
        for path in paths:
            key = _folder_key(path)
            if key in seen or _leads_up(path):
                looped.append(path)
            else:
                seen.add(key)
                kept.append(path.name)
        dirs[:] = kept
        entries += [Path(root) / n for n in names if not n.startswith(".")]
    try:  # a folder that can be listed but not entered (no x permission) fails here
        return _by_suffix(p for p in entries if not p.is_dir())  # a link to nothing is listed
    except OSError as err:  # named by its folder, the one to fix
        err.filename = str(Path(err.filename).parent) if err.filename else str(folder)
        _unreadable(err)


def _leads_up(path: Path) -> bool:
    """Whether the folder ``path`` is a link to a folder holding it (DIR, /, ~: a walk without end,
    or one over the whole disk). Only a link can; one to a folder above the class folder is not in
    ``seen``, so the real paths tell."""
    return path.is_symlink() and Path(os.path.realpath(path.parent)).is_relative_to(os.path.realpath(path))


def _unreadable(err: OSError) -> NoReturn:
    """A folder of images that cannot be read stops the run: its images would be left out unseen."""
    if err.errno in (errno.EACCES, errno.EPERM):
        fix = "make it readable (chmod), or move it out of the dataset"
    elif err.errno == errno.ENOENT:
        fix = "it was moved or removed while being read; run again once the dataset stays put"
    else:
        fix = "repair it, or move it out of the dataset"
    raise DatasetError(f"cannot read the folder {err.filename} ({err.strerror}): {fix}")


def _classes(info: DatasetInfo, split_dir: Path) -> list[str]:
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not info.classes:
        return found
    missing = sorted(set(info.classes) - set(found))
    if missing:
        raise DatasetError(
            f"{split_dir} lacks {len(missing)} of the {len(info.classes)} class folders of {info.name} "
            f"(e.g. {', '.join(missing[:3])}): point --data-dir at the folder holding train/<wnid>/"
        )
    return sorted(info.classes)


def unread_val(folder: Path) -> str | None:
    """The name of a folder in ``folder`` that was probably meant as val/ and is read by no one
    (torchvision and Kaggle layouts call it test/, valid/ or validation/), or None."""
    return next((n for n in ("test", "valid", "validation") if (folder / n).is_dir()), None)


class FolderReader:
    """An image folder (see the module docstring); "pretrain" and "train" are DIR/train (or
    DIR itself when flat), "test" is DIR/val when it exists."""

    pretrain_split = "train"  # the split pre-training reads

    def __init__(self, info: DatasetInfo, folder: Path) -> None:
        self.info, self.folder = info, Path(folder)
        if not self.folder.is_dir():
            raise DatasetError(
                f"{self.folder} is not a folder: pass --data-dir DIR, with DIR/train/<class>/ images "
                f"(or images directly in DIR)"
            )
        train = self.folder / "train"
        if os.path.lexists(train) and not train.is_dir():  # read as a flat folder, it told of val/
            raise DatasetError(f"{train} is not a folder: put the training images in {train}/<class>/")
        self.flat = not train.is_dir()
        self.classes = [] if self.flat else _classes(info, train)
        if not self.flat and not self.classes:
            raise DatasetError(f"{train} holds no class folders: put the images in {train}/<class>/")
        self._ignored: list[Path] = []
        self._loose: list[Path] = []  # images in train/ or val/ themselves, outside class folders
        self._looped: list[Path] = []  # links to folders already read, or to a folder holding them
        self._subfolders: list[Path] = []  # of a flat folder: not read
        self._cache: dict[str, SampleIndex | None] = {}

    @staticmethod
    def has_test(folder: Path) -> bool:
        """Whether ``folder`` holds a "test" split (DIR/train/ and DIR/val/), known without reading
        a file: callers that need one can say so before the train split's headers are read."""
        return (folder / "train").is_dir() and (folder / "val").is_dir()

    def index(self, split: str) -> SampleIndex | None:
        """The split's files, sizes and labels (None: no val/ folder); read once per reader."""
        key = "test" if split == "test" else "train"
        if key not in self._cache:
            self._cache[key] = self._read(key)
        return self._cache[key]

    def _read(self, split: str) -> SampleIndex | None:
        if self.flat:
            if split == "test":
                return None
            files, self._ignored = _images_in(self.folder)
            self._subfolders = sorted(  # the FFCV file's folder is the tool's own, not images
                p
                for p in self.folder.iterdir()
                if p.is_dir() and p.name[0] != "." and p.name != FFCV_SUBFOLDER
            )
            labels = [UNLABELED] * len(files)
        else:
            split_dir = self.folder / ("val" if split == "test" else "train")
            if split == "test" and not split_dir.is_dir():
                return None
            files, labels = self._labelled(split_dir)
        if not files:
            raise self._no_images(split)
        return file_index(f"{self.info.name} {split}", files, np.asarray(labels), classes=self.classes)

    def _no_images(self, split: str) -> DatasetError:
        """The error of a split without images, naming the layout that was probably meant."""
        root = self.folder
        if not self.flat and split == "test":
            return DatasetError(
                f"{root / 'val'} holds no images in class folders: add {root}/val/<class>/ images "
                f"(the classes of train/) or remove val/"
            )
        if self.flat and self._subfolders:  # torchvision's ImageFolder root: DIR/<class>/*
            names = ", ".join(p.name for p in self._subfolders[:3])
            names += ", ..." if len(self._subfolders) > 3 else ""
            parent = root.absolute().parent
            fix = (
                f"pass its parent, {parent}, the folder holding train/, as --data-dir"
                if (parent / "train").is_dir()
                else f"move them into {root}/train/ (or pass the folder holding train/ as --data-dir)"
            )
            return DatasetError(f"{root} holds class folders ({names}) and no train/: {fix}")
        where = root if self.flat else root / "train"
        return DatasetError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {where}: put them in "
            f"{root}/train/<class>/ (or directly in {root} when they have no labels)"
        )

    def _labelled(self, split_dir: Path) -> tuple[list[Path], list[int]]:
        files: list[Path] = []
        labels: list[int] = []
        known = set(self.classes)
        extra = sorted(
            p.name
            for p in split_dir.iterdir()
            if p.is_dir() and p.name not in known and not p.name.startswith(".")
        )
        if extra and not self.info.classes:
            raise DatasetError(
                f"{split_dir} has class folders that train/ lacks: {', '.join(extra[:5])}; "
                f"the classes of val/ must be those of train/"
            )
        loose, other = _images_in(split_dir)  # counted, not read: their class is unknown
        self._loose += loose
        self._ignored += other
        class_dirs = [split_dir / name for name in self.classes if (split_dir / name).is_dir()]
        _one_class_per_folder(split_dir, class_dirs)
        # Each real folder once: the split's own folders may not be read again through a link.
        seen = {_folder_key(p) for p in (self.folder, split_dir, *class_dirs)}
        for label, name in enumerate(self.classes):
            if not (split_dir / name).is_dir():
                continue
            found, other = _walk(split_dir / name, seen, self._looped)
            files += found
            labels += [label] * len(found)
            self._ignored += other
        return files, labels

    def describe(self, train: SampleIndex, test: SampleIndex | None) -> str:
        """What was found, printed once at the start of a run."""
        lines = [f"{self.info.name}: {self.folder}"]
        if self.flat:
            lines.append(
                f"  {len(train)} unlabeled images{_unread(train)}: the kNN monitor and the probe are off"
            )
        else:
            counts = np.bincount(train.labels, minlength=len(self.classes))
            shown = ", ".join(f"{c} {n}" for c, n in zip(self.classes[:20], counts[:20], strict=True))
            more = f", ... ({len(self.classes)} classes)" if len(self.classes) > 20 else ""
            classes = f"{len(self.classes)} class{'es' if len(self.classes) != 1 else ''}"
            lines.append(f"  train: {len(train)} images in {classes} ({shown}{more}){_unread(train)}")
            if len(self.classes) == 1:  # every kNN vote and probe guess is right
                lines.append(
                    f"  note: one class: the kNN monitor's and the probe's accuracy are 1.0 whatever the "
                    f"model learns; to train without labels put the images in {self.folder} itself "
                    f"(no train/)"
                )
            empty = [c for c, n in zip(self.classes, counts, strict=True) if n == 0]
            if empty:
                lines.append(
                    f"  warning: {len(empty)} class folder(s) of train/ hold no images "
                    f"({', '.join(empty[:5])}): those classes are never trained on"
                )
            lines.append(f"  val: {len(test)} images{_unread(test)}" if test is not None else self._no_val())
        if self._subfolders:
            lines.append(
                f"  ignored {len(self._subfolders)} subfolder(s) (e.g. {self._subfolders[0].name}/): "
                f"unlabeled images are read from {self.folder} itself; for classes, use "
                f"{self.folder}/train/<class>/"
            )
        if self._loose:
            lines.append(
                f"  ignored {len(self._loose)} images outside class folders "
                f"(e.g. {self._relative(self._loose[0])}): move them into a class folder"
            )
        if self._looped:
            first = self._looped[0]
            lines.append(
                f"  skipped {len(self._looped)} linked folder(s) read already or holding their link "
                f"(e.g. {self._relative(first)} -> {os.path.realpath(first)}): each folder is read "
                f"once; remove the extra link"
            )
        if self._ignored:
            lines.append(
                f"  ignored {len(self._ignored)} files that are not images (e.g. {self._ignored[0]})"
            )
        return "\n".join(lines)

    def _no_val(self) -> str:
        """The line of a layout without val/, naming a split folder that was probably meant as one."""
        line = "  no val/ folder: the kNN monitor is off"
        if other := unread_val(self.folder):
            line += f"; {other}/ was found and is not read: rename it val/ to use it for the kNN monitor"
        return line

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.folder).as_posix()
        except ValueError:
            return str(path)

    def verify(self, progress: bool = True) -> dict[str, str]:
        """Decode every image once; a DatasetError lists those that fail (none may). Returns
        {split: what was checked}."""
        print(self.describe(self.index("train"), self.index("test")))
        out = {}
        # the folders the splits are read from (it said "test/" of val/, and "train/" of a flat DIR)
        folders = {"train": f"{self.folder.name}/ (flat)" if self.flat else "train/", "test": "val/"}
        for split in ("train", "test"):
            index = self.index(split)
            if index is not None:
                broken = index.broken + index.undecodable(progress=progress)
                fix = "repair or delete the files listed above: every image must decode"
                report_broken(index.name, broken, len(index) + len(index.broken), 0.0, fix=fix)
                out[folders[split]] = f"all {len(index)} images decode"
        return out


def _unread(index: SampleIndex) -> str:
    """The files of a split left out because their headers cannot be read (listed apart), so the
    count beside them does not read as every file: "48 images" then "1 of 49 cannot be decoded"."""
    n = len(index.broken)
    return f" and {n} that cannot be read" if n else ""
