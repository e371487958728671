"""The torch path of the sigmoid loss: one block of rows against columns, chunk by chunk, with the
same arguments and returns as the fused kernel (``fastsigclr.kernels.sigmoid_block_triton``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import common


def sigmoid_pairwise_chunked(
    zhat: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
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
        logit_scale,
        logit_bias,
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
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
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
    t = logit_scale.detach().to(work)
    b = logit_bias.detach().to(work)
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
