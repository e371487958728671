"""Dataset files: md5 checks, download with progress and checksum, safe atomic extraction, and
the temporary file each writer of a derived file (a .beton, a decoded cache) writes first."""

from __future__ import annotations

import contextlib
import contextvars
import glob
import hashlib
import os
import re
import socket
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from fastsigclr.config import speaks_for_node
from fastsigclr.data.info import DatasetError, DatasetInfo


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_digest(path: Path, progress: bool = False, chunk: int = 1 << 22) -> str:
    """blake2b (20 bytes) of the file's bytes, with a progress bar (``progress``) for a file over
    256 MiB: about 1.2 s a GiB on one core (0.9 GB/s, from the page cache)."""
    h = hashlib.blake2b(digest_size=20)
    size = path.stat().st_size
    with (
        open(path, "rb") as f,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"check {path.name}",
            disable=not progress or size < 1 << 28,
        ) as bar,
    ):
        while block := f.read(chunk):
            h.update(block)
            bar.update(len(block))
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


# Off while a split the command does not read is indexed (``splits.open_splits``): `embed --split
# train` warned about the test batch it never reads.
_UNOFFICIAL_SAID = contextvars.ContextVar("unofficial_said", default=True)


@contextlib.contextmanager
def unofficial_unsaid() -> Iterator[None]:
    """``warn_unofficial`` says nothing inside this block."""
    token = _UNOFFICIAL_SAID.set(False)
    try:
        yield
    finally:
        _UNOFFICIAL_SAID.reset(token)


def warn_unofficial(info: DatasetInfo, folder: Path, names: tuple[str, ...]) -> None:
    """One stderr line naming those of ``names`` whose md5 is not the official one. Training goes
    on: a re-packed copy (the tests' CIFAR-10 rebuilt from JPEGs) is legitimate. Hashing all of
    CIFAR-10 (186 MB) took 0.35 s on a 2-core CPU, so it runs at every load, once per file
    version and process; under torchrun said by one process per node (every one reads the node's
    files)."""
    official = dict(info.file_md5)
    bad = []
    for name in names:
        path = Path(folder) / name
        if name in official and path.is_file():
            actual, fresh = _md5_once(path)
            if fresh and actual != official[name]:
                bad.append(name)
    if bad and speaks_for_node() and _UNOFFICIAL_SAID.get():
        print(
            f"warning: {', '.join(bad)} in {folder} differ{'s' * (len(bad) == 1)} from the official "
            f"{info.name} file{'s' * (len(bad) > 1)} (md5): "
            f"corrupt, or not the official release; `fastsigclr data verify` names the differences; if "
            f"corrupt, {redownload_hint(info, Path(folder))}",
            file=sys.stderr,
        )


def download(url: str, dest: Path, md5: str, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar, check its md5, then move it into place.

    The bytes go to ``dest.partial`` first; a failed or mismatching download is removed, so a
    half-written archive is never left where a later run would trust it.
    """
    partial = dest.with_name(dest.name + ".partial")
    h = hashlib.md5()
    if not url.lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise DatasetError(f"--url {url} is not a URL; pass one that starts with https:// (or http://)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        open(partial, "wb").close()
    except OSError as err:
        raise DatasetError(
            f"cannot write the download to {dest.parent} ({err.strerror}); pass --data-dir DIR, a "
            f"writable folder"
        ) from None
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
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as err:  # ValueError: "http://[x"
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


def own_partial(path: Path) -> Path:
    """The temporary file this process writes ``path``'s bytes to before renaming it into place:
    ``.<name>.<host>.<pid>-<random>.partial``, so that two processes writing the same file (two
    runs starting on a new dataset; two containers whose writers have the same pid; two hosts on
    a shared filesystem) never write or delete each other's. Those of this host's processes no
    longer running (killed writers, each maybe gigabytes) are removed first, as far as they can
    be; another host's are left alone (whether its writer runs cannot be asked from here)."""
    path, host = Path(path), _host()
    for found in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}.*.partial"):
        writer = re.fullmatch(r"([0-9]{1,9})-[0-9a-f]{8}", found.name[len(path.name) + len(host) + 3 : -8])
        if writer and not _running(int(writer[1])):
            with contextlib.suppress(OSError):  # another user's, in a shared folder: theirs to remove
                found.unlink()
    return path.with_name(f".{path.name}.{host}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _host() -> str:
    """This host's name as a file name part (no separator, no dot: the pid follows the last one)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process, running
        return True
    return True
