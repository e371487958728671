"""Supervised softmax-family contrastive losses: TCL, with SupCon and SimCLR's NT-Xent as special cases
(docs/design.md §5). Positives P(i) are the rows sharing i's label (its other views when there
are no labels), i excluded; negatives N(i) are the rest::

    ℓ_i = −(1/|P(i)|) Σ_{p∈P(i)} log( e^{s_ip/τ} / D_i ),
    D_i = Σ_{p∈P(i)} e^{s_ip/τ} + k1·Σ_{p∈P(i)} e^{−s_ip} + k2·Σ_{n∈N(i)} e^{s_in/τ}

k1 = 0, k2 = 1 is SupCon; SupCon with image ids as labels is NT-Xent. The loss is the mean of ℓ_i
over anchors that have a positive. The torch paths walk row chunks and form the whole gradient
there, so nothing M×M is kept for backward: ``tcl_chunked`` serves SupCon and TCL (NT-Xent has
its own lean path in ``ntxent``).
"""

from __future__ import annotations

import torch

from . import common
from .common import PrecomputedGrad, check_matrix, check_rows, fixed_temperature
from .normalize import EPS, normalize_rows
from .softmax_chunks import ChunkTerms, softmax_chunks, work_copy
from .spec import HyperParam, LossSpec, softmax_temperature

# docs/design.md §2.3: τ = 0.1, k1 = 5000, k2 = 1 (k1 = 0, k2 = 1 is SupCon).
TAU, K1, K2 = 0.1, 5000.0, 1.0


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
    """Loss and dL/dzhat of TCL over rows ``zhat`` (M, D) with per-row ``labels`` (M,).

    Each row's exponentials are shifted by its largest exponent: none overflows, and the largest
    is 1, so no row's sum underflows (a constant shift of 1/τ took log 0 = −inf at τ = 0.007 for
    rows whose similarities all lay well below 1, and overflowed for unnormalised rows)."""
    zf = work_copy(zhat)
    _, labels = torch.unique(labels, return_inverse=True)  # any ids (−1, 10¹²): bincount takes 0..K−1
    n_pos = torch.bincount(labels)[labels] - 1
    valid = n_pos > 0
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("no anchor has a positive: every label must occur at least twice in the batch")
    step = chunk_rows or max(1, common.CHUNK_ELEMENTS // zf.shape[0])
    terms = _tcl_terms(labels, n_pos, valid, temperature, k1, k2)
    return softmax_chunks(
        zf, terms, step=step, inv=1.0 / n_valid, dz=torch.zeros_like(zf) if compute_grad else None
    )


def _tcl_terms(
    labels: torch.Tensor, n_pos: torch.Tensor, valid: torch.Tensor, temperature: float, k1: float, k2: float
) -> ChunkTerms:
    """TCL's chunk: its row losses and the weights dℓ_i/ds_ij themselves (no per-row scale)."""
    inv_tau = 1.0 / temperature

    def terms(zf: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor, None]:
        s = zf[start:stop] @ zf.T
        same = labels[start:stop, None] == labels[None, :]
        same.diagonal(offset=start).fill_(False)  # the anchor itself is neither positive nor negative
        e = s * inv_tau
        e.diagonal(offset=start).fill_(float("-inf"))  # e^{s/τ} = 0 for the anchor itself
        if not k2:  # the negatives weigh nothing: no term, and no part in the shift
            e.masked_fill_(~same, float("-inf"))
        # Each row's shift: its largest exponent among the terms that count, e^{−s} of positives
        # (no /τ) among them with k1.
        shift = e.amax(1)
        if k1:
            shift = torch.maximum(shift, s.masked_fill(~same, float("inf")).amin(1).neg_())
        shift = shift.nan_to_num_(neginf=0.0)  # a row with no term: not an anchor (ok below)
        ew = e.sub_(shift[:, None]).exp_()  # in place: one M-wide temporary less per chunk
        if k2 and k2 != 1:
            ew.mul_(torch.where(same, 1.0, k2).to(zf.dtype))
        down = torch.exp(-s - shift[:, None]).mul_(same) if k1 else None
        denom = ew.sum(1) + (k1 * down.sum(1) if down is not None else 0.0)
        pos = same.to(zf.dtype)
        p = n_pos[start:stop].clamp_min(1).to(zf.dtype)
        ok = valid[start:stop]
        row_loss = -(s * pos).sum(1) * inv_tau / p + torch.log(denom) + shift
        # dℓ_i/ds_ij = −[j∈P]/(|P|τ) + ([j∈P](e_ij/τ − k1·e^{−s_ij}) + [j∈N]·k2·e_ij/τ) / D_i
        g = ew.mul_(inv_tau)
        if down is not None:
            g.sub_(down.mul_(k1))
        g.div_(denom[:, None]).sub_(pos.mul_(inv_tau / p[:, None]))
        g[~ok] = 0
        return row_loss[ok].sum(), g, None

    return terms


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
    temperature = fixed_temperature(temperature)
    if k1 < 0 or k2 < 0:
        raise ValueError(f"k1 and k2 must be ≥ 0, got k1={k1}, k2={k2}")
    rows = row_labels(z, labels, n_views)
    zhat = normalize_rows(z) if normalize else z
    options = {"labels": rows, "temperature": float(temperature), "k1": float(k1), "k2": float(k2)}
    return PrecomputedGrad.apply(tcl_chunked, options, zhat)


def tcl_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = TAU,
    k1: float = K1,
    k2: float = K2,
    *,
    n_views: int = 2,
    normalize: bool = True,
) -> torch.Tensor:
    """Tuned Contrastive Learning loss of z (n_views·N, D), view-major → scalar.

    labels: None (self-supervised: an image's other views are its positives), (N,) per image, or
    (n_views·N,) per row: integer class ids, compared for equality only (−1 is a class like any
    other: leave rows without a class out). k1 weighs e^{−s} of positives (no /τ, as the paper's
    code), k2 the negatives.
    """
    return _loss(z, labels, temperature, k1, k2, n_views, normalize)


def supcon_loss(
    z: torch.Tensor, labels: torch.Tensor, temperature: float = TAU, *, normalize: bool = True
) -> torch.Tensor:
    """Supervised contrastive loss: TCL with k1 = 0, k2 = 1. labels: (M,) per row, or per image
    (the number of views is then M / len(labels))."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError("supcon_loss needs labels: a 1-D integer tensor, one label per row or per image")
    return _loss(z, labels, temperature, 0.0, 1.0, 2, normalize)


def tcl_loss_reference(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = TAU,
    k1: float = K1,
    k2: float = K2,
    *,
    n_views: int = 2,
) -> torch.Tensor:
    """The plain autograd formulation over the materialised (M, M) similarities (any dtype)."""
    rows = row_labels(z, labels, n_views)
    zhat = torch.nn.functional.normalize(z, dim=1, eps=EPS)
    s = zhat @ zhat.T
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    pos = (rows[:, None] == rows[None, :]) & ~eye
    neg = rows[:, None] != rows[None, :]
    e = torch.exp(s / temperature)
    denom = (e * pos).sum(1) + k1 * (torch.exp(-s) * pos).sum(1) + k2 * (e * neg).sum(1)
    n_pos = pos.sum(1)
    row_loss = -(s * pos).sum(1) / temperature / n_pos.clamp_min(1) + torch.log(denom)
    return row_loss[n_pos > 0].mean()


class TCLLoss(torch.nn.Module):
    """TCL (SupCon with k1 = 0, k2 = 1) as a module with fixed hyper-parameters (no learnable state)."""

    def __init__(self, temperature: float = TAU, k1: float = K1, k2: float = K2, *, n_views: int = 2) -> None:
        super().__init__()
        temperature = fixed_temperature(temperature)
        self.tau, self.k1, self.k2, self.n_views = float(temperature), float(k1), float(k2), n_views
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, *, compute_loss: bool = True
    ) -> torch.Tensor:
        """z: (n_views·N, D) view-major; labels (N,) for supervised SupCon/TCL, None for views only.
        compute_loss is ignored: the torch path forms value and gradient together."""
        return tcl_loss(z, labels, self.tau, self.k1, self.k2, n_views=self.n_views)

    def log_values(self) -> dict[str, float]:
        return {"temperature": self.tau}

    def extra_repr(self) -> str:
        return f"temperature={self.tau}, k1={self.k1}, k2={self.k2}, n_views={self.n_views}"


TEMPERATURE = softmax_temperature(TAU)


def _tcl_params(params: dict) -> dict:
    return {"temperature": params["temperature"], "k1": params.get("k1", 0.0), "k2": params.get("k2", 1.0)}


def _function(
    z: torch.Tensor, labels: torch.Tensor | None = None, *, n_views: int = 2, impl: str = "auto", **params
):
    """impl is accepted for the registry's common signature: TCL has the torch path only."""
    return tcl_loss(z, labels, **_tcl_params(params), n_views=n_views)


def _reference(z: torch.Tensor, labels: torch.Tensor | None = None, *, n_views: int = 2, **params):
    return tcl_loss_reference(z, labels, **_tcl_params(params), n_views=n_views)


SUPCON = LossSpec(
    summary="SupCon: softmax over same-class positives, τ 0.1 (labels; --no-use-labels: views)",
    build=lambda *, n_views, temperature: TCLLoss(temperature, 0.0, 1.0, n_views=n_views),
    function=_function,
    reference=_reference,
    params={"temperature": TEMPERATURE},
    supervised=True,
)
TCL = LossSpec(
    summary="TCL: SupCon with k1·e^(−s) on positives and k2 on negatives, τ 0.1, k1 5000, k2 1",
    build=lambda *, n_views, temperature, k1, k2: TCLLoss(temperature, k1, k2, n_views=n_views),
    function=_function,
    reference=_reference,
    params={
        "temperature": TEMPERATURE,
        "k1": HyperParam(K1, "TCL weight of e^(-s) on positives", {"ge": 0}),
        "k2": HyperParam(K2, "TCL weight of the negatives", {"ge": 0}),
    },
    supervised=True,
)
