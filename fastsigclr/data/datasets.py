"""The datasets by name (``DATASETS``: one ``DatasetInfo`` each, naming the reader of its layout),
where they live, and how a command gets one: ``prepare`` (download, verify the checksum, extract
atomically) and ``open_dataset`` (the reader over the folder). A data directory that already
holds the extracted folder is used as is (after validating layout and counts); one that holds the
archive is verified and extracted; otherwise the archive is downloaded. Folders the user provides
(``folder``, ``imagenet``, ``imagenet100``) are never downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastsigclr.config import option
from fastsigclr.data.cifar import CifarReader
from fastsigclr.data.files import download, extract, md5sum
from fastsigclr.data.folder import FolderReader
from fastsigclr.data.imagenet100 import IMAGENET100_WNIDS
from fastsigclr.data.info import DatasetError, DatasetInfo
from fastsigclr.data.samples import Reader, SampleIndex
from fastsigclr.data.stl10 import STL10_FILES, Stl10Reader
from fastsigclr.data.tinyimagenet import TinyImageNetReader
from fastsigclr.filetype import not_a_file

DATA_ENV = "FASTSIGCLR_DATA"
__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetInfo",
    "load_split",
    "md5sum",
    "open_dataset",
    "prepare",
    "verify",
]

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        reader=CifarReader,
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        archive="cifar-10-python.tar.gz",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
        train_count=50_000,
        test_count=10_000,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        file_md5=(
            ("data_batch_1", "c99cafc152244af753f735de768cd75f"),
            ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
            ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
            ("data_batch_4", "634d18415352ddfa80567beed471001a"),
            ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
            ("test_batch", "40351d587109b95175f43aff81a1287e"),
            ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888"),
        ),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        reader=CifarReader,
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        archive="cifar-100-python.tar.gz",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
        train_count=50_000,
        test_count=10_000,
        image_size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        file_md5=(
            ("train", "16019d7e3df5f24257cddd939b257f8d"),
            ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),
            ("meta", "7973b15100ade9c7d40fb424638fde48"),
        ),
    ),
    "tinyimagenet": DatasetInfo(
        name="tinyimagenet",
        reader=TinyImageNetReader,
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        md5="90528d7ca1a48142e341f4ef8d21d0de",
        archive="tiny-imagenet-200.zip",
        folder="tiny-imagenet-200",
        num_classes=200,
        train_count=100_000,
        test_count=10_000,
        image_size=64,
        # The per-channel statistics commonly quoted for the train split (not measured here).
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2770, 0.2691, 0.2821),
    ),
    "stl10": DatasetInfo(
        name="stl10",
        reader=Stl10Reader,
        url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        md5="91f7769df0f17e558f3565bffb0c7dfb",
        archive="stl10_binary.tar.gz",
        folder="stl10_binary",
        train_files=STL10_FILES,
        num_classes=10,
        train_count=5_000,
        test_count=8_000,
        pretrain_count=100_000,
        image_size=96,
        # The per-channel statistics solo-learn uses for STL-10 (not measured here).
        mean=(0.4914, 0.4823, 0.4466),
        std=(0.247, 0.243, 0.261),
    ),
    "imagenet100": DatasetInfo(
        name="imagenet100",
        reader=FolderReader,
        num_classes=100,
        classes=IMAGENET100_WNIDS,
        downloadable=False,
    ),
    "imagenet": DatasetInfo(name="imagenet", reader=FolderReader, downloadable=False),
    "folder": DatasetInfo(name="folder", reader=FolderReader, downloadable=False),
}


def default_data_dir() -> Path:
    """$FASTSIGCLR_DATA, or ~/.cache/fastsigclr/data."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastsigclr" / "data"


def data_folder(given: str | Path | None) -> Path:
    """The folder that ``--data-dir`` names: ``given`` (``~`` expanded), else ``default_data_dir()``."""
    return Path(given).expanduser() if given else default_data_dir()


def dataset_option(help: str = "dataset") -> Any:
    """The ``--dataset`` option of every command that reads one."""
    return option("cifar10", help, choices=tuple(DATASETS))


def data_dir_option(unset: str = f"${DATA_ENV} or ~/.cache/fastsigclr/data") -> Any:
    """The ``--data-dir`` option of every command that reads a dataset."""
    return option(
        None,
        f"folder holding the dataset (or its archive; for folder/imagenet: train/<class>/); unset: {unset}",
        path=True,
    )


def _own_folder(info: DatasetInfo, data_dir: Path) -> None:
    """A DatasetError when ``data_dir`` is the dataset's extracted folder itself (it holds the
    files that folder holds, and no such folder inside): looking inside it, a download would nest
    a second copy, and `data verify` advised exactly that. Beside the archive, it is the parent."""
    if not info.folder or (data_dir / info.folder).exists() or (data_dir / info.archive).is_file():
        return
    # The reader's marks ("name/": a folder), else the batch files; all of them, of the right kind,
    # so that a data folder that merely has a train/ beside other things is not taken for it.
    marks = getattr(info.reader, "layout_marks", ()) or (*info.train_files, *info.test_files)
    held = (((data_dir / m).is_dir() if m.endswith("/") else (data_dir / m).is_file()) for m in marks)
    if marks and all(held):
        parent = (
            data_dir.parent
            if data_dir.name not in ("", ".", "..")
            else Path(os.path.abspath(data_dir)).parent
        )
        name = Path(os.path.abspath(data_dir)).name
        rename = "" if name == info.folder else f"rename it {info.folder} (what the reader looks for) and "
        raise DatasetError(f"--data-dir {data_dir} is the dataset's own folder: {rename}pass its parent, "
                           f"--data-dir {parent}")  # fmt: skip


def prepare(
    info: DatasetInfo,
    data_dir: Path,
    *,
    download_ok: bool = True,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """Return the dataset folder under ``data_dir``, fetching what is missing."""
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / info.folder
    if folder.is_dir():
        return folder
    _own_folder(info, data_dir)  # before any download into it
    if not info.downloadable:
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DatasetError(
            f"{folder} {state}: --dataset {info.name} reads the images you provide; pass "
            f"--data-dir DIR with DIR/train/<class>/ (and optionally DIR/val/<class>/)"
        )
    archive = data_dir / info.archive
    if (archive.is_symlink() or archive.exists()) and not archive.is_file():  # never read a FIFO: it hangs
        target = not_a_file(os.path.realpath(archive)) or "nothing"  # through a link: what it names
        what = f"a symbolic link to {target}" if archive.is_symlink() else not_a_file(archive)
        raise DatasetError(
            f"{archive} is {what}, not the {info.name} archive; remove it to download it again"
        )
    if archive.exists():
        actual = md5sum(archive)
        if actual != info.md5:
            raise DatasetError(
                f"{archive} has md5 {actual}, expected {info.md5}: the file is corrupt or truncated; "
                f"delete it to download it again"
            )
    elif not download_ok:
        raise DatasetError(
            f"{info.name} not found: expected {folder}/ or {archive}. Download {info.url} into {data_dir}, "
            f"or drop --no-download"
        )
    else:
        created = [p for p in (data_dir, *data_dir.parents) if not p.exists()]
        try:
            download(url or info.url, archive, info.md5, progress=progress)
        except BaseException:  # a failed start removes the folders it created (deepest first)
            for made in (m for m in created if m.is_dir() and not any(m.iterdir())):
                made.rmdir()
            raise
    return extract(archive, info, data_dir)


def open_dataset(info: DatasetInfo, folder: Path) -> Reader:
    """The reader of ``info``'s layout over its (prepared) folder."""
    return info.reader(info, Path(folder))


def load_split(
    info: DatasetInfo, folder: Path, split: str, *, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, H, W, 3) and labels as int64 (N,), validated against ``info``: the
    split's index decoded in memory (no undecodable image allowed)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    index: SampleIndex | None = open_dataset(info, folder).index(split)
    if index is None:
        raise DatasetError(f"{info.name} in {folder} has no {split} split")
    decoded = index.in_memory(info.image_size, progress=progress)
    return decoded.array(), decoded.labels


def verify(info: DatasetInfo, data_dir: Path, progress: bool = True) -> dict[str, str]:
    """The report of ``fastsigclr data verify``: md5 of each file (checked against the official
    ones where published) or, for an image folder, whether every image decodes."""
    folder = Path(data_dir) / info.folder
    if not folder.is_dir():
        _own_folder(info, Path(data_dir))
        hint = (
            f"run `fastsigclr data download --dataset {info.name} --data-dir {data_dir}`, or pass the "
            f"--data-dir that holds it"
            if info.downloadable
            else "pass --data-dir DIR, the folder holding train/<class>/"
        )
        state = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise DatasetError(f"{folder} {state}; {hint}")
    reader = open_dataset(info, folder)
    return reader.verify(progress) if isinstance(reader, FolderReader) else reader.verify()


@dataclass(frozen=True)
class VerifyConfig:
    """Options of ``fastsigclr data verify``."""

    dataset: str = dataset_option()
    data_dir: str | None = data_dir_option()
    progress: bool = option(True, "show a progress bar")

    def resolved_dir(self) -> Path:
        return data_folder(self.data_dir)


@dataclass(frozen=True)
class DataConfig(VerifyConfig):
    """Options of ``fastsigclr data download``: verify's, and where to download from (verify
    downloads nothing: its --url was accepted and never read)."""

    url: str | None = option(None, "download from this URL (a mirror) instead of the official one")
