"""A run's checkpoint checked against its config.json before a model is built from them: both
are files a user can edit or copy in, so neither is trusted. ``check_record`` compares the
settings the checkpoint records of its run with config.json's, ``check_fits`` its model's
tensors with the shapes of the model config.json describes (built on the meta device: no
memory, where an edited ``"width": 100000`` allocated 360 GB before any comparison), and
``load_weights`` loads them, any mismatch one line. Used by eval, embed, export and resume."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from fastsigclr.config import FastSigCLRError, flag
from fastsigclr.models import SSLModel

# The settings a checkpoint records (its "config") that must be config.json's for eval, embed and
# export to read it as the run's: the model, and the data and input recipe (normalisation, sizes).
RECORDED = (
    "dataset",
    "method",
    "arch",
    "width",
    "proj_dims",
    "zero_init_residual",
    "image_size",
    "store_size",
)


def _mismatch(own: dict[str, Any], saved: dict[str, Any]) -> str:
    """The first difference between a module's tensors and a checkpoint's, in words."""
    for key, value in own.items():
        if key not in saved:
            continue
        there = saved[key]
        if not isinstance(there, torch.Tensor):
            return f"{key} is a {type(there).__name__}, not a tensor"
        if there.shape != value.shape:
            return f"{key} is {tuple(there.shape)} there, {tuple(value.shape)} here"
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own), key=str)
    return f"{len(missing)} tensors missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]})"


def _not_this_model(source: str, what: str) -> FastSigCLRError:
    return FastSigCLRError(
        f"{source} does not fit this run's model ({what}): it comes from another run (another --arch, "
        f"--width, --proj-dims, --method or dataset); restore this run's own checkpoint"
    )


def load_weights(module: Any, state: Any, source: str) -> None:
    """``module.load_state_dict(state)`` (a module or an optimiser), or one line when the checkpoint
    ``source`` holds another model's weights: another run's checkpoint copied in; or, for an
    optimiser, other parameter groups: a learnable logit scale's own group is newer than the run."""
    groups = (
        state.get("param_groups")
        if isinstance(module, torch.optim.Optimizer) and isinstance(state, dict)
        else None
    )
    if isinstance(groups, list) and len(groups) != len(module.param_groups):
        raise FastSigCLRError(
            f"{source} holds an optimiser state of {len(groups)} parameter groups where this run's has "
            f"{len(module.param_groups)}: an earlier fastsigclr wrote it, before a learnable logit scale "
            f"took LARS's steps (under plain ones it collapsed), and it cannot be resumed; train the run "
            f"again from the start (delete its folder, or choose another --out)"
        )
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        own = module.state_dict() if isinstance(module, torch.nn.Module) else None
        what = _mismatch(own, state) if own is not None and isinstance(state, dict) else str(err)[:160]
        raise _not_this_model(source, what) from None


def check_fits(cfg: Any, saved: Any, source: str) -> None:
    """One line (``load_weights``') when the model tensors ``saved`` of the checkpoint ``source``
    are not, name for name and shape for shape, those of the model ``cfg`` (a TrainConfig)
    describes; checked on the meta device, before any memory is taken for the model."""
    try:
        with torch.device("meta"):
            model = SSLModel(
                cfg.arch or "resnet18", cfg.width, tuple(cfg.proj_dims or ()), cfg.zero_init_residual
            )
    except (ValueError, RuntimeError, OverflowError) as err:
        raise FastSigCLRError(
            f"the run's config.json describes a model that cannot be built ({err}); restore it from a "
            f"copy of the run"
        ) from None
    own = model.state_dict()
    fits = isinstance(saved, dict) and set(saved) == set(own)
    fits = fits and all(
        isinstance(saved[k], torch.Tensor) and saved[k].shape == v.shape for k, v in own.items()
    )
    if not fits:
        raise _not_this_model(source, _mismatch(own, saved) if isinstance(saved, dict) else "not a dict")
    if (damage := _damaged(own, saved)) is not None:
        raise FastSigCLRError(
            f"{source} holds {damage}, which no training writes: the file was damaged or edited; restore "
            f"it from a copy of the run, or train again"
        )


def _damaged(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str | None:
    """What no checkpoint the trainer wrote holds: a tensor of another dtype than the model's
    (int, bool or complex weights were exported as they were), or batch-norm statistics that are
    not finite or a negative variance (eval and embed then gave one feature for every image and a
    chance-level score, or NaN). Non-finite weights are a diverged run's: eval and embed say so
    from the features, export from the weights."""
    for name, value in own.items():
        stat = saved[name]
        if stat.dtype != value.dtype:
            dtypes = (str(t.dtype).removeprefix("torch.") for t in (stat, value))
            return "{} as {}, not {}".format(name, *dtypes)
        if name.endswith((".running_mean", ".running_var")) and not stat.isfinite().all():
            return f"{name} with NaN or inf"
        if name.endswith(".running_var") and (stat < 0).any():
            return f"{name} with a negative variance"
    return None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


def check_record(cfg: Any, state: dict[str, Any], source: str, names: Iterable[str] = RECORDED) -> None:
    """One line when config.json (``cfg``) and the checkpoint ``source`` (``state``) disagree on a
    setting of ``names``: export took the normalisation from an edited config.json's dataset, and
    labelled the file with it; a resumed run trained on at an edited --image-size, or looked for
    an edited dataset in the run's folder. A checkpoint without the record (hand-made), or a
    setting either leaves unset (files older than resolved configs), is not compared."""
    record = state.get("config")
    if not isinstance(record, dict):
        return
    for name in names:
        then, now = _plain(record.get(name)), _plain(getattr(cfg, name))
        if then is not None and now is not None and then != now:
            raise FastSigCLRError(
                f"the run's config.json says {flag(name)} {now!r:.40} and its checkpoint {source} records "
                f"{then!r:.40}: config.json was edited, or the checkpoint comes from another run; restore "
                f"the run's own config.json and checkpoint"
            )
