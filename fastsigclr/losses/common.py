"""What every loss shares: input checks, the implementation switch, the Triton kernels (None
where triton is missing), and the autograd Function for backends that compute the gradient in the
same pass as the value."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from fastsigclr.autograd_guard import first_derivative_only

try:  # the kernels need triton (Linux); without it every loss still has its torch path
    from fastsigclr import kernels
except ImportError:  # pragma: no cover - depends on the platform
    kernels = None

Impl = Literal["auto", "triton", "torch"]
Scalar = float | torch.Tensor
# Each chunk of a torch path holds about this many elements per (rows × M) temporary: at M = 8192
# that is 256 rows and 8 MiB per fp32 temporary, against 256 MiB for the full matrix.
CHUNK_ELEMENTS = 1 << 21


def check_matrix(z: torch.Tensor) -> None:
    """z must be a floating (M, D) tensor with at least one pair; errors name the fix."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor of shape (n_views·N, D), got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"z must have 2 dimensions (n_views·N, D), got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got {z.dtype}; convert it with z.float()")
    if z.shape[0] < 2:
        raise ValueError(f"z needs at least 2 rows to form a pair, got {z.shape[0]}")
    if z.shape[1] < 1:
        raise ValueError("z has no features (D = 0)")


def check_rows(z: torch.Tensor, n_views: int) -> None:
    """check_matrix, and rows that are n_views view-major blocks of N rows."""
    check_matrix(z)
    if not isinstance(n_views, int) or n_views < 2:
        raise ValueError(f"n_views must be an integer ≥ 2, got {n_views!r}")
    rows = z.shape[0]
    if rows % n_views:
        raise ValueError(
            f"z has {rows} rows, not divisible by n_views={n_views}; rows must be view-major "
            f"(n_views blocks of N rows each)"
        )


def is_number(value: object) -> bool:
    """A Python or numpy int or float; never a bool (True is not a scale)."""
    numbers = int | float | np.integer | np.floating
    return not isinstance(value, bool | np.bool_) and isinstance(value, numbers)


def check_scalar(name: str, value: Scalar, z: torch.Tensor, *, positive: bool = False) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.device != z.device:
            raise ValueError(
                f"tensors on different devices: z is on {z.device}, {name} on {value.device}; "
                f"move them to one device (e.g. the loss module with .to(z.device))"
            )
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        # A CUDA value is not read back: that would synchronise every step. Modules keep their
        # temperatures positive by construction.
        if positive and value.device.type == "cpu" and not float(value.detach()) > 0:
            raise ValueError(f"{name} must be > 0, got {float(value.detach())}")
    elif not is_number(value):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")
    elif positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def fixed_temperature(temperature: Scalar) -> float:
    """The τ of a softmax-family loss (NT-Xent, SupCon, TCL, DCL) as a float: a number, or a
    tensor of one element that needs no gradient. Their τ is a fixed hyper-parameter: a tensor
    that requires grad would get none (τ is not among their gradients), so it is refused."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.is_floating_point():
            raise ValueError(
                f"temperature must be a number or a one-element float tensor, got a {temperature.dtype} "
                f"tensor of shape {tuple(temperature.shape)}"
            )
        if temperature.requires_grad:
            raise ValueError(
                "temperature is a fixed hyper-parameter of the softmax-family losses and gets no "
                "gradient: pass a float (or temperature.detach()); a learnable scale is the sigmoid "
                "losses' logit_scale"
            )
        temperature = float(temperature)
    elif not is_number(temperature):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0 and finite, got {temperature}")
    return float(temperature)


def as_scalar_tensor(value: Scalar, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor of ``value``: a tensor as it is, a number in fp32 (fp64 for fp64 ``like``, whose
    backends work in fp64: an fp32 scale would round them)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(())
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(float(value), dtype=dtype, device=like.device)


# What the Triton kernels take (fp64 tl.dot is not among their configurations).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def resolve_impl(impl: str, z: torch.Tensor) -> str:
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be one of 'auto', 'triton', 'torch', got {impl!r}")
    if impl == "auto":
        return "triton" if z.is_cuda and z.dtype in KERNEL_DTYPES and kernels is not None else "torch"
    if impl == "triton" and kernels is None:  # pragma: no cover - depends on the platform
        raise RuntimeError(
            "impl='triton' needs the triton package (Linux); install it with `pip install triton` "
            "or use impl='torch'"
        )
    if impl == "triton" and z.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"impl='triton' supports float32, float16 and bfloat16 inputs, got {z.dtype}; convert z "
            f"(e.g. z.float()) or use impl='torch', which also computes in float64"
        )
    if impl == "triton" and not z.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import to run the "
            "kernel in Triton's CPU interpreter); use impl='torch' on CPU"
        )
    return impl


if kernels is not None:
    grad_dtype = kernels.grad_dtype
else:  # pragma: no cover - depends on the platform

    def grad_dtype(dtype: torch.dtype) -> torch.dtype:
        """fastsigclr.kernels.grad_dtype, for a platform without triton: fp16 inputs keep an fp32
        gradient, other dtypes their own."""
        return torch.float32 if dtype == torch.float16 else dtype


class PrecomputedGrad(torch.autograd.Function):
    """``PrecomputedGrad.apply(backend, options, zhat, *scalars)``: ``backend(zhat, *scalars,
    compute_grad=..., **options) -> (loss, dL/dzhat, *dL/dscalars)`` computes the loss and every
    gradient in one pass; backward only rescales them by grad_output. options: the backend's
    non-tensor arguments (n_views, a temperature), which autograd passes through.

    A backend that skipped the loss value (loss None) yields NaN: the result still carries the
    gradient, and a value that was never computed cannot pass for a real loss in a log."""

    @staticmethod
    def forward(ctx, backend: Callable, options: dict[str, Any], zhat, *scalars):
        # Backends pick their own working precision (fp32, or fp64 for fp64 input); autocast
        # would turn their matmuls to 16 bits and clash with their fp32 out= buffers.
        with torch.autocast(zhat.device.type, enabled=False):
            loss, dz, *dscalars = backend(zhat, *scalars, compute_grad=ctx.needs_input_grad[2], **options)
        if any(ctx.needs_input_grad[2:]):
            dz = None if dz is None else dz.to(grad_dtype(zhat.dtype))
            ctx.save_for_backward(dz, *dscalars)
            ctx.dtypes = [zhat.dtype, *(s.dtype for s in scalars)]
        # 16-bit inputs give an fp32 loss; fp64 stays fp64 (gradcheck needs it).
        dtype = torch.promote_types(zhat.dtype, torch.float32)
        if loss is None:
            return torch.full((), float("nan"), dtype=dtype, device=zhat.device)
        return loss.to(dtype)

    @staticmethod
    @first_derivative_only
    def backward(ctx, grad_out):
        grads = []
        for i, (saved, dtype) in enumerate(zip(ctx.saved_tensors, ctx.dtypes, strict=True)):
            wanted = ctx.needs_input_grad[2 + i] and saved is not None
            grads.append((saved * grad_out).to(dtype) if wanted else None)
        return (None, None, *grads)
