"""The watch over FFCV's writer workers (``fastsigclr.data.ffcv_watch``), without FFCV: a child
process that fails wakes the main thread out of a wait that would not end by itself; one that
ends well does not; a SIGUSR2 it did not send reaches the handler it replaced."""

import multiprocessing
import os
import signal
import time

import pytest

from fastsigclr.data.ffcv_watch import WAKE, WorkerFailed, WorkerWatch


def _exit_with(code: int) -> None:
    os._exit(code)


def _child(code: int) -> multiprocessing.Process:
    return multiprocessing.get_context("fork").Process(target=_exit_with, args=(code,))


def test_a_failed_child_ends_a_blocking_wait():
    reader, _ = multiprocessing.get_context("fork").Pipe(duplex=False)
    started = time.monotonic()
    with pytest.raises(WorkerFailed), WorkerWatch() as watch:
        child = _child(3)
        child.start()
        reader.recv()  # a blocking read nothing will ever answer, as FFCV's queue.get()
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
