"""Dataset files: download with progress, verify the checksum, extract atomically, validate, read.

CIFAR-10 and CIFAR-100 are read from the official "python version" layout, Tiny-ImageNet-200 from
its zip's layout (``tinyimagenet``). A data directory that already holds the extracted folder is
used as is (after validating layout and counts); one that holds the archive is verified and
extracted; otherwise the archive is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fastsigclr.config import FastSigCLRError, option
from fastsigclr.data import plain_pickle

DATA_ENV = "FASTSIGCLR_DATA"


class DatasetError(FastSigCLRError):
    """Missing, corrupt or unexpected dataset files; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    url: str
    md5: str
    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    train_count: int
    test_count: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    kind: str = "cifar"  # "cifar": pickled batches; "tiny": Tiny-ImageNet's JPEG folders
    # (file, md5) of the official extracted files, as torchvision's CIFAR10/CIFAR100 list them
    # (Tiny-ImageNet publishes none); tests substitute the sums of the files they write.
    file_md5: tuple[tuple[str, str], ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
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
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        md5="90528d7ca1a48142e341f4ef8d21d0de",
        archive="tiny-imagenet-200.zip",
        folder="tiny-imagenet-200",
        train_files=(),
        test_files=(),
        label_key="",
        num_classes=200,
        train_count=100_000,
        test_count=10_000,
        image_size=64,
        # The per-channel statistics commonly quoted for the train split (not measured here).
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2770, 0.2691, 0.2821),
        kind="tiny",
    ),
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
    return option(None, f"folder holding the dataset (or its archive); unset: {unset}")


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# (resolved path, size, mtime_ns) -> md5: each version of a file is hashed once per process.
_MD5_SEEN: dict[tuple[str, int, int], str] = {}


def _md5_once(path: Path) -> tuple[str, bool]:
    """(md5 of the file, whether this call computed it)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    fresh = key not in _MD5_SEEN
    if fresh:
        _MD5_SEEN[key] = md5sum(path)
    return _MD5_SEEN[key], fresh


def redownload_hint(info: DatasetInfo, folder: Path) -> str:
    return (
        f"delete {folder} and download it again (`fastsigclr data download --dataset {info.name} "
        f"--data-dir {folder.parent}`)"
    )


def warn_unofficial(info: DatasetInfo, folder: Path, names: tuple[str, ...]) -> None:
    """One stderr line naming those of ``names`` whose md5 is not the official one. Training goes
    on: a re-packed copy (the tests' CIFAR-10 rebuilt from JPEGs) is legitimate. Hashing all of
    CIFAR-10 (186 MB) took 0.35 s on a 2-core CPU, so it runs at every load, once per file
    version and process."""
    official = dict(info.file_md5)
    bad = []
    for name in names:
        path = Path(folder) / name
        if name in official and path.is_file():
            actual, fresh = _md5_once(path)
            if fresh and actual != official[name]:
                bad.append(name)
    if bad:
        print(
            f"warning: {', '.join(bad)} in {folder} differ from the official {info.name} files (md5): "
            f"corrupt, or not the official release; `fastsigclr data verify` names the differences; if "
            f"corrupt, {redownload_hint(info, Path(folder))}",
            file=sys.stderr,
        )


def download(url: str, dest: Path, md5: str, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar, check its md5, then move it into place.

    The bytes go to ``dest.partial`` first; a failed or mismatching download is removed, so a
    half-written archive is never left where a later run would trust it.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    h = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", disable=not progress
            ) as bar:
                while block := response.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        partial.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {url}: {err}. Without network access, put {dest.name} (or its extracted "
            f"folder) into {dest.parent}"
        ) from err
    if h.hexdigest() != md5:
        partial.unlink(missing_ok=True)
        raise DatasetError(
            f"checksum mismatch for {url}: md5 {h.hexdigest()}, expected {md5}; the partial download "
            f"was removed. Retry, or put a good copy of {dest.name} into {dest.parent}"
        )
    partial.replace(dest)
    return dest


def _safe_extract(archive: Path, into: Path) -> None:
    if archive.name.endswith(".zip"):
        root = into.resolve()
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                target = (into / name).resolve()
                if root not in target.parents and target != root:
                    raise DatasetError(f"{archive}: refusing to extract unsafe member {name!r}")
            zf.extractall(into)
        return
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
            return
        root = into.resolve()
        for member in tar.getmembers():  # pragma: no cover - Pythons without extraction filters
            target = (into / member.name).resolve()
            if (root not in target.parents and target != root) or member.issym() or member.islnk():
                raise DatasetError(f"{archive}: refusing to extract unsafe member {member.name!r}")
        tar.extractall(into)


def extract(archive: Path, info: DatasetInfo, data_dir: Path) -> Path:
    """Extract into a temporary folder beside the target, then rename: all or nothing."""
    final = data_dir / info.folder
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=f".{info.folder}.") as tmp:
        try:
            _safe_extract(archive, Path(tmp))
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise DatasetError(
                f"{archive} is not a readable archive ({err}); delete it and download again"
            ) from err
        extracted = Path(tmp) / info.folder
        if not extracted.is_dir():
            raise DatasetError(f"{archive} does not contain the folder {info.folder}/ of {info.name}")
        if final.exists():  # another process finished first
            return final
        extracted.rename(final)
    return final


def prepare(
    info: DatasetInfo,
    data_dir: Path,
    *,
    download_ok: bool = True,
    url: str | None = None,
    progress: bool = True,
) -> Path:
    """Return the extracted dataset folder under ``data_dir``, fetching what is missing."""
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / info.folder
    if folder.is_dir():
        return folder
    archive = data_dir / info.archive
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


def load_split(
    info: DatasetInfo, folder: Path, split: str, *, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 (N, H, W, 3) and labels as int64 (N,), validated against ``info``.
    Tiny-ImageNet's JPEGs are decoded once into a cache (progress bar)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if info.kind == "tiny":
        from fastsigclr.data import tinyimagenet

        return tinyimagenet.load_split(info, folder, split, progress=progress)
    files = info.train_files if split == "train" else info.test_files
    warn_unofficial(info, Path(folder), files)
    images, labels = [], []
    for name in files:
        batch_images, batch_labels = read_batch(info, Path(folder) / name)
        images.append(batch_images)
        labels.append(batch_labels)
    x = np.ascontiguousarray(np.concatenate(images))
    y = np.concatenate(labels)
    expected = info.train_count if split == "train" else info.test_count
    if len(x) != expected or len(y) != expected:
        raise DatasetError(
            f"{info.name} {split}: found {len(x)} images and {len(y)} labels, expected {expected}; "
            f"the folder {folder} is incomplete"
        )
    if y.min() < 0 or y.max() >= info.num_classes:
        raise DatasetError(f"{info.name} {split}: labels outside 0..{info.num_classes - 1}")
    return x, y


def verify(info: DatasetInfo, data_dir: Path) -> dict[str, str]:
    """md5 of each file of the extracted folder (the report of ``fastsigclr data verify``); files
    that are missing or differ from ``info.file_md5`` are judged by ``verdict.check_official``."""
    folder = Path(data_dir) / info.folder
    if not folder.is_dir():
        raise DatasetError(f"{folder} does not exist; run `fastsigclr data download --dataset {info.name}`")
    if info.kind == "tiny":
        from fastsigclr.data import tinyimagenet

        return tinyimagenet.verify(info, folder)
    sums = {p.name: md5sum(p) for p in sorted(folder.iterdir()) if p.is_file()}
    from fastsigclr.data.verdict import check_official

    check_official(info, folder, sums)
    return sums


@dataclass(frozen=True)
class DataConfig:
    """Options of ``fastsigclr data download`` and ``fastsigclr data verify``."""

    dataset: str = dataset_option()
    data_dir: str | None = data_dir_option()
    url: str | None = option(None, "download from this URL (a mirror) instead of the official one")
    progress: bool = option(True, "show a progress bar")

    def resolved_dir(self) -> Path:
        return data_folder(self.data_dir)
