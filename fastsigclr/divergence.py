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


# The largest eval-mode feature of the noise images a checkpoint may have. A trained ResNet's are
# about 10 (8.1 on noise, 10.0 on CIFAR-10 for a tiny run); a feature vector's squared norm (the
# cosine of the kNN monitor, eval and the probe) overflows fp32 past about 4e17 per element at 2,048
# features, and real images gave up to 7x the noise's largest (and NaN for one image at 2.9e29 on
# noise). Early in training, ResNet-50 runs at --lr 5-8 (bf16, 64 px) peaked at 1.1e14 on noise,
# then fell back to about 15. 1e16 leaves a factor of about 6 on the one side, 90 on the other.
FEATURE_LIMIT = 1e16


def eval_features_bounded(setup: Any) -> bool:
    """Whether the backbone, in eval mode (the running batch-norm statistics), gives features
    below ``FEATURE_LIMIT`` for two fixed noise images at the run's size, in its autocast dtype.
    Finite weights were not enough: at --lr 1e6 a kept checkpoint's running variances (6e18) and
    weights overflowed in eval, and evaluation refused every image's features; at 1e27 on noise a
    finite one scored chance (its squared norms overflow). Its own generator and no_grad: the
    run's RNG streams and batch-norm statistics are untouched (resume stays exact)."""
    backbone = setup.model.backbone
    device = next(backbone.parameters()).device
    size = setup.cfg.image_size
    noise = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    was_training = backbone.training
    backbone.eval()
    try:
        dtype = setup.autocast_dtype
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            features = backbone(noise).float()
        return bool((features.abs() < FEATURE_LIMIT).all())  # NaN compares False
    finally:
        backbone.train(was_training)


def _loss_settings(run: rundir.RunDir, why: str) -> str:
    """ "other loss settings (``why``...)", naming the run's loss settings."""
    params = loss_params(run.cfg, run.cfg.loss_spec)
    shown = ", ".join(f"{flag(k)} {v:g}" for k, v in params.items() if type(v) is float)
    return (
        f"other loss settings ({why}{', with ' + shown if shown else ''}; `fastsigclr train --help` gives "
        f"their defaults)"
    )


def _change(run: rundir.RunDir, rate: str, updates: int | None = None) -> str:
    """What to run again with: a lower ``rate``, unless it cannot be what diverged. At --lr 0 no
    weight moves, and a new run's first loss (``updates`` 0: the updates before the loss that
    failed) met no learning rate: the loss's own settings overflowed; a loss that failed later,
    with loss settings other than their defaults, may be theirs too, so both are named. With SGD
    past ``optim.sgd_decay_limit`` the weight decay alone diverges, so it and the rate are named."""
    lr, option = getattr(run.cfg, rate), flag(rate)
    if rate == "lr" and (lr == 0 or updates == 0):
        why = "no weight moves at --lr 0" if lr == 0 else "the first step's loss comes before any update"
        return _loss_settings(run, f"{why}: the loss itself overflowed")
    # The probe's SGD has no weight decay; LARS scales each update to its weight's norm, decay and all.
    sgd = rate == "lr" and run.cfg.optimizer == "sgd"
    if sgd and lr * run.cfg.weight_decay >= (limit := sgd_decay_limit(run.cfg.momentum)):
        return (
            f"a lower --weight-decay or --lr (--lr × --weight-decay is {lr * run.cfg.weight_decay:g}, and "
            f"from 2(1 + --momentum) = {limit:g} SGD diverges on the weight decay alone)"
        )
    lower = f"a lower {option} than {lr:g} (e.g. {option} {lr / 2:g})"
    spec = run.cfg.loss_spec
    changed = any(v != spec.params[k].default for k, v in loss_params(run.cfg, spec).items())
    if rate == "lr" and updates is not None and changed:  # a loss that failed: its settings, or the rate
        return f"{lower}, or {_loss_settings(run, 'if they made the loss overflow')}"
    return lower


def diverged(
    run: rundir.RunDir, what: str, step: int, epoch: int, rate: str = "lr", updates: int | None = None
) -> FastSigCLRError:
    """The one line of a diverged run: what, where, and what to change (``_change``: usually the
    learning rate ``rate``, lowered; the loss's settings when the loss failed before ``updates``)."""
    change = _change(run, rate, updates)
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
    what diverged first), or the backbone's eval-mode features blew up (``eval_features_bounded``);
    the probe alone names --probe-lr."""
    broken = not_finite({"model": setup.model, "loss": setup.criterion, "probe": setup.probe})
    loss_ok = mean_loss is None or math.isfinite(mean_loss)
    if loss_ok and not broken and eval_features_bounded(setup):
        return
    if loss_ok and not broken:
        what = f"the encoder's eval-mode features exceed {FEATURE_LIMIT:g} (weights or statistics exploded)"
        raise diverged(run, what, step, epoch)
    if loss_ok and broken == ["probe"]:
        what = "the online linear probe's weights are not finite (the encoder's are)"
        raise diverged(run, what, step, epoch, "probe_lr")
    what = f"the {', '.join(broken)} weights are not finite" if loss_ok else f"{loss_is} is {mean_loss}"
    raise diverged(run, what, step, epoch)
