"""How fast a run goes: img/s within the epoch, the whole run's time left, and the notice that a
CPU is about to run a GPU-sized job. Wall-clock only: nothing here synchronises a GPU."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

SMALL_CPU_RUN = "--limit-train 5000 --epochs 10 --width 16 --batch-size 128"
# A CPU job of more images than this gets the notice: even ResNet-18 width 16, the lightest model
# we time, trains at 132 img/s on the 2-core CI machine (benchmarks/results/train-cpu.json), so
# 1e6 images is over 2 hours; the default CIFAR job (1000 × 50,000 images, width 64) is 5e7.
CPU_NOTICE_IMAGES = 1_000_000
# bf16 on AMX against fp32: ResNet-18's step at width 64, batch 64, on a 2-core Xeon took 0.86 s
# against 1.99 s (benchmarks/results/train-precision/); with oneDNN capped below AMX, bf16 took 25×
# fp32's time, so the hint is given only where the units are.
AMX_HINT = "--precision bf16 trained ResNet-18 2.3× faster than fp32 on one (`bench train --precision`)"
# Steps timed for the refined estimate, after the first one, which carries one-time costs
# (allocations, first-touch of the dataset). A first estimate comes from step 1 alone: on a slow CPU
# four steps of the default job take minutes, and a user deciding whether to wait needs it sooner.
ESTIMATE_STEPS = 3


def format_duration(seconds: float) -> str:
    """12s, 7m05s, 3h05m, 4.2 days."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{seconds / 86400:.1f} days"


def cpu_notice(
    device: torch.device, images: int, epochs: int, arch: str, width: int, precision: str = "auto"
) -> str | None:
    """What a CPU run of ``epochs`` more epochs of ``images`` images says at its start, or None
    (a GPU, or a job small enough for a CPU). On a CPU with bf16 matrix units (AMX) an fp32 run
    is told of --precision bf16."""
    if device.type != "cpu" or images * epochs <= CPU_NOTICE_IMAGES:
        return None
    hint = ""
    if precision != "bf16" and bf16_matrix_units():
        hint = f" This CPU has bf16 matrix units (AMX): {AMX_HINT}."
    return (
        f"fastsigclr: note: {epochs} epochs of {images:,} images ({arch}, width {width}) on the CPU is "
        f"a GPU-sized job; its length is estimated after its first step, and again after step "
        f"{ESTIMATE_STEPS + 1}. For a short CPU run: {SMALL_CPU_RUN}.{hint}"
    )


def bf16_matrix_units() -> bool:
    """Whether oneDNN may run bf16 convolutions and matmuls on AMX tiles here (Intel Xeon from
    Sapphire Rapids on); ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) below AMX turns
    them off, and so this."""
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    capped = isa != "ALL" and "AMX" not in isa
    return not capped and torch.cpu._is_amx_tile_supported() and torch.cpu._is_avx512_bf16_supported()


class Pace:
    """The clock of one session of a run: ``step()`` after every step, ``begin_epoch()`` at each
    epoch's start. With ``estimate``, ``step()`` returns a line with the estimated length of the
    whole run twice: after step 1 (its time includes one-time costs: an upper bound), and refined
    from steps 2 to ``ESTIMATE_STEPS + 1``."""

    def __init__(
        self,
        batch_size: int,
        steps_left: int,
        estimate: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.batch_size = batch_size
        self.steps_left = steps_left  # in this session, from its start to the run's end
        self.estimate = estimate
        self.clock = clock
        self.start = clock()
        self.steps = 0  # this session
        self.epoch_start = self.start
        self.epoch_steps = 0
        self._first_step_end: float | None = None

    def begin_epoch(self) -> None:
        self.epoch_start = self.clock()
        self.epoch_steps = 0

    def step(self) -> str | None:
        self.steps += 1
        self.epoch_steps += 1
        if not self.estimate:
            return None
        if self.steps == 1:
            self._first_step_end = self.clock()
            first = self._first_step_end - self.epoch_start
            return self._line(first, "step 1, with its one-time costs: at most", "; refined after step 4")
        if self.steps < ESTIMATE_STEPS + 1 or self._first_step_end is None:
            return None
        self.estimate = False
        per_step = (self.clock() - self._first_step_end) / ESTIMATE_STEPS
        return self._line(per_step, f"steps 2-{ESTIMATE_STEPS + 1}", "")

    def _line(self, per_step: float, measured: str, later: str) -> str:
        left = self.steps_left - self.steps
        return (
            f"fastsigclr: estimate: {self.batch_size / max(per_step, 1e-9):.1f} img/s on this CPU "
            f"({measured}), so the {left:,} steps left take about {format_duration(per_step * left)}"
            f"{later}. For a short CPU run: {SMALL_CPU_RUN}"
        )

    def img_per_s(self) -> float:
        """This epoch's images per second so far."""
        return self.batch_size * self.epoch_steps / max(self.clock() - self.epoch_start, 1e-9)

    def run_left(self) -> float:
        """Seconds to the run's end at this session's pace so far (kNN monitor included)."""
        elapsed = self.clock() - self.start
        return elapsed / max(self.steps, 1) * (self.steps_left - self.steps)
