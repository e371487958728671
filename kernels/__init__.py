"""Triton kernels of fastsigclr, installed as ``fastsigclr.kernels``.

Kernels only: no torch.nn modules and no training logic. Importing this package needs triton;
``fastsigclr.losses`` reports a missing triton as a clear error when a kernel is asked for.
"""

from .augment import two_view_augment
from .ntxent import nt_xent_triton
from .sigmoid import (
    Plan,
    check_plan,
    grad_dtype,
    plan_schedule,
    sigmoid_block,
    sigmoid_loss,
    sigmoid_plan,
)

__all__ = [
    "Plan",
    "check_plan",
    "grad_dtype",
    "nt_xent_triton",
    "plan_schedule",
    "sigmoid_block",
    "sigmoid_loss",
    "sigmoid_plan",
    "two_view_augment",
]
