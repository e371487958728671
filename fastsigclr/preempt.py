"""Long epochs: checkpoints inside an epoch (``--checkpoint-every``) and preemption.

Slurm sends SIGTERM (or, with ``--signal``, SIGUSR1) some time before it kills a job, and spot
instances do the same; ``Preemption`` turns either signal into a flag the trainer reads at the
next step boundary, where it writes a mid-epoch checkpoint and exits with ``PREEMPTED_EXIT``, so
the requeued command (``--resume auto``) continues from that step. Outside the trainer's steps
(loading data, evaluating, a sweep between runs) SIGTERM raises ``Terminated`` instead, so the
command says what was stopped and how to go on, as after Ctrl-C, and exits 143."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

# EX_TEMPFAIL (sysexits.h): "a temporary failure; try again", the status of a preempted run.
PREEMPTED_EXIT = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def parse_interval(text: str) -> tuple[float, str]:
    """``"500"`` → (500, "steps"); ``"30m"`` or ``"30min"`` → (30, "minutes"). ValueError otherwise."""
    raw = text.strip().lower()
    unit = "minutes" if raw.endswith(("m", "min")) else "steps"
    number = raw.removesuffix("min").removesuffix("m")
    try:
        value = float(number) if unit == "minutes" else int(number)
    except ValueError:
        value = 0
    if not (value > 0 and math.isfinite(value)):  # "infm" meant never, which is leaving it unset
        raise ValueError(
            f"--checkpoint-every takes N steps ('500') or N minutes ('30m'), got {text!r}; leave it out to "
            f"checkpoint only at the end of each epoch"
        )
    return value, unit


class Interval:
    """When the next mid-epoch checkpoint is due: every N steps, or after N minutes."""

    def __init__(self, text: str | None) -> None:
        self.every = parse_interval(text) if text else None
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.every is None:
            return False
        value, unit = self.every
        if unit == "steps":
            return step % value == 0
        return time.monotonic() - self.last >= 60 * value

    def reset(self) -> None:
        self.last = time.monotonic()


def restore_handler(signum: int, previous: Any) -> None:
    """Put back the handler that ``signal.signal`` returned. It returns None for a handler set
    outside Python (a C library's), which cannot be set again (TypeError): once replaced it is
    gone, and the default action is the nearest."""
    signal.signal(signum, signal.SIG_DFL if previous is None else previous)


class Preemption:
    """While open, SIGTERM and SIGUSR1 only record themselves (``signal``); the previous handlers
    come back on exit. Outside the main thread (no handlers can be set there) it records nothing."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _record(self, signum: int, frame: Any) -> None:
        self.signal = signum  # nothing else here: a handler may interrupt a print or a write

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            restore_handler(s, handler)
        self._previous = {}


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the trainer's steps. A KeyboardInterrupt, so that everything which says
    how to go on after Ctrl-C (the run's "was interrupted" note, the sweep's) says it for this too."""

    exit_status = 128 + signal.SIGTERM  # as a shell reports a process SIGTERM ended


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _default_in_child() -> None:
    """In a forked child (a data loader's worker), SIGTERM's default action again, at once: with
    the parent's handler, a child stuck in C code (a lock a thread of the parent held at the
    fork) would never return to Python to act on it, and would outlive its ``terminate()``."""
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_default_in_child)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Within it, SIGTERM raises ``Terminated`` in this process; a forked child (a data loader's
    worker) keeps the default action. It does nothing for one rank of several (torchrun's, or
    WORLD_SIZE set by hand): there SIGTERM is how the agent stops the other ranks after one fails,
    and a rank waiting inside a collective (or for its peers to join, up to --dist-timeout) would
    not reach Python to raise it until that call returned. Nor where SIGTERM is ignored (SIG_IGN,
    inherited from the parent), or off the main thread (no handler can be set there)."""
    from fastsigclr.config import several_ranks

    if (
        several_ranks()
        or "TORCHELASTIC_RUN_ID" in os.environ
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    ):
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        restore_handler(signal.SIGTERM, previous)
