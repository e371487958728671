"""Checkpoints and run files written atomically: a kill at any moment leaves either the previous
file or the new one, never a mix, and a reader never sees half of it."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from fastsigclr.config import FastSigCLRError

TEMPORARY = ".tmp"  # suffix of the files being written: ".<name>.<pid>-<random>.tmp"


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` to a temporary file in ``path``'s folder, fsync it, rename it over ``path``,
    then fsync the folder so that the rename itself survives a power cut. A kill before the rename
    leaves ``path`` as it was (and a temporary file that ``remove_temporaries`` deletes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMPORARY}")
    try:
        # O_EXCL: a name no other writer holds; mode 0o666 less the umask, as for any new file.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as err:  # some filesystems cannot fsync a folder; their renames are as durable as it gets
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete what killed writers left in ``folder`` (call only while no writer can run there:
    the run directory's lock); returns the files deleted."""
    found = sorted(Path(folder).glob(f".*{TEMPORARY}")) if Path(folder).is_dir() else []
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return found


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save ``obj`` to ``path`` atomically (``write_atomic``)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file (config, summary, results, metrics) atomically (``write_atomic``)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FastSigCLRError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # unpickling arbitrary bytes can fail in many ways; all mean "unreadable"
        raise FastSigCLRError(
            f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); it is truncated or not a "
            f"checkpoint: restore it, or train again with another --out"
        ) from err


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
