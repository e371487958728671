"""Faults over time: one training (CPU, one process) killed again and again, at moments drawn
from a fixed seed: SIGKILL during its steps (the first epoch among them) and halfway through its
checkpoint writes, SIGKILL or SIGTERM (a preemption notice: checkpoint at the next step, exit 75;
outside the epochs, exit 143) at arbitrary wall-clock moments, resumed after each kill with
the same command (``--resume auto``), ends bitwise as an uninterrupted run: the same per-step
records and the same final weights.

Step and checkpoint kills come from tests/faults/sitecustomize.py; the wall-clock ones are sent
from here, wherever the run happens to be (imports, data loading, a step, the kNN monitor)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from test_elastic import EPOCHS, STEPS_PER_EPOCH, assert_same_run, fault_env, one_process, train_args

from fastsigclr.preempt import PREEMPTED_EXIT, Terminated

SEED = 20
STEP_KILLS = 7  # at least two of them in the first epoch
CHECKPOINT_KILLS = 4
CLOCK_KILLS = 3


def plan(rng: random.Random) -> list[tuple[float, str, signal.Signals]]:
    """(position in the run, FSC_FAULT, signal), in the order the run reaches them: step S sits at
    S, the checkpoint of epoch E just after its last step (E·steps + 0.5)."""
    first = rng.sample(range(1, STEPS_PER_EPOCH + 1), 2)
    later = rng.sample(sorted(set(range(1, EPOCHS * STEPS_PER_EPOCH + 1)) - set(first)), STEP_KILLS - 2)
    faults = [(float(s), f"step:0:{s}") for s in first + later]
    epochs = [*range(1, EPOCHS + 1), *rng.choices(range(1, EPOCHS + 1), k=CHECKPOINT_KILLS - EPOCHS)]
    faults += [(e * STEPS_PER_EPOCH + 0.5, f"checkpoint:{e}") for e in epochs]
    # SIGKILL at these planned moments: SIGTERM is a preemption notice (the trainer checkpoints at
    # the next step and exits 75), which would move the run past the next planned moment; SIGTERM
    # comes at the wall-clock moments below.
    return [(pos, fault, signal.SIGKILL) for pos, fault in sorted(faults)]


def killed_at_a_clock_moment(args: list[str], delay: float, sig: signal.Signals) -> int:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastsigclr", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    return proc.wait(timeout=300)


@pytest.mark.slow
def test_a_training_killed_at_many_moments_ends_as_if_uninterrupted(cifar10_dir, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    start = time.monotonic()
    done = one_process(train_args(cifar10_dir, whole))
    assert done.returncode == 0, done.stderr[-3000:]
    one_run_s = time.monotonic() - start
    rng = random.Random(SEED)
    faults = plan(rng)
    assert sum(pos <= STEPS_PER_EPOCH for pos, _, _ in faults) >= 2  # some in the first epoch
    kills = []
    for n, (_, fault, sig) in enumerate(faults):
        out = one_process(
            train_args(cifar10_dir, broken), fault_env(f"{fault}:{sig.name}", tmp_path / f"f{n}")
        )
        state = sorted(p.name for p in broken.rglob("*")), (broken / "metrics.jsonl").read_text()[-2000:]
        assert out.returncode == -sig, (fault, sig.name, out.returncode, out.stderr[-3000:], state)
        kills.append(f"{fault} {sig.name}")
    # Wall-clock moments, anywhere in a run's life; a run that ends first just ends.
    for _ in range(CLOCK_KILLS):
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        code = killed_at_a_clock_moment(
            train_args(cifar10_dir, broken), rng.uniform(0.2, 1.0) * one_run_s, sig
        )
        # SIGTERM outside the epochs (start-up, the summary) stops the command with status 143
        assert code in (0, -sig, PREEMPTED_EXIT, Terminated.exit_status), code
        kills += [f"clock {sig.name}"] if code != 0 else []
    assert len(kills) >= 10, kills
    last = one_process(train_args(cifar10_dir, broken))
    assert last.returncode == 0, last.stderr[-3000:]
    assert not list((broken / "checkpoints").glob(".*.tmp"))
    assert_same_run(broken, whole)
