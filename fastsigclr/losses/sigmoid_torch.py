"""The torch path of the sigmoid losses: one block of rows against columns, strip by strip, with
the arguments and returns of the fused kernel's block (``fastsigclr.kernels``), on any device.

Three kinds of block (``pairs``), for logits a_ij = t·⟨r_i, c_j⟩ + b, each term scaled by inv_m:

- ``"self"``: cols is rows (SigCLR, one rank's own rows). Each unordered pair is evaluated once:
  strip I holds rows I against columns from I's first row on, its leading square kept above the
  diagonal, and G·Z_J goes into the rows of I while Gᵀ·Z_I goes into the rows of J. Pairs i = j
  are skipped; positives where i ≡ j (mod n_per_view).
- ``"cross"``: SigCLR's rows against another rank's block; every pair a negative. The mirrored
  block (those columns' rank against these rows) is in the loss too and has the same G, so
  ∂L/∂rows counts each pair twice and no gradient travels between ranks.
- ``"two_tower"``: SigLIP's images (rows) against texts (cols): positives where i = j (with
  ``positives``; False for another rank's texts), ∂L/∂cols with ``grad_cols``.

What a strip costs, beyond its matmuls: one sigmoid and one sum over its (rows × cols) buffer (two
more passes on steps that compute the loss). ∂L/∂t = Σ G∘S is not summed over the buffer but
read off the products afterwards, Σ_i ⟨r_i, (G·C)_i⟩, as the kernel does; the positives and the
skipped pairs lie on a few diagonals of each strip and are corrected through diagonal views.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

# Elements per strip: 2²⁰ (4 MiB of fp32; 128 rows at 2N = 8192). Every strip is swept four to six
# times beyond its products, and strips that stay nearer the cache pay off: on 2 shared x86-64
# cores, one thread, D = 128, fp32, median of paired calls against open_clip's SigLipLoss, the
# loss at 2N = 8192 took 2.87 s in strips of 2²⁰ elements, 3.10 s of 2¹⁹, 3.54 s of 2²¹ (the
# package-wide CHUNK_ELEMENTS); at 2N = 4096 1.08 s, 1.13 s and 1.16 s.
STRIP_ELEMENTS = 1 << 20
Pairs = Literal["self", "cross", "two_tower"]
PAIRS = ("self", "cross", "two_tower")
Block = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]


def _positive_offsets(pairs: str, n_per_view: int | None, start: int, height: int, width: int) -> list[int]:
    """Diagonals (offsets into the strip) that hold positive pairs; the strip's row 0 is row
    ``start`` and its column 0 is column ``start`` ("self") or 0 (otherwise)."""
    if pairs == "two_tower":
        return [start] if start < width else []
    if pairs == "self":  # j − i = k·n for k ≥ 1: only those above the diagonal are kept
        return list(range(n_per_view, width, n_per_view))
    return []


def _strip_terms(
    a: torch.Tensor, positives: list[int], upper: bool, compute_loss: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Logits ``a`` (rows × cols), turned in place into G = σ(a) − [positive] (0 on and below the
    diagonal of the leading square with ``upper``), and the sum of the loss terms, softplus(a) for
    negatives and softplus(−a) for positives (None without compute_loss).

    The positives' logits are negated first, so that both their loss term and their weight
    σ(a) − 1 = −σ(−a) come without cancellation: softplus(a) − a at a = 10 keeps 2% of
    softplus(−10) = 4.5e-5 in fp32 (its spacing at 10 is 9.5e-7)."""
    height = a.shape[0]
    for offset in positives:
        a.diagonal(offset).neg_()
    loss = None
    if compute_loss:
        loss = F.softplus(a[:, height:] if upper else a).sum()
        if upper:
            loss += F.softplus(a[:, :height]).triu(1).sum()
    g = a.sigmoid_()
    if upper:
        _clear_lower(g[:, :height])
    for offset in positives:
        g.diagonal(offset).neg_()
    return loss, g


def _clear_lower(square: torch.Tensor) -> None:
    """Zero the diagonal and everything below it, in place (the mirrored half of the square)."""
    rows = torch.arange(square.shape[0], device=square.device)
    square.masked_fill_(rows[:, None] >= rows[None, :], 0)


def sigmoid_block_chunked(
    rows: torch.Tensor,
    cols: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    n_per_view: int | None,
    inv_m: float,
    pairs: Pairs,
    positives: bool = True,
    grad_rows: bool = True,
    grad_cols: bool = False,
    compute_loss: bool = True,
    deterministic: bool = False,
    chunk_rows: int | None = None,
) -> Block:
    """One block of a sigmoid loss, anchors ``rows`` (M, D) against ``cols`` (MC, D): the torch
    twin of the kernel's block (see the module docstring for ``pairs``).

    Returns (loss, ∂L/∂rows, ∂L/∂cols, ∂L/∂t, ∂L/∂b) of this block, computed in fp32 (fp64 for
    fp64 rows); loss None without compute_loss, the gradients None unless grad_rows / grad_cols.
    Nothing of M×MC elements is allocated: strips of chunk_rows rows (default: about
    STRIP_ELEMENTS elements each). deterministic: accepted for the kernel's signature; this
    path always is (no atomics, a fixed order of sums), on CUDA too: addmm, elementwise ops,
    diagonal views and full sums, none of them among the ops torch.use_deterministic_algorithms
    reports; its matmuls are deterministic with CUBLAS_WORKSPACE_CONFIG (``--deterministic``).
    """
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    work = torch.float64 if rows.dtype == torch.float64 else torch.float32
    zr = rows.to(work)
    zc = zr if pairs == "self" else cols.to(work)
    t = logit_scale.detach().to(work)
    t_alpha = t.item()  # addmm's alpha is a number: read once, not once per strip (a sync on CUDA)
    b = logit_bias.detach().to(work).expand(1, 1)
    m, mc = zr.shape[0], zc.shape[0]
    step = chunk_rows or max(1, STRIP_ELEMENTS // mc)
    raw_rows = torch.zeros_like(zr)  # G·C (the full G): read for ∂L/∂t even without grad_rows
    raw_cols = raw_rows if pairs == "self" else (torch.zeros_like(zc) if grad_cols else None)
    loss, db = zr.new_zeros(()), zr.new_zeros(())
    for start in range(0, m, step):
        stop = min(m, start + step)
        first = start if pairs == "self" else 0
        a = torch.addmm(b, zr[start:stop], zc[first:].T, alpha=t_alpha)
        offsets = _positive_offsets(pairs, n_per_view, start, stop - start, mc - first) if positives else []
        terms, g = _strip_terms(a, offsets, pairs == "self", compute_loss)
        if terms is not None:
            loss += terms
        db += g.sum()
        raw_rows[start:stop].addmm_(g, zc[first:])
        if raw_cols is not None:
            raw_cols[first:].addmm_(g.T, zr[start:stop])
        del a, g  # before the next strip allocates its own
    twice = 2.0 if pairs == "self" else 1.0  # the strips hold each unordered pair once
    dt = (zr * raw_rows).sum() * inv_m  # Σ G∘S = Σ_i ⟨r_i, (G·C)_i⟩
    scale = inv_m * t * (1.0 if pairs == "two_tower" else 2.0)  # SigCLR's G is symmetric
    d_rows = raw_rows.mul_(scale) if grad_rows else None
    d_cols = raw_cols.mul_(scale) if grad_cols and pairs != "self" else None
    return (loss * twice * inv_m if compute_loss else None), d_rows, d_cols, dt, db * twice * inv_m
