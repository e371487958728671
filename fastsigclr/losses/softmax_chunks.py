"""The row-chunk loop that the softmax losses' torch paths share (NT-Xent, DCL, SupCon/TCL), and
the log-sum-exp chunk of NT-Xent and DCL.

Each chunk of anchor rows meets every row: its terms give the chunk's loss and its weights
W = dℓ/ds over (rows × M), and since s_ij = s_ji the gradient takes W from both sides,
W·Z into the chunk's rows and Wᵀ·Z_chunk into every row. Nothing M×M is kept for backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (zf, start, stop) -> (Σ of the chunk's row losses, W or its unscaled form E, per-row scale or
# None): W = E·scale, so that the scale multiplies the (rows × D) operands, not E.
ChunkTerms = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def work_copy(zhat: torch.Tensor) -> torch.Tensor:
    """zhat in the losses' working precision: fp32, or fp64 for fp64 input."""
    return zhat.to(torch.float64 if zhat.dtype == torch.float64 else torch.float32)


def softmax_chunks(
    zf: torch.Tensor,
    chunk_terms: ChunkTerms,
    *,
    step: int,
    inv: float,
    dz: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(loss, dL/dzhat) = inv·Σ over chunks of ``step`` rows; dz: the gradient's start (e.g. the
    positives' part) to accumulate into, None without the gradient."""
    m = zf.shape[0]
    loss = zf.new_zeros(())
    for start in range(0, m, step):
        stop = min(m, start + step)
        terms, e, scale = chunk_terms(zf, start, stop)
        loss += terms
        if dz is not None:
            rows = zf[start:stop]
            if scale is None:
                dz[start:stop] += e @ zf
                dz += e.T @ rows
            else:
                dz[start:stop] += torch.mm(e, zf).mul_(scale)
                dz += torch.mm((rows * scale).T, e).T  # s_ij = s_ji: the column side of each pair
        del e  # before the next chunk's buffer exists: one at a time
    if dz is not None:
        dz *= inv
    return loss * inv, dz


def view_positives(zf: torch.Tensor, n_views: int, temperature: float) -> torch.Tensor:
    """The positives' part of NT-Xent's and DCL's gradient, −(2/((V−1)τ))·Σ_{p∈P(i)} ẑ_p (s_ip
    enters ℓ_i and ℓ_p), from which the chunks' softmax parts are accumulated."""
    m = zf.shape[0]
    dz = zf.view(n_views, m // n_views, -1).sum(0).repeat(n_views, 1).sub_(zf)
    return dz.mul_(-2.0 / (temperature * (n_views - 1)))


def log_sum_exp_terms(temperature: float, n_views: int, *, decoupled: bool) -> ChunkTerms:
    """NT-Xent's chunk (decoupled: DCL's, whose denominators leave the positives out):
    ℓ_i = lse_i − (1/(V−1))·Σ_{p∈P(i)} s_ip/τ. One (rows × M) buffer, turned in place from logits
    into exponentials; the softmax's 1/Σ and the 1/τ are the per-row scale."""
    inv_tau = 1.0 / temperature

    def terms(zf: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = zf.shape[0]
        e = torch.mm(zf[start:stop], zf.T).mul_(inv_tau)
        offsets = torch.arange(1, n_views, device=zf.device) * (m // n_views)
        positives = (torch.arange(start, stop, device=zf.device)[:, None] + offsets) % m
        pos_logits = e.gather(1, positives)
        e.diagonal(offset=start).fill_(float("-inf"))
        if decoupled:
            e.scatter_(1, positives, float("-inf"))
        peak = e.amax(1, keepdim=True)
        e.sub_(peak).exp_()  # e^{logit − max}; the excluded entries become 0
        total = e.sum(1, keepdim=True)
        loss = (peak + total.log() - pos_logits.mean(1, keepdim=True)).sum()
        return loss, e, inv_tau / total  # softmax = e / total, and dℓ/ds carries 1/τ

    return terms
