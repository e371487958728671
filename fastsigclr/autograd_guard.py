"""The guard of every autograd Function whose backward returns gradients formed in the forward
pass (the fused losses): they carry no graph, so there is no second derivative to give."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def first_derivative_only(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorates such a backward (in place of ``once_differentiable``, whose no_grad hides the
    mode): refuse ``create_graph=True``, the one case in which a backward runs with grad mode on.
    A second derivative (a gradient penalty) was otherwise silently wrong: ``once_differentiable``
    raises only when the incoming gradient itself requires grad, which a scalar loss's does not
    (measured in float64: the penalty's gradient 86-101% off)."""

    @functools.wraps(backward)
    def guarded(ctx: Any, *grads: Any) -> Any:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fastsigclr's fused losses compute their gradient in the forward pass and have no "
                "second derivative: backward with create_graph=True (a gradient penalty, double "
                "backward) would be wrong; use the loss's *_reference function for that"
            )
        return backward(ctx, *grads)

    return guarded
