"""Checkpoints and run files written atomically: a kill at any moment leaves either the previous
file or the new one, never a mix, and a reader never sees half of it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import pickle
import re
import signal
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from fastsigclr.config import FastSigCLRError
from fastsigclr.filetype import not_a_file

DIGEST = "digest"  # a checkpoint's key holding tensor_digest of the rest
# torch.load(weights_only=True)'s messages for a global, a call or an object off its allow-list.
REFUSED = re.compile(r"GLOBAL|Can only (build|create new object)|[Tt]rying to call reduce")
TEMPORARY = ".tmp"  # suffix of the files being written: ".<name>.<pid>-<random>.tmp"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota: the same write works once space is freed
WRITE_FIX = "choose a writable place and run again"
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
# held back while files that belong together are renamed: Ctrl-C, kill, a closed terminal
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class WriteError(FastSigCLRError):
    """A file could not be written (nothing of it is left behind): no space, no permission, a
    read-only filesystem, a folder in the way. ``no_space``: freeing space fixes it."""

    def __init__(self, path: Path, err: OSError | str, fix: str) -> None:
        """``err``: the OSError, or the reason in words (``not_a_file``'s: nothing was tried)."""
        self.path, self.no_space = Path(path), isinstance(err, OSError) and err.errno in NO_SPACE
        # numpy's tofile (np.save to a file) reports a full disk as "640000 requested and 76768
        # written", an OSError without an errno
        if isinstance(err, OSError) and err.errno is None and SHORT_WRITE.search(str(err)):
            self.no_space = True
        if isinstance(err, str):
            super().__init__(f"cannot write {path} ({err}); {fix}")
            return
        if self.no_space:
            super().__init__(f"no space left on device writing {path}; free space and {fix}")
            return
        # mkdir of a folder path with a file in it: EEXIST or ENOTDIR
        path_file = err.errno in (errno.EEXIST, errno.ENOTDIR)
        reason = "a part of its folder path is a file" if path_file else err.strerror or str(err)
        super().__init__(f"cannot write {path} ({reason}); {fix}")


def _check_targets(paths: Iterable[Path], fix: str) -> None:
    """A ``WriteError`` for the first of ``paths`` where a folder, link, device, FIFO or socket stands."""
    for path in paths:
        if (what := not_a_file(path)) is not None:
            raise WriteError(path, f"it is {what}, and fastsigclr replaces only regular files", fix)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError behind ``exc``: torch.save reports a failed write as ``RuntimeError ...
    unexpected pos`` with the ENOSPC only in the exception's context."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _create(tmp: Path) -> IO[bytes]:
    """A new file for ``write_atomic`` (O_EXCL: a name no other writer holds; mode 0o666 less the
    umask, as for any new file)."""
    return os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), "wb")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], fix: str = WRITE_FIX) -> None:
    """``write(f)`` to a temporary file in ``path``'s folder, fsync it, rename it over ``path``,
    then fsync the folder so that the rename itself survives a power cut. A kill before the rename
    leaves ``path`` as it was (and a temporary file that ``remove_temporaries`` deletes). A write
    that fails (a full disk, a read-only folder) leaves ``path`` as it was and raises a
    ``WriteError`` that ends with ``fix``; so does a folder, link, device or FIFO at ``path``
    (``not_a_file``: a rename would replace it, as root /dev/null itself), before any writing."""
    write_atomic_files({Path(path): write}, fix)


def write_atomic_files(writes: Mapping[Path, Callable[[IO[bytes]], None]], fix: str = WRITE_FIX) -> None:
    """``write_atomic`` for files that belong together (features and their labels): every file is
    written in full to its temporary first, and only then are they renamed over their paths, one
    after the other, with Ctrl-C, SIGTERM and SIGHUP held back (``held_signals``), and the folders
    fsynced. A failure or an interrupt while writing leaves every path as it was. Between two
    renames (microseconds) old can be left beside new only by what is not held: a kill that
    cannot be caught (SIGKILL, a power cut), another signal, one whose handler was set outside
    Python, or a rename that fails after the first succeeded."""
    _check_targets(writes, fix)
    temporaries: dict[Path, Path] = {}
    current, renamed = next(iter(writes)), False  # the file a failure names; all are in place
    try:
        for current, write in writes.items():
            tmp = current.with_name(f".{current.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMPORARY}")
            temporaries[current] = tmp
            _write_temporary(current, tmp, write, fix)
        _check_targets(writes, fix)  # again: one may have been made while the files were written
        with held_signals():
            for current, tmp in temporaries.items():
                os.replace(tmp, current)
            renamed = True
            for folder in dict.fromkeys(path.parent for path in writes):
                _fsync_dir(folder)  # before a held signal acts: the renames survive a power cut
    except BaseException as exc:
        for tmp in temporaries.values():
            with contextlib.suppress(OSError):  # ENOTDIR too, when a file stands where the folder goes
                tmp.unlink(missing_ok=True)
        cause = _os_error(exc)
        # Not a WriteError once every file is in place (a folder that could not be fsynced)
        if cause is not None and isinstance(exc, (OSError, RuntimeError)) and not renamed:
            raise WriteError(current, cause, fix) from exc
        raise


def _write_temporary(path: Path, tmp: Path, write: Callable[[IO[bytes]], None], fix: str) -> None:
    """``write(f)`` into the new file ``tmp`` beside ``path``, fsynced; a failed write is a
    ``WriteError`` naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _create(tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as exc:
        cause = _os_error(exc)
        if cause is None:
            raise
        raise WriteError(path, cause, fix) from exc


@contextlib.contextmanager
def held_signals(signals: Iterable[int] = HELD_SIGNALS) -> Iterator[None]:
    """Within it, ``signals`` are only recorded; on leaving, the previous handlers come back and
    each signal that arrived is raised again, so it acts (a KeyboardInterrupt for Ctrl-C) after
    the work it would have split. Handlers belong to the main thread: elsewhere it holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    # A handler set outside Python reads as None and could not be put back: such a signal is left as it is.
    held = [s for s in signals if signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, lambda signum, _frame: arrived.append(signum)) for s in held}
    try:
        yield
    finally:
        try:  # a signal that lands as the handlers come back must not leave the rest unrestored
            _each(lambda item: signal.signal(*item), list(previous.items()))
        finally:
            _each(signal.raise_signal, list(dict.fromkeys(arrived)))


def _each(act: Callable[[Any], Any], items: list) -> None:
    """``act`` on every item in order, each even when an earlier one raised (that is re-raised)."""
    if items:
        try:
            act(items[0])
        finally:
            _each(act, items[1:])


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


def tensor_digest(obj: Any) -> str:
    """SHA-256 of every tensor's bytes in ``obj`` (nested dicts and lists), with its place: a
    byte changed inside a tensor (a NaN from a bad disk) changes it. SHA-256 because it was the
    fastest hashlib digest measured (2-core CPU, shared and loaded: sha256 118 MB/s, blake2b 74,
    md5 56; CPUs with SHA extensions are ~10× faster): 0.76 s (median of 5) for a ResNet-18
    width-64 model and a copy as its momentum (133 MB), once per checkpoint and once per load."""
    h = hashlib.sha256()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            h.update(f"{where}:{value.dtype}:{tuple(value.shape)};".encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if key != DIGEST:
                    walk(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}/{i}")

    walk(obj, "")
    return h.hexdigest()


def save_atomic(obj: Any, path: Path, fix: str = WRITE_FIX) -> None:
    """torch.save ``obj`` to ``path`` atomically (``write_atomic``); a dict gets the digest of its
    tensors under ``DIGEST``, which ``load`` checks."""
    if isinstance(obj, dict):
        obj = {**obj, DIGEST: tensor_digest(obj)}
    write_atomic(path, lambda f: torch.save(obj, f), fix)


def write_text_atomic(path: Path, text: str, fix: str = WRITE_FIX) -> None:
    """Write a text file (config, summary, results, metrics) atomically (``write_atomic``)."""
    write_atomic(path, lambda f: f.write(text.encode()), fix)


def writable_folder(folder: Path, option: str = "--out", what: str | None = None, keep: bool = False) -> Path:
    """Check that ``folder`` can be created and a file made in it, before a command spends its
    time computing what it will write there; raises one line naming ``option`` (and ``what`` the
    folder is, when it is not the option's value itself). The folders it made are removed again
    unless ``keep``: a command that fails later leaves nothing behind."""
    folder = Path(folder)
    made = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check.{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMPORARY}"
        with _create(probe):
            pass
        probe.unlink()
        if not keep:
            for path in made:  # innermost first; one another command just filled stays
                with contextlib.suppress(OSError):
                    path.rmdir()
    except OSError as err:
        in_the_way = err.errno in (errno.EEXIST, errno.ENOTDIR)
        reason = "it or a folder above it is a file" if in_the_way else err.strerror
        if in_the_way and folder.is_symlink() and not folder.exists():  # mkdir cannot follow it
            reason = f"it is a symbolic link to {os.readlink(folder)}, which does not exist"
        name = what or f"{option} {folder}"
        raise FastSigCLRError(f"{name} is not writable ({reason}); choose another {option}") from None
    return folder


def symlink_error(path: Path) -> FastSigCLRError:
    return FastSigCLRError(
        f"{path} is a symbolic link: fastsigclr never follows links in a run or sweep directory (it could "
        f"read or overwrite the file the link points to); replace the link with the file itself, or use "
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
    if path.is_dir() and not path.is_symlink():
        raise FastSigCLRError(f"{path} is a folder, not a checkpoint: move it away (and any checkpoint "
                              f"in it back to {path.name})")  # fmt: skip
    if not path.is_file() and not path.is_symlink():
        raise FastSigCLRError(f"no checkpoint at {path}")
    with os.fdopen(open_nofollow(path), "rb") as f:
        head = f.read(2)
        f.seek(0)
        try:
            with warnings.catch_warnings():  # torch's note on a bare pickle's protocol: refused below
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            if REFUSED.search(str(err)):  # torch's words for a callable or type off its allow-list
                raise _refused(path, err) from err
            if head[:1] == b"\x80" and head[1:2] in (b"\x04", b"\x05"):
                # A bare pickle (fastsigclr writes torch's zip files) whose framing the safe loader
                # does not read ("Unsupported operand 149"): what it holds was never looked at.
                raise _refused(path, err, f"is a bare pickle of protocol {head[1]}") from err
            raise _unreadable(path, err) from err  # random bytes: "Unsupported operand 250"
        except Exception as err:  # unpickling arbitrary bytes can fail in many ways; all mean "unreadable"
            raise _unreadable(path, err) from err
    check_digest(state, path)
    return state


def _torch_reason(err: Exception) -> str:
    """The reason in torch's refusal, without the paragraph around it (which advises loading the
    file without the safe loader, i.e. running whatever code a crafted file holds)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line and "torch.load" not in line] or [""]
    return next((line for line in lines if REFUSED.search(line)), lines[0]).rstrip(".")


def _refused(
    path: Path, err: Exception, what: str = "holds more than tensors and plain values"
) -> FastSigCLRError:
    return FastSigCLRError(
        f"checkpoint {path} is refused: it {what} ({_torch_reason(err)}), which no checkpoint "
        f"written by fastsigclr does; do not load it, train again with another --out"
    )


def _unreadable(path: Path, err: Exception) -> FastSigCLRError:
    detail = ": ".join(filter(None, (type(err).__name__, _torch_reason(err))))
    return FastSigCLRError(
        f"checkpoint {path} is unreadable ({detail}); it is "
        f"truncated or not a checkpoint: restore it, or train again with another --out"
    )


def check_digest(state: Any, path: Path) -> None:
    """A checkpoint whose tensors no longer match the digest written with them is damaged (its
    bytes changed on disk or in a copy); one written before digests (none stored) is trusted."""
    if isinstance(state, dict) and DIGEST in state and state[DIGEST] != tensor_digest(state):
        raise FastSigCLRError(
            f"checkpoint {path} is damaged: its tensors no longer match the digest written with them "
            f"(its bytes changed on disk or in a copy); restore it from a copy, or train again with "
            f"another --out"
        )


def trained(state: dict[str, Any]) -> dict[str, Any]:
    """How far a training checkpoint's model has trained: ``epoch`` (finished epochs), ``step``,
    ``epoch_batches`` (batches of the next epoch a mid-epoch checkpoint holds; 0 at an epoch's end)
    and ``label``, e.g. "epoch 3", "epoch 3 and 120 batches of epoch 4" or "120 batches of epoch 1"."""
    epoch, step, position = int(state["epoch"]), int(state["step"]), state.get("position")
    batches = int(position["batch"]) if isinstance(position, dict) else 0
    part = f"{batches} batch{'es' if batches > 1 else ''} of epoch {epoch + 1}"
    label = (f"epoch {epoch} and {part}" if epoch else part) if batches else f"epoch {epoch}"
    return {"epoch": epoch, "step": step, "epoch_batches": batches, "label": label}


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(value) for value in obj]
    return obj


def json_text(obj: Any, indent: int | None = None, default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON of ``obj``: a NaN or infinite float (a diverged loss, an empty mean) is null, as
    other tools' parsers (jq, JavaScript, Go) refuse Python's NaN and Infinity tokens."""
    return json.dumps(_finite(obj), indent=indent, default=default, allow_nan=False)
