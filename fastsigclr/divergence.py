"""A run that diverged: which parts hold weights that are not finite, and the one line that says
what diverged, where, what was kept, and which learning rate to lower (the encoder's --lr, or the
online probe's --probe-lr when it alone diverged: it trains on detached features)."""

from __future__ import annotations

import math
from typing import Any

import torch

from fastsigclr import rundir
from fastsigclr.config import FastSigCLRError, flag


def not_finite(parts: dict[str, torch.nn.Module]) -> list[str]:
    """The names of the parts holding a weight or buffer that is not finite (one synchronisation;
    a part without floating-point tensors has none)."""
    checks = {
        name: [t.isfinite().all() for t in m.state_dict().values() if t.is_floating_point()]
        for name, m in parts.items()
    }
    named = [(name, torch.stack(flags).all()) for name, flags in checks.items() if flags]
    good = torch.stack([flag for _, flag in named]).tolist() if named else []
    return [name for (name, _), ok in zip(named, good, strict=True) if not ok]


def diverged(run: rundir.RunDir, what: str, step: int, epoch: int, rate: str = "lr") -> FastSigCLRError:
    """The one line of a diverged run: what, where, and the learning rate ``rate`` to lower."""
    lr, option = getattr(run.cfg, rate), flag(rate)
    if (run.path / rundir.CHECKPOINT).exists():
        fix = (
            f"{run.path / rundir.CHECKPOINT} ({run.kept or f'epoch {epoch}'}) is kept. --resume keeps the "
            f"run's {option}: start a new run with another --out and a lower {option} than {lr:g} (e.g. "
            f"{option} {lr / 2:g})"
        )
    else:
        fix = (
            f"no epoch finished: run the same command again with a lower {option} than {lr:g} "
            f"(e.g. {option} {lr / 2:g})"
        )
    return FastSigCLRError(f"training diverged: {what} at step {step} (epoch {epoch + 1}); {fix}")


def check(
    run: rundir.RunDir, setup: Any, mean_loss: float | None, loss_is: str, step: int, epoch: int
) -> None:
    """Before a checkpoint: raise ``diverged`` when the loss so far (None: none computed yet) or any
    weight is not finite (the loss of a step is computed before its update, so the weights can be
    what diverged first); the probe alone names --probe-lr."""
    broken = not_finite({"model": setup.model, "loss": setup.criterion, "probe": setup.probe})
    loss_ok = mean_loss is None or math.isfinite(mean_loss)
    if loss_ok and not broken:
        return
    if loss_ok and broken == ["probe"]:
        what = "the online linear probe's weights are not finite (the encoder's are)"
        raise diverged(run, what, step, epoch, "probe_lr")
    what = f"the {', '.join(broken)} weights are not finite" if loss_ok else f"{loss_is} is {mean_loss}"
    raise diverged(run, what, step, epoch)
