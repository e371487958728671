"""What stands at a path that a command would write, when it is not a regular file: atomic
writes rename a new file over the path, which replaces a symbolic link, a device node (as root,
``--out /dev/null`` would replace /dev/null itself), a FIFO or a socket as readily as a file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

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
