"""The lock of a run directory: an exclusive ``fcntl.flock`` on ``run.lock`` inside it, held by
rank 0 for the whole run (two trainings on one directory would interleave metrics.jsonl), with
the holder's pid and host written in it for the message of the one refused."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from fastsigclr import checkpoint as ckpt
from fastsigclr import cluster
from fastsigclr.config import FastSigCLRError
from fastsigclr.runconfig import TrainConfig

LOCK = "run.lock"


def lock_wait(cfg: TrainConfig) -> float:
    """Seconds rank 0 waits for the run's lock: none, unless torchrun may restart the job. Then
    the holder can be a worker of the attempt it replaces, still dying: torchrun starts the new
    workers once the old ones have exited, or after 30 s + 30 s it gives up waiting for one (stuck
    in the kernel, e.g. on a network filesystem). Half of --dist-timeout: the other ranks wait
    at most --dist-timeout for rank 0's decision, and must still hear an error in time."""
    return cfg.dist_timeout / 2 if cluster.max_restarts() > 0 else 0.0


def lock_dir(path: Path, wait_s: float = 0.0, name: str = LOCK, user: str = "training") -> int:
    """An exclusive flock on ``path/name``, holding this process's pid; when another process
    has it, waits up to ``wait_s`` for it to end, then raises naming the holder (another
    ``user``). The lock ends with the descriptor (exit, crash, kill)."""
    file = path / name
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fd = ckpt.open_nofollow(file, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:  # not the lock this writes: someone's folder, kept
            raise FastSigCLRError(f"{file} is a folder: move it out of {path} and run again") from None
        except OSError as err:
            raise FastSigCLRError(
                f"--out {path} is not writable ({err.strerror}); choose another --out"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process"
            os.close(fd)
            if time.monotonic() < deadline:
                if not waiting:
                    note = f"is locked by {holder}: waiting up to {wait_s:g} s for it to end (a restart)"
                    print(f"fastsigclr: {path} {note}", file=sys.stderr)
                    waiting = True
                time.sleep(0.2)
                continue
            waited = f" for {wait_s:g} s" if wait_s else ""
            raise FastSigCLRError(
                f"{path} is in use by another {user} ({holder}){waited}; wait for it to end, or "
                f"choose another --out"
            ) from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(file)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file as we locked it: lock the current one
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd
