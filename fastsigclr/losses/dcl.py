"""Decoupled contrastive loss (DCL; Yeh et al., ECCV 2022): NT-Xent with the positives removed
from the denominator. For view-major rows with positives P(i) (the other views of i's image)::

    ℓ_i = −(1/|P(i)|)·Σ_{p∈P(i)} s_ip/τ + log Σ_{k∉P(i)∪{i}} e^{s_ik/τ}

mean over the V·N anchors (with two views: ℓ_i = −s_ip/τ + log Σ_{k∉{i,p}} e^{s_ik/τ}). The torch
path walks row chunks and forms the whole gradient there, as NT-Xent's does: with the softmax q_ik
over the negatives, dℓ_i/ds_ik = q_ik/τ for negatives and −1/(|P(i)|·τ) for positives.
"""

from __future__ import annotations

from functools import partial

import torch

from . import common
from .common import PrecomputedGrad, check_rows
from .normalize import EPS, normalize_rows
from .spec import FixedTemperatureLoss, LossSpec, softmax_temperature

# The same τ as simclr's NT-Xent, so that the two compare at equal settings (the paper reports DCL
# less sensitive to τ than NT-Xent).
TAU = 0.2


def dcl_chunked(
    zhat: torch.Tensor,
    *,
    temperature: float,
    n_views: int,
    compute_grad: bool = True,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and dL/dzhat of DCL over normalised view-major rows ``zhat`` (M, D); one (rows × M)
    buffer per chunk, turned in place from logits into the negatives' exponentials."""
    m = zhat.shape[0]
    work = torch.float64 if zhat.dtype == torch.float64 else torch.float32
    zf = zhat.to(work)
    inv_tau = 1.0 / temperature
    offsets = torch.arange(1, n_views, device=zhat.device) * (m // n_views)
    loss = zf.new_zeros(())
    dz = None
    if compute_grad:  # the positives' part, −(2/((V−1)τ))·Σ_{p∈P(i)} ẑ_p: s_ip enters ℓ_i and ℓ_p
        dz = zf.view(n_views, m // n_views, -1).sum(0).repeat(n_views, 1).sub_(zf)
        dz.mul_(-2.0 * inv_tau / (n_views - 1))
    step = chunk_rows or max(1, 4 * common.CHUNK_ELEMENTS // m)
    for start in range(0, m, step):
        stop = min(m, start + step)
        rows = zf[start:stop]
        e = torch.mm(rows, zf.T).mul_(inv_tau)
        positives = (torch.arange(start, stop, device=zhat.device)[:, None] + offsets) % m
        pos_logits = e.gather(1, positives)
        e.diagonal(offset=start).fill_(float("-inf"))
        e.scatter_(1, positives, float("-inf"))  # decoupled: no positive in the denominator
        peak = e.amax(1, keepdim=True)
        e.sub_(peak).exp_()
        total = e.sum(1, keepdim=True)
        loss += (peak + total.log() - pos_logits.mean(1, keepdim=True)).sum()
        if dz is not None:
            scale = inv_tau / total
            dz[start:stop] += torch.mm(e, zf).mul_(scale)
            dz += torch.mm((rows * scale).T, e).T  # s_ik = s_ki: the column side of each pair
        del e
    inv = 1.0 / m
    if dz is not None:
        dz *= inv
    return loss * inv, dz


def dcl_loss(
    z: torch.Tensor, temperature: float = TAU, *, n_views: int = 2, normalize: bool = True
) -> torch.Tensor:
    """DCL of z (n_views·N, D), view-major → scalar (torch path on any device)."""
    check_rows(z, n_views)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z.shape[0] // n_views < 2:
        raise ValueError("DCL needs at least 2 images per batch: with one, no row has a negative")
    zhat = normalize_rows(z) if normalize else z
    return PrecomputedGrad.apply(partial(dcl_chunked, temperature=float(temperature), n_views=n_views), zhat)


def dcl_loss_reference(z: torch.Tensor, temperature: float = TAU, *, n_views: int = 2) -> torch.Tensor:
    """The plain autograd formulation over the materialised (M, M) logits (any dtype)."""
    m = z.shape[0]
    zhat = torch.nn.functional.normalize(z, dim=1, eps=EPS)
    logits = zhat @ zhat.T / temperature
    image = torch.arange(m, device=z.device) % (m // n_views)
    same = image[:, None] == image[None, :]
    positives = same & ~torch.eye(m, dtype=torch.bool, device=z.device)
    denominator = torch.logsumexp(logits.masked_fill(same, float("-inf")), dim=1)
    return (denominator - (logits * positives).sum(1) / (n_views - 1)).mean()


class DCLLoss(FixedTemperatureLoss):
    """DCL as a module with a fixed temperature (no learnable state)."""

    title = "DCL"
    loss = staticmethod(dcl_loss)

    def __init__(self, temperature: float = TAU, *, n_views: int = 2) -> None:
        super().__init__(temperature, n_views=n_views)


SPEC = LossSpec(
    summary="DCL: NT-Xent without the positive in the denominator, τ 0.2",
    build=lambda *, n_views, temperature: DCLLoss(temperature, n_views=n_views),
    function=lambda z, labels=None, *, n_views=2, impl="auto", **p: dcl_loss(
        z, p["temperature"], n_views=n_views
    ),
    reference=lambda z, labels=None, *, n_views=2, **p: dcl_loss_reference(
        z, p["temperature"], n_views=n_views
    ),
    params={"temperature": softmax_temperature(TAU)},
)
