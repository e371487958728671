"""A watch over the worker processes of FFCV's writer.

FFCV's writer starts its workers, then waits until they have counted every sample and handed over
their allocations; it never looks at the workers themselves. A worker that dies (an image that
fails to decode, an out-of-memory kill, a crash) leaves that wait running forever, in a sleep loop
or a blocking queue read. ``WorkerWatch`` is a thread that looks at the processes started after it
every 0.1 s and, when one has ended with an error, wakes the main thread with a signal of its own
(SIGUSR2, whose handler it installs for the write): the handler raises ``WorkerFailed`` there,
which ends the wait wherever it is. A signal of its own, not SIGINT, so that a user's Ctrl-C (which
also ends the workers) stays a KeyboardInterrupt, and the watch works where SIGINT is ignored (a
job started with ``&`` from a script); not SIGUSR1, which a scheduler may send as its notice of
preemption (``fastsigclr.preempt``). A SIGUSR2 the watch did not send goes on to the handler it
replaced (or its default action).

The processes are read from multiprocessing's own record of the children this process started
(the start method does not matter: fork, spawn and forkserver alike); a child's exit status is
read without waiting. A signal handler can be set only on the main thread: a write from another
thread goes unwatched, as FFCV's own would.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fastsigclr.config import FastSigCLRError
from fastsigclr.preempt import restore_handler

WAKE = signal.SIGUSR2
POLL_SECONDS = 0.1


class WorkerFailed(BaseException):
    """Raised on the main thread, inside FFCV's wait, when a worker of its writer has failed (a
    BaseException: FFCV's and tqdm's ``except Exception`` must not swallow it)."""


def _processes() -> set[Any]:
    """The processes this one started and has not joined yet (multiprocessing's record, which keeps
    a child that has already ended; the public ``active_children`` reaps and drops those)."""
    children = getattr(multiprocessing.process, "_children", None)
    return set(children) if children is not None else set(multiprocessing.active_children())


def _ended(code: int) -> str:
    """How a process with exit code ``code`` (multiprocessing's: negative for a signal) ended."""
    if code > 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


class WorkerWatch(threading.Thread):
    """As a context manager around FFCV's write: watches the processes started inside it (see the
    module docstring). ``failed`` says how the first failed worker ended (None: none did)."""

    def __init__(self) -> None:
        super().__init__(name="ffcv-worker-watch", daemon=True)
        self.before = _processes()
        self.failed: str | None = None
        self._lock = threading.Lock()  # one check at a time, and stop() never during one
        self._stopped = False
        self._armed = False  # a wake-up is on its way and not yet raised
        self._sent = self._delivered = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> WorkerWatch:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(WAKE, self._wake)
            self._installed = True
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wake(self, signum: int, frame: Any) -> None:
        if not self._sent:  # someone else's: as if the watch were not there
            if callable(self._previous):
                self._previous(signum, frame)
            elif self._previous == signal.SIG_DFL:  # the default action (SIGUSR2's: end the process)
                signal.signal(WAKE, signal.SIG_DFL)
                signal.raise_signal(WAKE)
            return  # ignored, or a handler set outside Python (None): left alone
        self._delivered = True
        # Landing at the entry of __exit__ or stop (before stop disarms): dropped, so that it can
        # never replace the exception being handled (a user's Ctrl-C); ``failed`` still tells of it.
        stopping = frame is not None and frame.f_code in _STOPPING
        if self._armed and not stopping:
            self._armed = False
            raise WorkerFailed(self.failed)
        self._armed = False

    def run(self) -> None:
        seen: set[Any] = set()
        while True:
            time.sleep(POLL_SECONDS)
            with self._lock:
                if self._stopped:
                    return
                seen |= _processes() - self.before
                codes = [p.exitcode for p in seen]
                code = next((c for c in codes if c is not None and c != 0), None)
                if code is None:
                    continue
                self.failed, self._armed, self._sent = _ended(code), True, True
                signal.pthread_kill(threading.main_thread().ident, WAKE)
                return

    def stop(self) -> None:
        """Stop watching and restore the signal's handler. Never raises ``WorkerFailed``: a wake-up
        sent meanwhile is received here and dropped (``failed`` still tells of it)."""
        while True:
            try:
                self._armed = False
                with self._lock:
                    self._stopped = True
                if self.is_alive():
                    self.join()
                deadline = time.monotonic() + 5.0
                while self._sent and not self._delivered and time.monotonic() < deadline:
                    time.sleep(0.01)  # the handler runs between these sleeps
                if self._sent and not self._delivered:  # blocked: later SIGUSR2s are someone else's
                    self._sent = False
                break
            except WorkerFailed:
                continue
        if self._installed and (self._delivered or not self._sent):  # else it stays, harmless, disarmed
            restore_handler(WAKE, self._previous)
            self._installed = False

    def error(self, path: Path, said: str) -> FastSigCLRError:
        """The one line of a write a worker failed; ``said``: its image and error (may be empty)."""
        if said:
            how = f" on {said}; repair or remove that image and write again"
        elif self.failed == "killed by SIGKILL":
            how = "; write again (a killed worker: the machine may be short of memory)"
        elif self.failed is not None and self.failed.startswith("killed"):
            how = "; it crashed: write again, and check the images and the FFCV install if it recurs"
        else:
            how = "; its error is printed above (without --no-progress, which silences it)"
        return FastSigCLRError(f"writing {path} failed: a worker of FFCV's writer ended ({self.failed}){how}")


_STOPPING = (WorkerWatch.__exit__.__code__, WorkerWatch.stop.__code__)
