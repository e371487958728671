"""SigCLR's pairwise sigmoid loss (docs/design.md §3).

For rows ``z`` of shape ``(V·N, D)``, view-major, and anchors ``i`` against columns ``j ≠ i``::

    a_ij = t·⟨ẑ_i, ẑ_j⟩ + b,   y_ij = +1 if i ≡ j (mod N) else −1
    L    = (1 / (V·N)) · Σ_i Σ_{j≠i} softplus(−y_ij · a_ij)

Because the loss is elementwise in the logits, its whole gradient can be formed in the same pass
as the value. Both implementations do so inside ``common.PrecomputedGrad``: ``"torch"`` walks row
chunks (no (V·N)² tensor), ``"triton"`` runs the fused kernel of ``fastsigclr.kernels``.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import common
from .common import (
    Impl,
    PrecomputedGrad,
    Scalar,
    as_scalar_tensor,
    check_rows,
    check_scalar,
    kernel,
    resolve_impl,
)
from .normalize import EPS, normalize_rows


def check_inputs(z: torch.Tensor, temperature: Scalar, bias: Scalar, n_views: int) -> None:
    """Raise a ValueError/TypeError that names the problem and the fix."""
    check_rows(z, n_views)
    check_scalar("temperature", temperature, z, positive=True)
    check_scalar("bias", bias, z)


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
    return sigmoid_block_chunked(
        zhat,
        zhat,
        temperature,
        bias,
        n_per_view=m // n_views,
        inv_m=1.0 / m,
        self_block=True,
        compute_grad=compute_grad,
        compute_loss=compute_loss,
        chunk_rows=chunk_rows,
    )


def sigmoid_block_chunked(
    rows: torch.Tensor,
    cols: torch.Tensor,
    temperature: torch.Tensor,
    bias: torch.Tensor,
    *,
    n_per_view: int,
    inv_m: float,
    self_block: bool,
    compute_grad: bool = True,
    compute_loss: bool = True,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One block of the loss, anchors ``rows`` (M, D) against ``cols`` (MC, D): the torch twin
    of ``fastsigclr.kernels.sigmoid_block_triton`` (same arguments and returns).

    self_block: cols is rows (skip i = j; positives where i ≡ j mod n_per_view); otherwise every
    pair is a negative. Every term is scaled by inv_m = 1 / (rows of the whole batch).
    """
    m, mc = rows.shape[0], cols.shape[0]
    work = torch.float64 if rows.dtype == torch.float64 else torch.float32
    zf = rows.to(work)
    cf = zf if self_block else cols.to(work)
    t = temperature.detach().to(work)
    b = bias.detach().to(work)
    step = chunk_rows or max(1, common.CHUNK_ELEMENTS // mc)
    col_img = torch.arange(mc, device=rows.device) % n_per_view
    loss = zf.new_zeros(())
    db = zf.new_zeros(())
    dt = zf.new_zeros(())
    dz = torch.empty_like(zf) if compute_grad else None
    # Per chunk: three (rows × MC) float temporaries (s, a, g) and one bool mask, plus two more
    # briefly for the loss terms; the self-pairs are the chunk's diagonal, cleared through a view.
    for start in range(0, m, step):
        stop = min(m, start + step)
        s = zf[start:stop] @ cf.T
        a = torch.addcmul(b, s, t)
        if self_block:
            pos = (torch.arange(start, stop, device=rows.device) % n_per_view)[:, None] == col_img[None, :]
            pos.diagonal(offset=start).fill_(False)
        else:
            pos = torch.zeros_like(s, dtype=torch.bool)
        if compute_loss:
            terms = F.softplus(torch.where(pos, a.neg(), a))
            if self_block:
                terms.diagonal(offset=start).zero_()
            loss += terms.sum()
            del terms
        g = torch.sigmoid(a).add_(pos, alpha=-1)
        del a
        if self_block:
            g.diagonal(offset=start).zero_()
        db += g.sum()
        dt += s.mul_(g).sum()  # s is spent; torch.dot (serial fp32 sum) lost 5e-6 at M = 258
        if dz is not None:
            torch.matmul(g, cf, out=dz[start:stop])
        del s, g, pos  # before the next chunk allocates its own
    if dz is not None:
        dz.mul_(2 * inv_m * t)
    return (loss * inv_m if compute_loss else None), dz, dt * inv_m, db * inv_m


def sigmoid_pairwise_loss(
    z: torch.Tensor,
    temperature: Scalar,
    bias: Scalar,
    *,
    n_views: int = 2,
    normalize: bool = True,
    impl: Impl = "auto",
    compute_loss: bool = True,
) -> torch.Tensor:
    """SigCLR loss of ``z`` (shape ``(n_views·N, D)``, view-major) → fp32 scalar.

    temperature, bias: floats or 0-d tensors (learnable tensors receive gradients).
    normalize: L2-normalise rows first, z / max(‖z‖, 1e-4) (normalize.EPS; set False when z is
    already on the unit sphere).
    impl: "triton" (fused kernel, CUDA), "torch" (chunked, any device), "auto" (triton on CUDA).
    compute_loss: False skips the loss terms (about 70% of the fused kernel's instructions per
    pair at D = 128; the gradients are unchanged): the result then has the value NaN and is only
    for ``backward()``. Compute it on the steps whose loss is logged.
    """
    check_inputs(z, temperature, bias, n_views)
    which = resolve_impl(impl, z)
    zhat = normalize_rows(z) if normalize else z
    backend = kernel("sigmoid_pairwise_triton") if which == "triton" else sigmoid_pairwise_chunked
    # n_views is bound here so that only tensors go through autograd.
    bound = partial(backend, n_views=n_views, compute_loss=compute_loss)
    return PrecomputedGrad.apply(bound, zhat, as_scalar_tensor(temperature, z), as_scalar_tensor(bias, z))


def sigmoid_pairwise_loss_reference(
    z: torch.Tensor, temperature: Scalar, bias: Scalar, *, n_views: int = 2, normalize: bool = True
) -> torch.Tensor:
    """Plain autograd formulation that materialises the (V·N)² logits: the baseline to beat."""
    m = z.shape[0]
    zhat = F.normalize(z, dim=1, eps=EPS) if normalize else z
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

    def forward(self, z: torch.Tensor, *, compute_loss: bool = True) -> torch.Tensor:
        """z: (n_views·N, D) view-major projections → scalar loss (NaN without compute_loss:
        see sigmoid_pairwise_loss)."""
        return sigmoid_pairwise_loss(
            z,
            self.temperature,
            self.bias,
            n_views=self.n_views,
            normalize=self.normalize,
            impl=self.impl,
            compute_loss=compute_loss,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={float(self.temperature):.4g}, bias={float(self.bias):.4g}, "
            f"learnable_temperature={self.learnable_temperature}, n_views={self.n_views}"
        )
