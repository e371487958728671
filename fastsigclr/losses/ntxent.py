"""SimCLR's NT-Xent (docs/design.md §2.2): functional API, module, references and its registry
entry. ℓ_i = −log( e^{s_ip/τ} / Σ_{k≠i} e^{s_ik/τ} ), mean over anchors (and over positives when
n_views > 2). The torch path walks row chunks and forms the whole gradient there; ``"triton"`` runs
the blockwise kernel of ``fastsigclr.kernels`` (online log-sum-exp, tiles recomputed in backward).
"""

from __future__ import annotations

import torch

from . import common
from .common import Impl, PrecomputedGrad, check_rows, fixed_temperature, kernels, resolve_impl
from .normalize import EPS, normalize_rows
from .softmax_chunks import log_sum_exp_terms, softmax_chunks, view_positives, work_copy
from .spec import FixedTemperatureLoss, fixed_temperature_spec

TAU = 0.2  # SimCLR on CIFAR (solo-learn)


def nt_xent_chunked(
    zhat: torch.Tensor,
    *,
    temperature: float,
    n_views: int,
    compute_grad: bool = True,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and dL/dzhat of NT-Xent over normalised view-major rows ``zhat`` (M, D).

    ℓ_i = lse_i − (1/(V−1))·Σ_{p∈P(i)} s_ip/τ, lse_i over k ≠ i; dℓ_i/ds_ij = (softmax_ij −
    [j∈P(i)]/(V−1))/τ. Each chunk holds one (rows × M) buffer, turned in place from logits into
    exponentials (softmax_chunks.log_sum_exp_terms); the softmax's 1/Σ and the 1/τ scale the
    (rows × D) operands instead, and the positives' part, −(2/((V−1)τ))·Σ_{p∈P(i)} ẑ_p, is summed
    once per image: per chunk, three products and four passes over the buffer (max, subtract, exp,
    sum), against about three such matrices kept by plain autograd."""
    zf = work_copy(zhat)
    dz = view_positives(zf, n_views, temperature) if compute_grad else None
    # One (rows × M) temporary where the sigmoid path keeps about three: chunks of 4·CHUNK_ELEMENTS
    # (32 MiB of fp32; one chunk up to 2N = 2896). Measured on 2 shared x86-64 cores (torch 2.13,
    # D = 128, median of 7): with 2 threads every extra chunk costs (2N = 2048: 126 ms whole, 185 in
    # 1024-row chunks, 264 in 256-row ones; 2N = 4096: 655 whole, 733 in 2048-row chunks, 1381 in
    # 256-row ones), with 1 thread chunk size matters little (2N = 4096: 363-478 ms from 256 rows to
    # all). So: the fewest chunks the memory bound allows.
    step = chunk_rows or max(1, 4 * common.CHUNK_ELEMENTS // zf.shape[0])
    terms = log_sum_exp_terms(temperature, n_views, decoupled=False)
    return softmax_chunks(zf, terms, step=step, inv=1.0 / zf.shape[0], dz=dz)


def nt_xent_loss(
    z: torch.Tensor,
    temperature: float = TAU,
    *,
    n_views: int = 2,
    normalize: bool = True,
    impl: Impl = "auto",
) -> torch.Tensor:
    """SimCLR's NT-Xent of z (n_views·N, D), view-major → scalar: for each anchor, cross-entropy
    of its positives against all other rows (mean over positives when n_views > 2)."""
    check_rows(z, n_views)
    temperature = fixed_temperature(temperature)
    zhat = normalize_rows(z) if normalize else z
    backend = nt_xent_chunked if resolve_impl(impl, z) == "torch" else kernels.nt_xent_triton
    return PrecomputedGrad.apply(backend, {"temperature": float(temperature), "n_views": n_views}, zhat)


def nt_xent_loss_reference(z: torch.Tensor, temperature: float = TAU, *, n_views: int = 2) -> torch.Tensor:
    """The plain autograd formulation, the baseline to beat: ``F.cross_entropy`` over the (V·N)²
    similarity logits with the diagonal masked, each anchor's targets its V−1 other views."""
    m = z.shape[0]
    zhat = torch.nn.functional.normalize(z, dim=1, eps=EPS)
    logits = (zhat @ zhat.T / temperature).fill_diagonal_(float("-inf"))
    offsets = torch.arange(1, n_views, device=z.device) * (m // n_views)
    targets = (torch.arange(m, device=z.device)[:, None] + offsets) % m  # (M, V−1)
    if n_views == 2:
        return torch.nn.functional.cross_entropy(logits, targets[:, 0])
    # The same cross-entropy with V−1 targets per row (mean over anchors and their positives); one
    # (M, M, V−1) expanded input to cross_entropy ran 1.5–1.9× slower at 2N = 1024–2048 on a CPU.
    return -torch.nn.functional.log_softmax(logits, dim=1).gather(1, targets).mean()


class NTXentLoss(FixedTemperatureLoss):
    """NT-Xent as a module with a fixed temperature (no learnable state)."""

    title = "NT-Xent"
    loss = staticmethod(nt_xent_loss)
    default_temperature = TAU


SPEC = fixed_temperature_spec(
    "SimCLR: NT-Xent, softmax of the positive against all other rows, τ 0.2",
    NTXentLoss,
    nt_xent_loss_reference,
    kernel="nt_xent_triton",
)
