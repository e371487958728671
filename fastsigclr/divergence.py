"""A run that diverged: which parts hold weights that are not finite, and the one line that says
what diverged, where, what was kept, and what to change: usually a learning rate to lower (the
encoder's --lr, or the online probe's --probe-lr when it alone diverged: it trains on detached
features), else --weight-decay or the loss's settings when the learning rate cannot be the cause."""

from __future__ import annotations

import math
from typing import Any

import torch

from fastsigclr import rundir
from fastsigclr.config import FastSigCLRError, flag
from fastsigclr.optim import sgd_decay_limit
from fastsigclr.runconfig import loss_params


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


def _change(run: rundir.RunDir, rate: str) -> str:
    """What to run again with: a lower ``rate``, unless it cannot be what diverged. At --lr 0 no
    weight moves, so the loss's own settings overflowed; with SGD past ``optim.sgd_decay_limit`` the weight
    decay alone diverges, so both it and the learning rate are named."""
    lr, option = getattr(run.cfg, rate), flag(rate)
    if rate == "lr" and lr == 0:
        params = loss_params(run.cfg, run.cfg.loss_spec)
        shown = ", ".join(f"{flag(k)} {v:g}" for k, v in params.items() if type(v) is float)
        return (
            f"other loss settings (at --lr 0 no weight moves, so the loss itself overflowed"
            f"{' with ' + shown if shown else ''}; `fastsigclr train --help` gives their defaults)"
        )
    # The probe's SGD has no weight decay; LARS scales each update to its weight's norm, decay and all.
    sgd = rate == "lr" and run.cfg.optimizer == "sgd"
    if sgd and lr * run.cfg.weight_decay >= (limit := sgd_decay_limit(run.cfg.momentum)):
        return (
            f"a lower --weight-decay or --lr (--lr × --weight-decay is {lr * run.cfg.weight_decay:g}, and "
            f"from 2(1 + --momentum) = {limit:g} SGD diverges on the weight decay alone)"
        )
    return f"a lower {option} than {lr:g} (e.g. {option} {lr / 2:g})"


def diverged(run: rundir.RunDir, what: str, step: int, epoch: int, rate: str = "lr") -> FastSigCLRError:
    """The one line of a diverged run: what, where, and what to change (``_change``: usually the
    learning rate ``rate``, lowered)."""
    change = _change(run, rate)
    if run.again is not None:  # a sweep's run: its settings are the sweep's budget, fixed in sweep.json
        fix = f"a sweep's settings hold for all its runs: start a new sweep with another --out and {change}"
    elif (run.path / rundir.CHECKPOINT).exists():
        fix = (
            f"{run.path / rundir.CHECKPOINT} ({run.kept or f'epoch {epoch}'}) is kept. --resume keeps the "
            f"run's settings: start a new run with another --out and {change}"
        )
    else:
        fix = f"no epoch finished: run the same command again with {change}"
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
