"""What a loss declares about itself, for the one registry (``fastsigclr.losses.LOSSES``) that the
trainer, the distributed wrapper, ``fastsigclr bench loss`` and the command line read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class HyperParam:
    """One hyper-parameter of a loss, named as its ``fastsigclr train`` option (``logit_scale``
    is ``--logit-scale``). bounds: option() keywords (ge, gt, le, lt) every value must meet."""

    default: float | bool
    help: str
    bounds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LossSpec:
    """A training method's loss.

    build(n_views=..., **params) -> the nn.Module the trainer calls as ``module(z)`` (or
    ``module(z, labels)`` when supervised), with ``compute_loss=`` where the loss can skip its value.
    function / reference: the functional API and the plain (materialising, float64-capable)
    reference, both ``(z, labels, *, n_views, **params)`` over view-major rows (function also
    takes ``impl``); unknown params (e.g. learnable_bias) are ignored.
    kernel: the name of its Triton launcher in ``fastsigclr.kernels``, if it has one.
    distributed: ``(module, z_local, labels, *, mode, group, compute_loss) -> loss`` where the loss
    has an exact blockwise form across ranks; None: the global batch's rows are gathered.
    notes: per option name, the hint added when the option is given to this method (misnamed
    options, e.g. --temperature for sigclr).
    """

    summary: str
    build: Callable[..., nn.Module]
    function: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    params: dict[str, HyperParam]
    supervised: bool = False
    kernel: str | None = None
    distributed: Callable[..., torch.Tensor] | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {name: p.default for name, p in self.params.items()}


def softmax_temperature(default: float) -> HyperParam:
    """τ of the softmax losses (``--temperature``): it divides the similarities."""
    return HyperParam(default, "softmax temperature τ: logits s/τ (divides the similarities)", {"gt": 0})
