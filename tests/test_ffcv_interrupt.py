"""Ctrl-C during an FFCV write: FFCV's writer starts worker processes (not daemons) fed by queues,
and an interrupted write used to leave the interpreter's exit waiting on them forever. The write
in a child process is interrupted with SIGINT (to its pid only, as a `kill -INT` would be) while
its workers are writing; it must end promptly and leave neither the partial file nor its
shared memory behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("ffcv")

# The child's writer takes about 1 ms per image on each of its two workers (a sleep stands in for
# slow decoding), so 20,000 images keep it writing for about 10 s: the interrupt lands mid-write.
CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fastsigclr.data import ffcv_loader

    decode = ffcv_loader._Indexed.__getitem__
    def slow(self, i):
        time.sleep(0.001)
        return decode(self, i)
    ffcv_loader._Indexed.__getitem__ = slow
    images = np.zeros((20000, 8, 8, 3), np.uint8)
    ffcv_loader.write_beton(sys.argv[1], images, np.zeros(20000, np.int64), num_workers=2, progress=False)
    print("finished")
    """
)


def _shared_memory() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.iterdir()} if shm.is_dir() else set()


@pytest.mark.slow
def test_an_interrupted_ffcv_write_ends_and_cleans_up(tmp_path):
    beton = tmp_path / "d.beton"
    partial = tmp_path / ".d.beton.partial"
    before = _shared_memory()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(beton)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120  # importing FFCV compiles numba code first
        while not partial.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert partial.exists(), "the write never started"
        time.sleep(1.0)  # the workers are writing
        assert child.poll() is None, "the write ended before the interrupt: slow the child down"
        os.kill(child.pid, signal.SIGINT)
        try:
            _, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the interrupted write did not end within 30 s (its workers were left running)")
    finally:
        if child.poll() is None:
            subprocess.run(["pkill", "-KILL", "-P", str(child.pid)], check=False)
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGINT and "KeyboardInterrupt" in err, err[-2000:]
    assert not partial.exists() and not beton.exists()
    assert not {n for n in _shared_memory() - before if n.startswith("psm_")}


# A worker that fails: its image raises while decoding (a file changed after it was checked), or
# the worker is killed (as by the kernel's out-of-memory killer).
FAILING = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np
    from fastsigclr.config import FastSigCLRError
    from fastsigclr.data import ffcv_loader
    from fastsigclr.data.samples import SampleIndex

    decode = SampleIndex.decode
    def failing(self, i):
        if i == 700:
            if sys.argv[2] == "raise":
                raise ValueError("not a PNG")
            os.kill(os.getpid(), signal.SIGKILL)
        return decode(self, i)
    SampleIndex.decode = failing
    images = np.zeros((2000, 8, 8, 3), np.uint8)
    try:
        ffcv_loader.write_beton(sys.argv[1], images, np.zeros(2000, np.int64), num_workers=2, progress=False)
    except FastSigCLRError as err:
        print(err)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "said"),
    [
        (
            "raise",
            "ended (exit status 1) on image 700: ValueError: not a PNG; repair or remove that image and "
            "write again",
        ),
        (
            "kill",
            "ended (killed by SIGKILL); write again (a killed worker: the machine may be short of memory)",
        ),
    ],
)
def test_a_failing_ffcv_worker_ends_the_write_with_one_line(tmp_path, how, said):
    """FFCV's writer waits for its sample count and never looks at its workers: one that died left
    it waiting forever. The write ends with one line naming the image (or the kill), and leaves
    neither the partial file nor its shared memory behind."""
    before = _shared_memory()
    try:
        child = subprocess.run(
            [sys.executable, "-c", FAILING, str(tmp_path / "d.beton"), how],
            capture_output=True,
            text=True,
            timeout=180,  # importing FFCV compiles numba code first
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the write with a failed worker did not end (FFCV kept waiting for it)")
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == f"writing {tmp_path / 'd.beton'} failed: a worker of FFCV's writer {said}"
    assert list(tmp_path.iterdir()) == []
    assert not {n for n in _shared_memory() - before if n.startswith("psm_")}
