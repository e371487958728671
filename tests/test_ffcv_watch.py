"""The watch over FFCV's writer workers (``fastsigclr.data.ffcv_watch``), without FFCV: a child
process that fails wakes the main thread out of a wait that would not end by itself; one that
ends well does not; a SIGUSR2 it did not send reaches the handler it replaced."""

import faulthandler
import multiprocessing
import os
import signal
import time
from types import SimpleNamespace

import pytest

from fastsigclr.data.ffcv_watch import WAKE, WorkerFailed, WorkerWatch


def _exit_with(code: int) -> None:
    os._exit(code)


def _child(code: int) -> multiprocessing.Process:
    return multiprocessing.get_context("fork").Process(target=_exit_with, args=(code,))


def test_a_failed_child_ends_a_blocking_wait():
    reader, _ = multiprocessing.get_context("fork").Pipe(duplex=False)
    faulthandler.dump_traceback_later(60, exit=True)  # a watch that fails to wake: the test ends
    started = time.monotonic()
    with pytest.raises(WorkerFailed), WorkerWatch() as watch:
        child = _child(3)
        child.start()
        reader.recv()  # a blocking read nothing will ever answer, as FFCV's queue.get()
    faulthandler.cancel_dump_traceback_later()
    assert watch.failed == "exit status 3" and time.monotonic() - started < 10
    assert signal.getsignal(WAKE) != watch._wake  # the handler it replaced is back


def test_a_killed_child_is_named_by_its_signal():
    with pytest.raises(WorkerFailed), WorkerWatch() as watch:
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        os.kill(child.pid, signal.SIGKILL)
        time.sleep(30)
    assert watch.failed == "killed by SIGKILL"
    assert "the machine may be short of memory" in str(watch.error("d.beton", ""))


def test_children_that_end_well_and_foreign_signals_pass():
    received = []
    previous = signal.signal(WAKE, lambda signum, frame: received.append(signum))
    try:
        with WorkerWatch() as watch:
            child = _child(0)
            child.start()
            child.join()
            signal.raise_signal(WAKE)  # someone else's SIGUSR2
            time.sleep(0.5)  # several looks of the watch
        assert watch.failed is None and received == [WAKE]
        assert signal.getsignal(WAKE) != watch._wake
    finally:
        signal.signal(WAKE, previous)


def test_a_wake_up_landing_as_the_watch_stops_is_dropped():
    """At the entry of __exit__ or stop (where a user's Ctrl-C may be being handled) the wake-up
    raises nothing; ``failed`` still tells of it. Anywhere else it raises."""
    for code in (WorkerWatch.stop.__code__, WorkerWatch.__exit__.__code__):
        watch = WorkerWatch()
        watch.failed, watch._sent, watch._armed = "exit status 1", True, True
        watch._wake(WAKE, SimpleNamespace(f_code=code))
        assert not watch._armed and watch.failed == "exit status 1"
    watch = WorkerWatch()
    watch.failed, watch._sent, watch._armed = "exit status 1", True, True
    with pytest.raises(WorkerFailed):
        watch._wake(WAKE, SimpleNamespace(f_code=_exit_with.__code__))
