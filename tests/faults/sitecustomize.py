"""Faults for the restart tests (tests/test_elastic.py), injected into the unchanged
``fastsigclr`` command: put this folder first on PYTHONPATH and set

- ``FSC_FAULT=step:RANK:STEP``: global rank RANK SIGKILLs itself right after step STEP;
- ``FSC_FAULT=checkpoint:EPOCH``: the writer of the checkpoint of epoch EPOCH SIGKILLs itself
  halfway through writing it (the temporary file holds half of its bytes, fsynced);
- either with ``:SIGNAL`` appended (``step:0:5:SIGTERM``): that signal instead of SIGKILL;
- ``FSC_FAULT_ONCE=FILE``: the fault fires once, in the first process that reaches it (it
  creates FILE first), so the run's restart, by torchrun or by hand, runs clean.

Python imports ``sitecustomize`` at start-up; without FSC_FAULT this does nothing.
"""

import os
import signal
from pathlib import Path

_FAULT = os.environ.get("FSC_FAULT", "")
_ONCE = Path(os.environ.get("FSC_FAULT_ONCE", "/nonexistent/fsc-fault-once"))


_SIGNAL = signal.SIGKILL


def _die() -> None:
    _ONCE.touch()
    os.kill(os.getpid(), _SIGNAL)


def _armed() -> bool:
    return not _ONCE.exists()


def _kill_at_step(rank: int, step: int) -> None:
    from fastsigclr import runlog

    write = runlog.RunLog.write

    def faulty(self, record, step_=None):
        write(self, record, step_)
        mine = int(os.environ.get("RANK", "0")) == rank
        if mine and record.get("kind") == "step" and record.get("step") == step and _armed():
            _die()

    runlog.RunLog.write = faulty


def _kill_in_checkpoint(epoch: int) -> None:
    import io

    import torch

    from fastsigclr import checkpoint

    save = checkpoint.save_atomic

    def half(data: bytes):
        def write(f) -> None:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()

        return write

    def faulty(obj, path, *args):
        if isinstance(obj, dict) and obj.get("epoch") == epoch and _armed():
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            checkpoint.write_atomic(Path(path), half(buffer.getvalue()))
        save(obj, path, *args)

    checkpoint.save_atomic = faulty


_PARTS = _FAULT.split(":")
if _PARTS[-1].startswith("SIG"):
    _SIGNAL = signal.Signals[_PARTS.pop()]
if _PARTS[0] == "step":
    _kill_at_step(*map(int, _PARTS[1:]))
elif _PARTS[0] == "checkpoint":
    _kill_in_checkpoint(int(_PARTS[1]))
