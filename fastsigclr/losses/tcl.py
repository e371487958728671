"""Softmax-family contrastive losses: TCL, with SupCon and SimCLR's NT-Xent as special cases
(docs/design.md §5). Positives P(i) are the rows sharing i's label (its other views when there
are no labels), i excluded; negatives N(i) are the rest::

    ℓ_i = −(1/|P(i)|) Σ_{p∈P(i)} log( e^{s_ip/τ} / D_i ),
    D_i = Σ_{p∈P(i)} e^{s_ip/τ} + k1·Σ_{p∈P(i)} e^{−s_ip} + k2·Σ_{n∈N(i)} e^{s_in/τ}

k1 = 0, k2 = 1 is SupCon; SupCon with image ids as labels is NT-Xent. The loss is the mean of ℓ_i
over anchors that have a positive. The torch paths walk row chunks and form the whole gradient
there, so nothing M×M is kept for backward: ``tcl_chunked`` serves all three, ``nt_xent_chunked``
is NT-Xent's lean special case (known positives, one softmax per row).
"""

from __future__ import annotations

from functools import partial

import torch

from . import common
from .common import Impl, PrecomputedGrad, check_matrix, check_rows, kernel, resolve_impl
from .normalize import EPS, normalize_rows


def row_labels(z: torch.Tensor, labels: torch.Tensor | None, n_views: int) -> torch.Tensor:
    """(M,) int64 labels, one per row: image ids when ``labels`` is None, labels given per image
    (length M / n_views, repeated for each view) or per row (length M)."""
    m = z.shape[0]
    if labels is None:
        return torch.arange(m // n_views, device=z.device).repeat(n_views)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise TypeError("labels must be a 1-D integer tensor (one label per image or per row)")
    if labels.device != z.device:
        raise ValueError(f"tensors on different devices: z is on {z.device}, labels on {labels.device}")
    if labels.numel() == m:
        return labels.long()
    if labels.numel() and m % labels.numel() == 0:
        return labels.long().repeat(m // labels.numel())
    raise ValueError(
        f"labels has {labels.numel()} entries; z has {m} rows: give one label per row or per image"
    )


def tcl_chunked(
    zhat: torch.Tensor,
    *,
    labels: torch.Tensor,
    temperature: float,
    k1: float,
    k2: float,
    compute_grad: bool = True,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and dL/dzhat of TCL over normalised rows ``zhat`` (M, D) with per-row ``labels`` (M,).

    Exponentials are shifted by 1/τ (s ≤ 1, so e^{s/τ − 1/τ} ≤ 1): no overflow at any τ."""
    m = zhat.shape[0]
    work = torch.float64 if zhat.dtype == torch.float64 else torch.float32
    zf = zhat.to(work)
    inv_tau = 1.0 / temperature
    shift = inv_tau
    n_pos = torch.bincount(labels)[labels] - 1
    valid = n_pos > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("no anchor has a positive: every label must occur at least twice in the batch")
    loss = zf.new_zeros(())
    dz = torch.zeros_like(zf) if compute_grad else None
    step = chunk_rows or max(1, common.CHUNK_ELEMENTS // m)
    for start in range(0, m, step):
        stop = min(m, start + step)
        s = zf[start:stop] @ zf.T
        same = labels[start:stop, None] == labels[None, :]
        same.diagonal(offset=start).fill_(False)  # the anchor itself is neither positive nor negative
        e = torch.exp(s * inv_tau - shift)
        e.diagonal(offset=start).zero_()
        weight = torch.where(same, 1.0, k2).to(work)
        weight.diagonal(offset=start).zero_()
        down = torch.exp(-s - shift) * same if k1 else None  # e^{−s} on positives (no /τ)
        denom = (e * weight).sum(1) + (k1 * down.sum(1) if down is not None else 0.0)
        pos = same.to(work)
        p = n_pos[start:stop].clamp_min(1).to(work)
        ok = valid[start:stop]
        row_loss = -(s * pos).sum(1) * inv_tau / p + torch.log(denom) + shift
        loss += row_loss[ok].sum()
        if dz is not None:
            # dℓ_i/ds_ij = −[j∈P]/(|P|τ) + ([j∈P](e_ij/τ − k1·e^{−s_ij}) + [j∈N]·k2·e_ij/τ) / D_i
            g = e * weight * inv_tau
            if down is not None:
                g -= k1 * down
            g /= denom[:, None]
            g -= pos * (inv_tau / p[:, None])
            g[~ok] = 0
            dz[start:stop] += g @ zf
            dz += g.T @ zf[start:stop]  # s_ij = s_ji: the column side of each pair
    inv = 1.0 / n_valid
    if dz is not None:
        dz *= inv
    return loss * inv, dz


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
    exponentials; the softmax's 1/Σ and the 1/τ scale the (rows × D) operands instead, and the
    positives' part, −(2/((V−1)τ))·Σ_{p∈P(i)} ẑ_p, is summed once per image: per chunk, three
    products and four passes over the buffer (max, subtract, exp, sum), against about three such
    matrices kept by plain autograd."""
    m = zhat.shape[0]
    work = torch.float64 if zhat.dtype == torch.float64 else torch.float32
    zf = zhat.to(work)
    inv_tau = 1.0 / temperature
    offsets = torch.arange(1, n_views, device=zhat.device) * (m // n_views)
    loss = zf.new_zeros(())
    dz = None
    if compute_grad:  # the positives' part: the other views of each row's image
        dz = zf.view(n_views, m // n_views, -1).sum(0).repeat(n_views, 1).sub_(zf)
        dz.mul_(-2.0 * inv_tau / (n_views - 1))
    # One (rows × M) temporary where the sigmoid path keeps about three: chunks of 4·CHUNK_ELEMENTS
    # (32 MiB of fp32; one chunk up to 2N = 2896). Measured on 2 shared x86-64 cores (torch 2.13,
    # D = 128, median of 7): with 2 threads every extra chunk costs (2N = 2048: 126 ms whole, 185 in
    # 1024-row chunks, 264 in 256-row ones; 2N = 4096: 655 whole, 733 in 2048-row chunks, 1381 in
    # 256-row ones), with 1 thread chunk size matters little (2N = 4096: 363-478 ms from 256 rows to
    # all). So: the fewest chunks the memory bound allows.
    step = chunk_rows or max(1, 4 * common.CHUNK_ELEMENTS // m)
    for start in range(0, m, step):
        stop = min(m, start + step)
        rows = zf[start:stop]
        e = torch.addmm(loss, rows, zf.T, beta=0, alpha=inv_tau)  # logits s/τ (beta=0: nothing added)
        e.diagonal(offset=start).fill_(float("-inf"))
        peak = e.amax(1, keepdim=True)
        positives = (torch.arange(start, stop, device=zhat.device)[:, None] + offsets) % m
        pos_logits = e.gather(1, positives)
        e.sub_(peak).exp_()  # e^{logit − max}; the diagonal becomes 0
        total = e.sum(1, keepdim=True)
        loss += (peak + total.log() - pos_logits.mean(1, keepdim=True)).sum()
        if dz is not None:
            scale = inv_tau / total  # softmax = e / total, and dℓ/ds carries 1/τ
            dz[start:stop] += torch.mm(e, zf).mul_(scale)
            dz += torch.mm((rows * scale).T, e).T  # s_ij = s_ji: the column side of each pair
        del e  # before the next chunk's buffer exists: one at a time
    inv = 1.0 / m
    if dz is not None:
        dz *= inv
    return loss * inv, dz


def _loss(
    z: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    k1: float,
    k2: float,
    n_views: int,
    normalize: bool,
) -> torch.Tensor:
    """labels None: positives are an image's other views (z view-major with n_views views)."""
    if labels is None:
        check_rows(z, n_views)
    else:
        check_matrix(z)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if k1 < 0 or k2 < 0:
        raise ValueError(f"k1 and k2 must be ≥ 0, got k1={k1}, k2={k2}")
    rows = row_labels(z, labels, n_views)
    zhat = normalize_rows(z) if normalize else z
    backend = partial(tcl_chunked, labels=rows, temperature=float(temperature), k1=float(k1), k2=float(k2))
    return PrecomputedGrad.apply(backend, zhat)


def tcl_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.1,
    k1: float = 5000.0,
    k2: float = 1.0,
    *,
    n_views: int = 2,
    normalize: bool = True,
) -> torch.Tensor:
    """Tuned Contrastive Learning loss of z (n_views·N, D), view-major → scalar.

    labels: None (self-supervised: an image's other views are its positives), (N,) per image, or
    (n_views·N,) per row. k1 weighs e^{−s} of positives (no /τ, as the paper's code), k2 the negatives.
    """
    return _loss(z, labels, temperature, k1, k2, n_views, normalize)


def supcon_loss(
    z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, *, normalize: bool = True
) -> torch.Tensor:
    """Supervised contrastive loss: TCL with k1 = 0, k2 = 1. labels: (M,) per row, or per image
    (the number of views is then M / len(labels))."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError("supcon_loss needs labels: a 1-D integer tensor, one label per row or per image")
    return _loss(z, labels, temperature, 0.0, 1.0, 2, normalize)


def nt_xent_loss(
    z: torch.Tensor,
    temperature: float = 0.2,
    *,
    n_views: int = 2,
    normalize: bool = True,
    impl: Impl = "auto",
) -> torch.Tensor:
    """SimCLR's NT-Xent of z (n_views·N, D), view-major → scalar: for each anchor, cross-entropy
    of its positives against all other rows (mean over positives when n_views > 2)."""
    check_rows(z, n_views)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    zhat = normalize_rows(z) if normalize else z
    launch = nt_xent_chunked if resolve_impl(impl, z) == "torch" else kernel("nt_xent_triton")
    backend = partial(launch, temperature=float(temperature), n_views=n_views)
    return PrecomputedGrad.apply(backend, zhat)


def nt_xent_loss_reference(z: torch.Tensor, temperature: float = 0.2, *, n_views: int = 2) -> torch.Tensor:
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


class ContrastiveLoss(torch.nn.Module):
    """NT-Xent, SupCon or TCL as a module with fixed hyper-parameters (no learnable state)."""

    def __init__(
        self, kind: str, temperature: float, *, k1: float = 5000.0, k2: float = 1.0, n_views: int = 2
    ) -> None:
        super().__init__()
        if kind not in ("nt_xent", "supcon", "tcl"):
            raise ValueError(f"kind must be nt_xent, supcon or tcl, got {kind!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kind, self.tau, self.k1, self.k2, self.n_views = kind, float(temperature), k1, k2, n_views
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """z: (n_views·N, D) view-major; labels (N,) for supervised SupCon/TCL, None for views only."""
        if self.kind == "nt_xent":
            return nt_xent_loss(z, self.tau, n_views=self.n_views)
        k1, k2 = (0.0, 1.0) if self.kind == "supcon" else (self.k1, self.k2)
        return tcl_loss(z, labels, self.tau, k1, k2, n_views=self.n_views)

    def extra_repr(self) -> str:
        extra = f", k1={self.k1}, k2={self.k2}" if self.kind == "tcl" else ""
        return f"{self.kind}, temperature={self.tau}{extra}, n_views={self.n_views}"
