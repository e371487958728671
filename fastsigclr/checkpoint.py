"""Checkpoints and run files written atomically: a kill at any moment leaves either the previous
file or the new one, never a mix, and a reader never sees half of it."""

from __future__ import annotations

import errno
import os
import pickle
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

import torch

from fastsigclr.config import FastSigCLRError

# torch.load(weights_only=True)'s messages for a global, a call or an object off its allow-list.
REFUSED = re.compile(r"GLOBAL|Can only (build|create new object)|[Tt]rying to call reduce")
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


def symlink_error(path: Path) -> FastSigCLRError:
    return FastSigCLRError(
        f"{path} is a symbolic link: fastsigclr never follows links in a run directory (it could read "
        f"or overwrite the file the link points to); replace the link with the file itself, or use "
        f"another run directory"
    )


def refuse_links(folder: Path, names: Iterable[str | Path]) -> None:
    """Raise ``symlink_error`` for the first of ``folder``'s ``names`` (relative paths) that is a
    symbolic link."""
    for name in names:
        if (Path(folder) / name).is_symlink():
            raise symlink_error(Path(folder) / name)


def open_nofollow(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644) -> int:
    """``os.open`` of a run-directory file that never follows a symbolic link at ``path``
    (O_NOFOLLOW: the kernel refuses it, so no check-then-open race); a link raises one line."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise symlink_error(Path(path)) from None
        raise


def read_text(path: Path) -> str:
    """A run-directory text file (config.json, metrics.jsonl, summary.json), never through a link."""
    with os.fdopen(open_nofollow(path), encoding="utf-8") as f:
        return f.read()


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint as written by ``save_atomic``, unpickled with ``weights_only=True``: torch's
    allow-list of tensors, dicts, lists, tuples, strings and numbers is all a checkpoint holds
    (state dicts, optimiser states, RNG states, the config as plain JSON values), so a file that
    names any other callable (a crafted pickle that would run code) is refused, never executed."""
    path = Path(path)
    if path.parent.is_symlink():  # checkpoints/ as a link: refused like the file itself
        raise symlink_error(path.parent)
    if not path.is_file() and not path.is_symlink():
        raise FastSigCLRError(f"no checkpoint at {path}")
    with os.fdopen(open_nofollow(path), "rb") as f:
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            if REFUSED.search(str(err)):  # torch's words for a callable or type off its allow-list
                raise _refused(path, err) from err
            raise _unreadable(path, err) from err  # random bytes: "Unsupported operand 250"
        except Exception as err:  # unpickling arbitrary bytes can fail in many ways; all mean "unreadable"
            raise _unreadable(path, err) from err


def _refused(path: Path, err: Exception) -> FastSigCLRError:
    # torch's message is a paragraph; the line naming the refused type is the one to show.
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if REFUSED.search(line)), lines[-1])
    return FastSigCLRError(
        f"checkpoint {path} is refused: it holds more than tensors and plain values "
        f"({reason.rstrip('.')}), which no checkpoint written by fastsigclr does; do not load it, "
        f"train again with another --out"
    )


def _unreadable(path: Path, err: Exception) -> FastSigCLRError:
    return FastSigCLRError(
        f"checkpoint {path} is unreadable ({type(err).__name__}: {' '.join(str(err).split())}); it is "
        f"truncated or not a checkpoint: restore it, or train again with another --out"
    )


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
