"""What stands at a path that a command would write, when it is not a regular file: atomic
writes rename a new file over the path, which replaces a symbolic link, a device node (as root,
``--out /dev/null`` would replace /dev/null itself), a FIFO or a socket as readily as a file."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

# lstat's file types other than a regular file, in words
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def not_a_file(path: str | Path) -> str | None:
    """What stands at ``path`` ("a folder", "a symbolic link", "a character device", ...) when it
    is not a regular file, never following a link; None when it is one, nothing is there, or it
    cannot be looked at (a file where one of its folders goes, a folder without search permission:
    the write then fails with its own ``WriteError``)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:  # nothing there, or a folder that cannot be searched: the write says which
        return None
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


# How much of a file the kind tests below read: results and records are far smaller; a larger file
# at such a path is not one of them.
_KIND_READ_LIMIT = 64 << 20


def starts_with(path: str | Path, magic: bytes) -> bool:
    """Whether the regular file at ``path`` begins with ``magic`` (a PNG's or an .npy's)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def json_loads(text: str | bytes) -> Any:
    """``json.loads``, with JSON nested too deeply for Python's decoder (``[`` a hundred thousand
    times: a RecursionError and a traceback) raised as the JSONDecodeError of any other bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read", "", 0) from None


def json_object(path: str | Path) -> dict | None:
    """The JSON object in the regular file at ``path``, or None: not JSON, not an object, too
    large, too deeply nested, or unreadable."""
    try:
        if os.path.getsize(path) > _KIND_READ_LIMIT:
            return None
        value = json_loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"


def replaces_only(path: str | Path, ours: Callable[[Path], bool], kind: str) -> str | None:
    """Why a command must not replace the regular file at ``path``, to follow its name (None:
    nothing is there, or ``ours`` says it is the command's own kind of file, ``kind``): an --out
    that named another run's checkpoint, a dataset file or another command's results was replaced
    without a word."""
    if not_a_file(path) is not None or not os.path.lexists(path) or ours(Path(path)):
        return None
    return f"exists and is not {kind}, the only kind of file fastsigclr replaces there"
