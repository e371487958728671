"""A run that diverged: which parts hold weights that are not finite, and the one line that says
what diverged, where, what was kept, and which learning rate to lower (the encoder's --lr, or the
online probe's --probe-lr when it alone diverged: it trains on detached features)."""

from __future__ import annotations

import torch

from fastsigclr import rundir
from fastsigclr.config import FastSigCLRError, flag


def not_finite(parts: dict[str, torch.nn.Module]) -> list[str]:
    """The names of the parts holding a weight or buffer that is not finite (one synchronisation)."""
    flags = [
        torch.stack([t.isfinite().all() for t in m.state_dict().values() if t.is_floating_point()]).all()
        for m in parts.values()
    ]
    return [name for name, ok in zip(parts, torch.stack(flags).tolist(), strict=True) if not ok]


def diverged(run: rundir.RunDir, what: str, step: int, epoch: int, rate: str = "lr") -> FastSigCLRError:
    """The one line of a diverged run: what, where, and the learning rate ``rate`` to lower."""
    lr, option = getattr(run.cfg, rate), flag(rate)
    if (run.path / rundir.CHECKPOINT).exists():
        fix = (
            f"{run.path / rundir.CHECKPOINT} (epoch {epoch}) is kept. --resume keeps the run's {option}: "
            f"start a new run with another --out and a lower {option} than {lr:g} (e.g. {option} {lr / 2:g})"
        )
    else:
        fix = (
            f"no epoch finished: run the same command again with a lower {option} than {lr:g} "
            f"(e.g. {option} {lr / 2:g})"
        )
    return FastSigCLRError(f"training diverged: {what} at step {step} (epoch {epoch + 1}); {fix}")
