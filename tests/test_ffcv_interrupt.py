"""FFCV writes that do not end as planned. Ctrl-C: FFCV's writer starts worker processes (not
daemons) fed by queues, and an interrupted write used to leave the interpreter's exit waiting on
them forever; the write in a child process is interrupted with SIGINT (to its pid, as `kill -INT`,
or to its group, as a terminal's Ctrl-C) while its workers are writing. A failed worker: FFCV
waited for it forever. Either must end promptly and leave neither the partial file nor its
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

# Prepended to each child: it logs the name of every shared-memory block it makes to $SHM_LOG, so
# that the test looks only at its child's blocks. A listing of /dev/shm before and after also took
# the block of another test's FFCV write (a parallel pytest worker) for a leak.
SHM_RECORD = textwrap.dedent(
    """
    import os
    from multiprocessing import shared_memory

    _made = shared_memory.SharedMemory.__init__

    def _record(self, *args, **kwargs):
        _made(self, *args, **kwargs)
        with open(os.environ["SHM_LOG"], "a") as log:
            log.write(self.name.lstrip("/") + "\\n")

    shared_memory.SharedMemory.__init__ = _record
    """
)

# The child's writer takes about 1 ms per image on each of its two workers (a sleep stands in for
# slow decoding), so 20,000 images keep it writing for about 10 s: the interrupt lands mid-write.
CHILD = SHM_RECORD + textwrap.dedent(
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


# What Python's resource tracker says as it removes a block its maker left (at the maker's exit:
# /dev/shm is clean by then, so a leak shows only here).
LEAKED = "leaked shared_memory objects"


def _left_behind(log: Path) -> set[str]:
    """The shared-memory blocks the child logged (``SHM_RECORD``) that are still there; it must
    have made one (FFCV's writer keeps its metadata in one), or the check would be empty."""
    made = set(log.read_text().split()) if log.exists() else set()
    assert made, "the child made no shared memory: FFCV's writer no longer keeps its metadata in it"
    return {name for name in made if (Path("/dev/shm") / name).exists()}


@pytest.mark.slow
@pytest.mark.parametrize("to", ["pid", "group"])
def test_an_interrupted_ffcv_write_ends_and_cleans_up(tmp_path, to):
    """SIGINT to the writer alone, or to its process group as a terminal's Ctrl-C sends it (the
    workers end too, which the worker watch must not report as a failed worker)."""
    beton = tmp_path / "d.beton"
    env = {**os.environ, "SHM_LOG": str(tmp_path / "shm.log")}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(beton)],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )

    def partial() -> Path | None:  # the writer's own temporary file: .d.beton.<host>.<pid>-<random>.partial
        return next(tmp_path.glob(f".d.beton.*.{child.pid}-*.partial"), None)

    try:
        deadline = time.monotonic() + 120  # importing FFCV compiles numba code first
        while partial() is None and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert partial() is not None, "the write never started"
        time.sleep(1.0)  # the workers are writing
        assert child.poll() is None, "the write ended before the interrupt: slow the child down"
        os.kill(child.pid, signal.SIGINT) if to == "pid" else os.killpg(child.pid, signal.SIGINT)
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
    assert partial() is None and not beton.exists()
    assert not _left_behind(tmp_path / "shm.log") and LEAKED not in err, err[-2000:]


# A worker that fails (the FAIL variable says how): its image raises while decoding (a file changed
# after it was checked), it is killed (as by the out-of-memory killer) or crashes, all at image 700
# of 2,000; or ("end") it fails after its last sample was counted, as its pages are flushed to a
# full disk, while the writer waits in a blocking queue read. The failing samples are a class of a
# module of their own, so that workers started by spawn or forkserver (which unpickle the dataset,
# not inherit it) fail too.
FAILING_MODULE = textwrap.dedent(
    """
    import multiprocessing, os, signal, time
    import ffcv.writer
    from fastsigclr.data.samples import SampleIndex

    FAIL = os.environ["FAIL"]

    class FailingSamples(SampleIndex):
        def decode(self, i):
            if i == 700 and FAIL == "raise":
                raise ValueError("not a PNG")
            if i == 700 and FAIL in ("kill", "crash"):
                os.kill(os.getpid(), signal.SIGKILL if FAIL == "kill" else signal.SIGSEGV)
            return super().decode(i)

    flush = ffcv.writer.MemoryAllocator.__exit__

    def full_disk(self, *exc):
        flush(self, *exc)
        if FAIL == "end" and multiprocessing.parent_process() is not None:
            time.sleep(1.0)  # the writer has counted every sample and waits for the allocations
            raise OSError(28, "No space left on device")

    ffcv.writer.MemoryAllocator.__exit__ = full_disk
    """
)
FAILING = SHM_RECORD + textwrap.dedent(
    """
    import multiprocessing, sys
    import numpy as np
    from failing_samples import FailingSamples
    from fastsigclr.config import FastSigCLRError
    from fastsigclr.data import ffcv_loader

    multiprocessing.set_start_method(sys.argv[2], force=True)
    samples = FailingSamples.from_array(np.zeros((2000, 8, 8, 3), np.uint8), np.zeros(2000, np.int64))
    samples.__class__ = FailingSamples
    try:
        ffcv_loader.write_beton(sys.argv[1], samples, num_workers=2, progress=False)
    except FastSigCLRError as err:
        print(err)
    """
)
IMAGE_700 = "on image 700: ValueError: not a PNG; repair or remove that image and write again"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fail", "start", "said"),
    [
        ("raise", "forkserver", f"ended (exit status 1) {IMAGE_700}"),
        ("kill", "fork", "ended (killed by SIGKILL); write again (a killed worker: the machine may be short"),
        ("crash", "spawn", "ended (killed by SIGSEGV); it crashed: write again, and check the images"),
        ("end", "fork", "ended (exit status 1); its error is printed above (without --no-progress"),
    ],
)
def test_a_failing_ffcv_worker_ends_the_write_with_one_line(tmp_path, fail, start, said):
    """FFCV's writer waits for its workers' count of samples, then for their allocations, and never
    looks at the workers: one that died left it waiting forever. The write ends with one line
    naming the image (or the kill, the crash), under each start method and with SIGINT ignored (a
    job started with & from a script), and leaves neither the partial file nor its shared memory."""
    (tmp_path / "mod").mkdir()
    (tmp_path / "mod" / "failing_samples.py").write_text(FAILING_MODULE)
    env = {
        **os.environ,
        "FAIL": fail,
        "PYTHONPATH": str(tmp_path / "mod"),
        "SHM_LOG": str(tmp_path / "shm.log"),
    }
    out = tmp_path / "out"
    out.mkdir()
    try:
        child = subprocess.run(
            [sys.executable, "-c", FAILING, str(out / "d.beton"), start],
            capture_output=True,
            text=True,
            env=env,
            timeout=180,  # importing FFCV compiles numba code first
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the write with a failed worker did not end (FFCV kept waiting for it)")
    assert child.returncode == 0, child.stderr[-2000:]
    line = child.stdout.strip()
    assert line.startswith(f"writing {out / 'd.beton'} failed: a worker of FFCV's writer {said}"), line
    assert list(out.iterdir()) == []
    assert not _left_behind(tmp_path / "shm.log") and LEAKED not in child.stderr, child.stderr[-2000:]
