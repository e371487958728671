"""Files written together (``checkpoint.write_atomic_files``): all old or all new, whatever
interrupts the write."""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

import pytest

from fastsigclr import checkpoint as ckpt


def _pair(tmp_path: Path) -> dict[Path, bytes]:
    old = {tmp_path / "a.bin": b"old a", tmp_path / "b.bin": b"old b"}
    for path, data in old.items():
        path.write_bytes(data)
    return old


def _writes(data: dict[Path, bytes]):
    return {path: (lambda f, d=d: f.write(d)) for path, d in data.items()}


def _contents(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir())}


def test_ctrl_c_while_writing_leaves_every_old_file(tmp_path):
    old = _pair(tmp_path)

    def second(f):
        f.write(b"half of new b")
        os.kill(os.getpid(), signal.SIGINT)

    writes = {tmp_path / "a.bin": lambda f: f.write(b"new a"), tmp_path / "b.bin": second}
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_atomic_files(writes)
    assert _contents(tmp_path) == {p.name: d for p, d in old.items()}  # no temporary left either


def test_ctrl_c_between_the_renames_waits_for_the_second(tmp_path, monkeypatch):
    """The signal lands after the first rename: without ``held_signals`` its KeyboardInterrupt
    would leave a new a.bin beside the old b.bin."""
    _pair(tmp_path)
    handler = signal.getsignal(signal.SIGINT)
    real, renames = os.replace, []

    def replace(src, dst):
        real(src, dst)
        renames.append(Path(dst).name)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    new = {tmp_path / "a.bin": b"new a", tmp_path / "b.bin": b"new b"}
    with pytest.raises(KeyboardInterrupt):
        ckpt.write_atomic_files(_writes(new))
    assert renames == ["a.bin", "b.bin"]
    assert _contents(tmp_path) == {"a.bin": b"new a", "b.bin": b"new b"}
    assert signal.getsignal(signal.SIGINT) is handler


def test_sigterm_is_handed_to_its_previous_handler_after_the_renames(tmp_path, monkeypatch):
    _pair(tmp_path)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        real = os.replace

        def replace(src, dst):
            if not seen and Path(dst).name == "a.bin":
                os.kill(os.getpid(), signal.SIGTERM)
            assert not seen  # held back while any file is renamed
            real(src, dst)

        monkeypatch.setattr(ckpt.os, "replace", replace)
        ckpt.write_atomic_files(_writes({tmp_path / "a.bin": b"new a", tmp_path / "b.bin": b"new b"}))
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _contents(tmp_path) == {"a.bin": b"new a", "b.bin": b"new b"}


def test_a_failed_write_names_its_file_and_leaves_both(tmp_path):
    old = _pair(tmp_path)

    def full(f):
        raise OSError(28, "No space left on device")

    writes = {tmp_path / "a.bin": lambda f: f.write(b"new a"), tmp_path / "b.bin": full}
    with pytest.raises(ckpt.WriteError, match=r"no space left on device writing .*b\.bin; free space"):
        ckpt.write_atomic_files(writes)
    assert _contents(tmp_path) == {p.name: d for p, d in old.items()}


def test_a_handler_set_outside_python_is_left_alone(tmp_path, monkeypatch):
    """Python reads a handler that a C library set as None (getsignal, and signal.signal's return)
    and cannot set None back: holding such a signal would raise TypeError after the renames. It is
    left alone."""
    real_get, real_set, touched = signal.getsignal, signal.signal, []

    def fake_set(s, handler):
        if s != signal.SIGHUP:
            return real_set(s, handler)
        touched.append(handler)
        if handler is None:
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable object")
        return None

    monkeypatch.setattr(ckpt.signal, "getsignal", lambda s: None if s == signal.SIGHUP else real_get(s))
    monkeypatch.setattr(ckpt.signal, "signal", fake_set)
    ckpt.write_atomic_files(_writes({tmp_path / "a.bin": b"new a"}))
    assert (tmp_path / "a.bin").read_bytes() == b"new a"
    assert touched == []


def test_every_held_signal_acts_and_the_renames_are_fsynced_first(tmp_path, monkeypatch):
    """Ctrl-C and SIGTERM both land during the renames: the folder is fsynced, then SIGTERM's
    handler still runs although Ctrl-C's KeyboardInterrupt came first, and both handlers are back."""
    _pair(tmp_path)
    seen, synced = [], []

    def record(signum, _frame):
        seen.append(signum)

    before = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, record)
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst).name == "a.bin":
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    monkeypatch.setattr(ckpt, "_fsync_dir", lambda folder: synced.append((folder, list(seen))))
    try:
        with pytest.raises(KeyboardInterrupt):
            ckpt.write_atomic_files(_writes({tmp_path / "a.bin": b"new a", tmp_path / "b.bin": b"new b"}))
        assert synced == [(tmp_path, [])]  # fsynced before any held signal acted
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is before
        assert signal.getsignal(signal.SIGTERM) is record
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _contents(tmp_path) == {"a.bin": b"new a", "b.bin": b"new b"}


def test_a_folder_that_cannot_be_fsynced_after_the_renames_is_not_a_failed_write(tmp_path, monkeypatch):
    """The files are in place: the error is the fsync's own OSError, not "cannot write"."""
    _pair(tmp_path)

    def broken_sync(folder):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(ckpt, "_fsync_dir", broken_sync)
    with pytest.raises(OSError, match="Input/output error") as err:
        ckpt.write_atomic_files(_writes({tmp_path / "a.bin": b"new a", tmp_path / "b.bin": b"new b"}))
    assert not isinstance(err.value, ckpt.WriteError)
    assert _contents(tmp_path) == {"a.bin": b"new a", "b.bin": b"new b"}


def test_each_writer_has_its_own_partial_file_and_dead_writers_leave_none(tmp_path):
    """Two runs starting on a new dataset both wrote `.x.beton.partial`: one deleted the other's
    file or wrote into it, and both could fail (one saying the folder was not writable). Now each
    writer has `.x.beton.<host>.<pid>-<random>.partial` (two containers' writers may share a pid);
    one of this host's processes no longer running is removed (a killed writer's, maybe
    gigabytes), a running one's, another host's and another file's are left alone, and odd names
    are no error."""
    import os
    import subprocess
    import sys

    from fastsigclr.data.files import _host, own_partial

    target, host = tmp_path / "x.beton", _host()
    mine, again = own_partial(target), own_partial(target)
    assert mine.name.startswith(f".x.beton.{host}.{os.getpid()}-") and mine != again
    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                               text=True).stdout)  # fmt: skip
    dead = tmp_path / f".x.beton.{host}.{ended}-0123abcd.partial"
    kept = [
        tmp_path / f".x.beton.{host}.{os.getppid()}-0123abcd.partial",  # running
        tmp_path / f".x.beton.otherhost.{ended}-0123abcd.partial",  # its writer cannot be asked about
        tmp_path / f".y.beton.{host}.{ended}-0123abcd.partial",  # another file's
        tmp_path / f".x.beton.{host}.²3-0123abcd.partial",  # not a pid
        tmp_path / f".x.beton.{host}.{'9' * 30}-0123abcd.partial",  # past any pid
    ]
    for path in (dead, *kept):
        path.write_bytes(b"partial")
    own_partial(target)
    assert not dead.exists() and all(path.exists() for path in kept)


def test_only_a_regular_file_is_replaced(tmp_path):
    """A FIFO, a device node or a symbolic link at a path is refused before anything is written:
    ``os.replace`` put a regular file in its place (as root, ``--out /dev/null`` replaced
    /dev/null itself). A pair is written only when neither path is in the way."""
    (tmp_path / "target").write_bytes(b"the link's file")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "target", tmp_path / "link")
    (tmp_path / "folder").mkdir()
    kinds = {"fifo": "a FIFO (named pipe)", "link": "a symbolic link", "folder": "a folder"}
    if os.geteuid() == 0:  # a /dev/null of its own
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        kinds["null"] = "a character device"
    before = {p.name: os.lstat(p) for p in tmp_path.iterdir()}
    for name, what in kinds.items():
        message = (
            f"cannot write {tmp_path / name} (it is {what}, and fastsigclr replaces only regular files); "
        )
        with pytest.raises(ckpt.WriteError, match=re.escape(f"{message}fix")):
            ckpt.write_atomic(tmp_path / name, lambda f: f.write(b"new"), fix="fix")
        with pytest.raises(ckpt.WriteError, match=re.escape(message)):  # the second of a pair
            ckpt.write_atomic_files(_writes({tmp_path / "a.bin": b"new a", tmp_path / name: b"new"}))
    after = {p.name: os.lstat(p) for p in tmp_path.iterdir()}
    assert after.keys() == before.keys()  # no a.bin, no temporary
    assert all(after[n].st_mode == before[n].st_mode and after[n].st_ino == before[n].st_ino for n in after)
    assert (tmp_path / "target").read_bytes() == b"the link's file"


def test_a_path_that_cannot_be_looked_at_is_left_to_the_write(tmp_path, monkeypatch):
    """A folder without search permission: lstat's PermissionError escaped the check of what
    stands at the path as a traceback, where the write itself says it in one line (WriteError)."""
    from fastsigclr import filetype

    target = tmp_path / "locked" / "x.json"

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(filetype.os, "lstat", denied)
    assert filetype.not_a_file(target) is None
    if os.geteuid() != 0:  # root searches any folder
        monkeypatch.undo()
        target.parent.mkdir(mode=0o600)
        with pytest.raises(ckpt.WriteError, match="Permission denied"):
            ckpt.write_atomic(target, lambda f: f.write(b"{}"), fix="fix")
