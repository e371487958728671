"""SigCLR's pairwise sigmoid loss (DESIGN.md §2.1).

For rows ``z`` of shape ``(V·N, D)``, view-major, and anchors ``i`` against columns ``j ≠ i``::

    a_ij = t·⟨ẑ_i, ẑ_j⟩ + b,   y_ij = +1 if i ≡ j (mod N) else −1
    L    = (1 / (V·N)) · Σ_i Σ_{j≠i} softplus(−y_ij · a_ij)

Because the loss is elementwise in the logits, its whole gradient can be formed in the same pass
as the value. Both implementations do so inside ``_PrecomputedGradLoss``: ``"torch"`` walks row
chunks (no (V·N)² tensor), ``"triton"`` runs the fused kernel of ``fastsigclr.kernels``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .normalize import normalize_rows

Impl = Literal["auto", "triton", "torch"]
Scalar = float | torch.Tensor
# Each chunk of the torch path holds about this many elements per (rows × M) temporary: at M = 8192
# that is 256 rows and 8 MiB per fp32 temporary, against 256 MiB for the full matrix.
CHUNK_ELEMENTS = 1 << 21


def check_inputs(z: torch.Tensor, temperature: Scalar, bias: Scalar, n_views: int) -> None:
    """Raise a ValueError/TypeError that names the problem and the fix."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor of shape (n_views·N, D), got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(f"z must have 2 dimensions (n_views·N, D), got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got {z.dtype}; convert it with z.float()")
    if not isinstance(n_views, int) or n_views < 2:
        raise ValueError(f"n_views must be an integer ≥ 2, got {n_views!r}")
    rows = z.shape[0]
    if rows < 2:
        raise ValueError(f"z needs at least 2 rows to form a pair, got {rows}")
    if rows % n_views:
        raise ValueError(
            f"z has {rows} rows, not divisible by n_views={n_views}; rows must be view-major "
            f"(n_views blocks of N rows each)"
        )
    if z.shape[1] < 1:
        raise ValueError("z has no features (D = 0)")
    for name, value in (("temperature", temperature), ("bias", bias)):
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
        elif not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")
    # A CUDA temperature is not read back: that would synchronise every step. The module keeps it
    # positive by construction (fixed, or exp of a learnable log).
    if isinstance(temperature, torch.Tensor):
        if temperature.device.type == "cpu" and not float(temperature.detach()) > 0:
            raise ValueError(f"temperature must be > 0, got {float(temperature.detach())}")
    elif not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _as_scalar_tensor(value: Scalar, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.reshape(())
    return torch.tensor(float(value), dtype=torch.float32, device=like.device)


def sigmoid_pairwise_chunked(
    zhat: torch.Tensor,
    temperature: torch.Tensor,
    bias: torch.Tensor,
    n_views: int,
    *,
    compute_grad: bool = True,
    compute_loss: bool = True,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The torch implementation: loss and gradients chunk by chunk, same contract as the kernel.

    zhat: (M, D) normalised rows. Returns (loss, dL/dzhat, dL/dt, dL/db) computed in fp32
    (fp64 for fp64 input); nothing of M×M elements is allocated when chunk_rows < M.
    """
    m = zhat.shape[0]
    n = m // n_views
    work = torch.float64 if zhat.dtype == torch.float64 else torch.float32
    zf = zhat.to(work)
    t = temperature.detach().to(work)
    b = bias.detach().to(work)
    step = chunk_rows or max(1, CHUNK_ELEMENTS // m)
    col_img = torch.arange(m, device=zhat.device) % n
    loss = zf.new_zeros(())
    db = zf.new_zeros(())
    dt = zf.new_zeros(())
    dz = torch.empty_like(zf) if compute_grad else None
    # Per chunk: three (rows × M) float temporaries (s, a, g) and one bool mask, plus two more
    # briefly for the loss terms; the self-pairs are the chunk's diagonal, cleared through a view.
    for start in range(0, m, step):
        stop = min(m, start + step)
        s = zf[start:stop] @ zf.T
        a = torch.addcmul(b, s, t)
        pos = (torch.arange(start, stop, device=zhat.device) % n)[:, None] == col_img[None, :]
        pos.diagonal(offset=start).fill_(False)
        if compute_loss:
            terms = F.softplus(torch.where(pos, a.neg(), a))
            terms.diagonal(offset=start).zero_()
            loss += terms.sum()
            del terms
        g = torch.sigmoid(a).add_(pos, alpha=-1)
        del a
        g.diagonal(offset=start).zero_()
        db += g.sum()
        dt += s.mul_(g).sum()  # s is spent; torch.dot (serial fp32 sum) lost 5e-6 at M = 258
        if dz is not None:
            torch.matmul(g, zf, out=dz[start:stop])
        del s, g, pos  # before the next chunk allocates its own
    inv_m = 1.0 / m
    if dz is not None:
        dz.mul_(2 * inv_m * t)
    return (loss * inv_m if compute_loss else None), dz, dt * inv_m, db * inv_m


def _triton_backend() -> Callable:
    try:
        from fastsigclr.kernels import sigmoid_pairwise_triton
    except ImportError as err:  # pragma: no cover - depends on the platform
        raise RuntimeError(
            "impl='triton' needs the triton package (Linux); install it with `pip install triton` "
            "or use impl='torch'"
        ) from err
    return sigmoid_pairwise_triton


def _grad_dtype(dtype: torch.dtype) -> torch.dtype:
    # See fastsigclr.kernels.sigmoid_loss: fp16 gradients stay fp32 so GradScaler can rescue them.
    return torch.float32 if dtype == torch.float16 else dtype


class _PrecomputedGradLoss(torch.autograd.Function):
    """Runs a backend that returns the loss and all gradients; backward only rescales them."""

    @staticmethod
    def forward(ctx, zhat, temperature, bias, n_views, backend):
        need_grad = any(ctx.needs_input_grad[:3])
        loss, dz, dt, db = backend(zhat, temperature, bias, n_views, compute_grad=ctx.needs_input_grad[0])
        if need_grad:
            dz = None if dz is None else dz.to(_grad_dtype(zhat.dtype))
            ctx.save_for_backward(dz, dt, db)
            ctx.z_dtype, ctx.t_dtype, ctx.b_dtype = zhat.dtype, temperature.dtype, bias.dtype
        # 16-bit inputs give an fp32 loss; fp64 stays fp64 (gradcheck needs it).
        return loss.to(torch.promote_types(zhat.dtype, torch.float32))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        dz, dt, db = ctx.saved_tensors
        gz = None if dz is None else (dz * grad_out).to(ctx.z_dtype)
        gt = (dt * grad_out).to(ctx.t_dtype) if ctx.needs_input_grad[1] else None
        gb = (db * grad_out).to(ctx.b_dtype) if ctx.needs_input_grad[2] else None
        return gz, gt, gb, None, None


def _resolve_impl(impl: str, z: torch.Tensor) -> str:
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be one of 'auto', 'triton', 'torch', got {impl!r}")
    if impl == "auto":
        return "triton" if z.is_cuda else "torch"
    if impl == "triton" and not z.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before import to run the "
            "kernel in Triton's CPU interpreter); use impl='torch' on CPU"
        )
    return impl


def sigmoid_pairwise_loss(
    z: torch.Tensor,
    temperature: Scalar,
    bias: Scalar,
    *,
    n_views: int = 2,
    normalize: bool = True,
    impl: Impl = "auto",
) -> torch.Tensor:
    """SigCLR loss of ``z`` (shape ``(n_views·N, D)``, view-major) → fp32 scalar.

    temperature, bias: floats or 0-d tensors (learnable tensors receive gradients).
    normalize: L2-normalise rows first (set False when z is already on the unit sphere).
    impl: "triton" (fused kernel, CUDA), "torch" (chunked, any device), "auto" (triton on CUDA).
    """
    check_inputs(z, temperature, bias, n_views)
    which = _resolve_impl(impl, z)
    t = _as_scalar_tensor(temperature, z)
    b = _as_scalar_tensor(bias, z)
    zhat = normalize_rows(z) if normalize else z
    backend = _triton_backend() if which == "triton" else sigmoid_pairwise_chunked
    return _PrecomputedGradLoss.apply(zhat, t, b, n_views, backend)


def sigmoid_pairwise_loss_reference(
    z: torch.Tensor, temperature: Scalar, bias: Scalar, *, n_views: int = 2, normalize: bool = True
) -> torch.Tensor:
    """Plain autograd formulation that materialises the (V·N)² logits: the baseline to beat."""
    m = z.shape[0]
    zhat = F.normalize(z, dim=1) if normalize else z
    logits = temperature * (zhat @ zhat.T) + bias
    img = torch.arange(m, device=z.device) % (m // n_views)
    same = img[:, None] == img[None, :]
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    signs = torch.where(same, 1.0, -1.0).to(logits.dtype)
    terms = F.softplus(-signs * logits).masked_fill(eye, 0)
    return terms.sum() / m


class SigmoidPairwiseLoss(nn.Module):
    """The SigCLR loss with a learnable bias (init −10) and a fixed or learnable temperature.

    A learnable temperature is kept as ``t = exp(t')`` with ``t'`` initialised to ``log(t0)``.
    """

    def __init__(
        self,
        temperature: float = 10.0,
        bias: float = -10.0,
        *,
        learnable_temperature: bool = False,
        learnable_bias: bool = True,
        n_views: int = 2,
        normalize: bool = True,
        impl: Impl = "auto",
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.n_views = n_views
        self.normalize = normalize
        self.impl = impl
        self.learnable_temperature = learnable_temperature
        log_t = torch.tensor(math.log(temperature))
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        b = torch.tensor(float(bias))
        if learnable_bias:
            self.bias = nn.Parameter(b)
        else:
            self.register_buffer("bias", b)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: (n_views·N, D) view-major projections → scalar loss."""
        return sigmoid_pairwise_loss(
            z, self.temperature, self.bias, n_views=self.n_views, normalize=self.normalize, impl=self.impl
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={float(self.temperature):.4g}, bias={float(self.bias):.4g}, "
            f"learnable_temperature={self.learnable_temperature}, n_views={self.n_views}"
        )
