"""Decoupled contrastive loss (DCL; Yeh et al., ECCV 2022): NT-Xent with the positives removed
from the denominator. For view-major rows with positives P(i) (the other views of i's image)::

    ℓ_i = −(1/|P(i)|)·Σ_{p∈P(i)} s_ip/τ + log Σ_{k∉P(i)∪{i}} e^{s_ik/τ}

mean over the V·N anchors (with two views: ℓ_i = −s_ip/τ + log Σ_{k∉{i,p}} e^{s_ik/τ}). The torch
path walks row chunks and forms the whole gradient there, as NT-Xent's does: with the softmax q_ik
over the negatives, dℓ_i/ds_ik = q_ik/τ for negatives and −1/(|P(i)|·τ) for positives.
"""

from __future__ import annotations

import torch

from . import common
from .common import PrecomputedGrad, check_rows, fixed_temperature
from .normalize import EPS, normalize_rows
from .softmax_chunks import log_sum_exp_terms, softmax_chunks, view_positives, work_copy
from .spec import FixedTemperatureLoss, fixed_temperature_spec

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
    zf = work_copy(zhat)
    dz = view_positives(zf, n_views, temperature) if compute_grad else None
    step = chunk_rows or max(1, 4 * common.CHUNK_ELEMENTS // zf.shape[0])  # as NT-Xent's
    terms = log_sum_exp_terms(temperature, n_views, decoupled=True)
    return softmax_chunks(zf, terms, step=step, inv=1.0 / zf.shape[0], dz=dz)


def dcl_loss(
    z: torch.Tensor, temperature: float = TAU, *, n_views: int = 2, normalize: bool = True, impl: str = "auto"
) -> torch.Tensor:
    """DCL of z (n_views·N, D), view-major → scalar (torch path on any device; impl "auto" or
    "torch": DCL has no Triton kernel)."""
    if impl not in ("auto", "torch"):
        raise ValueError(f"DCL has the torch path only: pass impl='torch' or 'auto', got {impl!r}")
    check_rows(z, n_views)
    temperature = fixed_temperature(temperature)
    if z.shape[0] // n_views < 2:
        raise ValueError("DCL needs at least 2 images per batch: with one, no row has a negative")
    zhat = normalize_rows(z) if normalize else z
    return PrecomputedGrad.apply(dcl_chunked, {"temperature": float(temperature), "n_views": n_views}, zhat)


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
    default_temperature = TAU


SPEC = fixed_temperature_spec(
    "DCL: NT-Xent without the positive in the denominator, τ 0.2", DCLLoss, dcl_loss_reference, min_images=2
)
