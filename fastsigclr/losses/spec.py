"""What a loss declares about itself, for the one registry (``fastsigclr.losses.LOSSES``) that the
trainer, the distributed wrapper, ``fastsigclr bench loss`` and the command line read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .common import fixed_temperature


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
    takes ``impl``); unknown params (e.g. learnable_logit_bias) are ignored.
    kernel: the name of its Triton launcher in ``fastsigclr.kernels``, if it has one.
    kernel_plans: build also takes ``deterministic=`` and ``plans=`` (its kernel sums with atomics
    unless deterministic, then in the order of a tile plan per kind of block, which the module keeps
    in ``.plans`` for the run to record). The other losses sum in a fixed order as they are: their
    kernels have no atomics and no autotuning (NT-Xent), their torch paths fixed reductions.
    distributed: ``(module, z_local, labels, *, mode, group, compute_loss) -> loss`` where the loss
    has an exact blockwise form across ranks; None: the global batch's rows are gathered.
    notes: per option name, the hint added when the option is given to this method (misnamed
    options, e.g. --temperature for sigclr).
    renamed: earlier option name → today's, for config files written under the earlier name.
    min_images: the fewest images a batch may hold (DCL: 2, for a row to have a negative).
    """

    summary: str
    build: Callable[..., nn.Module]
    function: Callable[..., torch.Tensor]
    reference: Callable[..., torch.Tensor]
    params: dict[str, HyperParam]
    supervised: bool = False
    kernel: str | None = None
    kernel_plans: bool = False
    distributed: Callable[..., torch.Tensor] | None = None
    notes: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    min_images: int = 1

    def defaults(self) -> dict[str, Any]:
        return {name: p.default for name, p in self.params.items()}


def softmax_temperature(default: float) -> HyperParam:
    """τ of the softmax losses (``--temperature``): it divides the similarities."""
    return HyperParam(default, "softmax temperature τ: logits s/τ (divides the similarities)", {"gt": 0})


class FixedTemperatureLoss(nn.Module):
    """A self-supervised softmax loss with a fixed temperature τ and no learnable state, as a
    module: subclasses name the loss (``title``), its default τ (``default_temperature``) and its
    function ``loss(z, τ, n_views=...)``."""

    title = "the loss"
    default_temperature = 0.2

    @staticmethod
    def loss(z: torch.Tensor, temperature: float, *, n_views: int, impl: str = "auto") -> torch.Tensor:
        raise NotImplementedError

    def __init__(self, temperature: float | None = None, *, n_views: int = 2) -> None:
        super().__init__()
        temperature = fixed_temperature(self.default_temperature if temperature is None else temperature)
        self.tau, self.n_views = temperature, n_views
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, z: torch.Tensor, labels: None = None, *, compute_loss: bool = True) -> torch.Tensor:
        """z: (n_views·N, D) view-major → scalar; compute_loss is ignored (value and gradient come
        from the same pass)."""
        if labels is not None:
            raise ValueError(f"{self.title} is self-supervised: call it without labels")
        return self.loss(z, self.tau, n_views=self.n_views)

    def log_values(self) -> dict[str, float]:
        return {"temperature": self.tau}

    def extra_repr(self) -> str:
        return f"temperature={self.tau}, n_views={self.n_views}"


def fixed_temperature_spec(
    summary: str,
    module: type[FixedTemperatureLoss],
    reference: Callable[..., torch.Tensor],
    kernel: str | None = None,
    min_images: int = 1,
) -> LossSpec:
    """The registry entry of a FixedTemperatureLoss: its one parameter τ (default
    ``module.default_temperature``), the
    module built from it, its function (``module.loss``) and ``reference(z, τ, n_views=...)``."""

    def build(*, n_views: int, temperature: float) -> nn.Module:
        return module(temperature, n_views=n_views)

    def function(z: torch.Tensor, labels: None = None, *, n_views: int = 2, impl: str = "auto", **params):
        return module.loss(z, params["temperature"], n_views=n_views, impl=impl)

    def plain(z: torch.Tensor, labels: None = None, *, n_views: int = 2, **params) -> torch.Tensor:
        return reference(z, params["temperature"], n_views=n_views)

    params = {"temperature": softmax_temperature(module.default_temperature)}
    return LossSpec(summary, build, function, plain, params, kernel=kernel, min_images=min_images)
