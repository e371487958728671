"""Fused pairwise sigmoid loss: forward and the whole backward in one blockwise pass.

A program owns a block I of anchor rows, a range of column blocks (grid axis 1, so that small
batches still fill the GPU) and a feature slice of dZ (grid axis 2, for D > 128). Per column block
J it forms S = Z_I Z_Jᵀ, treats every pair as a negative, r = 2¹⁵·σ(t·S + b) (plus softplus terms
on logging steps), and accumulates R Z_J, with Z_J loaded once for both dots. The O(M·V) pairs
that are not negatives (i = j, and the positives i ≡ j mod N) are corrected once per row after
the sweep; 2t/M and ∂L/∂t = Σ G∘S = Σ_i ⟨ẑ_i, (GZ)_i⟩ come at the end. Nothing M×M is ever
written to memory. The launcher returns the loss and the gradients with respect to the (already
normalised) rows, the bias and the temperature.

Here: the launchers. The kernel is in sigmoid_kernel.py, its per-pair arithmetic in
sigmoid_terms.py, its tile configurations (and what tools/compile_kernels.py compiles of it) in
sigmoid_tuning.py.
"""

from __future__ import annotations

import torch
import triton

from .sigmoid_kernel import MAX_BLOCK_D, _sigmoid_pairwise_kernel
from .sigmoid_tuning import autotuned_kernel
from .tiles import INTERPRET, dot_settings, feature_tiling


def _grad_storage_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16 keeps fp32's exponent range, so storing its gradient in bf16 loses nothing that a
    # loss scaler relies on. fp16 would flush the unscaled gradient (~1e-5 at M = 8192) to
    # zero before GradScaler multiplies it back up, so fp16 inputs keep an fp32 gradient.
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def default_col_splits(m: int, mc: int, device: torch.device) -> int:
    """Column ranges per row block: enough programs for two waves on the GPU's SMs with 128-row
    blocks (2N = 8192 has 64 row blocks for 132 SMs on an H100: 5 ranges), each range at least
    64 columns. One in the interpreter, whose cost grows with the number of programs."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, triton.cdiv(m, 128)), mc // 64))


def _used_splits(mc: int, block_n: int, col_splits: int) -> int:
    """Grid axis 1: the kernel's column ranges (whole blocks each) that are not empty."""
    span = triton.cdiv(triton.cdiv(mc, block_n), col_splits) * block_n
    return triton.cdiv(mc, span)


def _check_fp32_dot(fp32_dot: str | None) -> None:
    if fp32_dot not in (None, "ieee", "tf32", "bf16"):
        raise ValueError(f"fp32_dot must be None, 'ieee', 'tf32' or 'bf16', got {fp32_dot!r}")


def _dot_flags(dtype: torch.dtype, fp32_dot: str | None) -> dict:
    """PRECISION, CAST_BF16 and UPCAST. fp32 rows: fp32_dot None follows torch's allow_tf32 (like
    torch's matmuls); 'bf16' rounds the operands to bf16 in the kernel (tensor cores at bf16 rate,
    error measured in tests/test_sigmoid_loss.py). 16-bit rows ignore it. The interpreter holds
    16-bit operands in fp32 (UPCAST): its bf16 tl.dot is wrong, and its fp16 one runs without
    BLAS (76 ms for one 512×512×64 tile); products of 16-bit values are exact in fp32 either way."""
    cast = dtype == torch.float32 and fp32_dot == "bf16"
    precision = dot_settings(dtype)["PRECISION"]
    if dtype == torch.float32 and fp32_dot in ("ieee", "tf32"):
        precision = fp32_dot
    upcast = INTERPRET and (cast or dtype != torch.float32)
    return {"PRECISION": "ieee" if cast else precision, "CAST_BF16": cast, "UPCAST": upcast}


def sigmoid_pairwise_triton(
    zhat: torch.Tensor,
    temperature: torch.Tensor,
    bias: torch.Tensor,
    n_views: int,
    *,
    compute_grad: bool = True,
    compute_loss: bool = True,
    fp32_dot: str | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    col_splits: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Loss and gradients of the pairwise sigmoid loss in one fused pass.

    zhat: (M, D) normalised rows (view-major, M = n_views·N), fp32/fp16/bf16, unit stride in D.
    temperature, bias: 0-d tensors on zhat's device.
    Returns (loss, dL/dzhat, dL/dt, dL/db); the loss and scalar gradients are fp32 0-d tensors,
    the loss is None without compute_loss (its terms are then skipped: 8.6 instead of 24 SASS
    instructions per pair, bf16 at D = 128) and dL/dzhat None without compute_grad.
    fp32_dot: how fp32 rows meet the tensor cores (see _dot_flags).
    block_*, col_splits override the autotuned tile sizes and the column ranges per row block
    (tests use them to exercise tails and the reduction over column ranges).
    """
    m = zhat.shape[0]
    return sigmoid_block_triton(
        zhat,
        zhat,
        temperature,
        bias,
        n_per_view=m // n_views,
        inv_m=1.0 / m,
        self_block=True,
        compute_grad=compute_grad,
        compute_loss=compute_loss,
        fp32_dot=fp32_dot,
        block_m=block_m,
        block_n=block_n,
        block_k=block_k,
        col_splits=col_splits,
    )


def sigmoid_block_triton(
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
    dz_dtype: torch.dtype | None = None,
    fp32_dot: str | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
    col_splits: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One block of the loss: anchors ``rows`` (M, D) against ``cols`` (MC, D), both normalised.

    self_block: cols is rows (skip i = j; positives where i ≡ j mod n_per_view); otherwise every
    pair is a negative (another rank's images). Every term is scaled by inv_m = 1 / (rows of the
    whole batch). Returns this block's (loss, ∂L/∂rows, ∂L/∂t, ∂L/∂b); ∂L/∂rows is stored in
    dz_dtype (default: bf16 for bf16 rows, else fp32).
    """
    _check_fp32_dot(fp32_dot)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    if cols.stride(1) != 1:
        cols = cols.contiguous()
    if cols.dtype != rows.dtype or cols.shape[1] != rows.shape[1]:
        raise ValueError(
            f"cols {cols.dtype} {tuple(cols.shape)} do not match rows {rows.dtype} {tuple(rows.shape)}"
        )
    (m, d), mc = rows.shape, cols.shape[0]
    block_k, num_k = feature_tiling(d, MAX_BLOCK_D) if block_k is None else (block_k, triton.cdiv(d, block_k))
    splits = col_splits or default_col_splits(m, mc, rows.device)
    out_dtype = dz_dtype or _grad_storage_dtype(rows.dtype)
    accumulate = splits > 1 and compute_grad
    if not compute_grad:
        dz = rows.new_empty(0)  # never touched
    elif accumulate:
        dz = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
    else:
        dz = torch.empty(rows.shape, dtype=out_dtype, device=rows.device)
    t = temperature.detach().to(torch.float32).contiguous()
    b = bias.detach().to(torch.float32).contiguous()
    rowsum = torch.zeros((3, m), dtype=torch.float32, device=rows.device)
    args = (rows, cols, dz, rowsum, t, b, m, mc, n_per_view, d, rows.stride(0), cols.stride(0))
    args += (dz.stride(0) if compute_grad else 0, splits, float(inv_m))
    flags = dict(BLOCK_K=block_k, NUM_K=num_k, BLOCK_DO=block_k, SELF_BLOCK=self_block)
    flags.update(COMPUTE_LOSS=compute_loss, COMPUTE_GRAD=compute_grad, ACCUMULATE=accumulate)
    flags.update(_dot_flags(rows.dtype, fp32_dot))
    _launch(args, flags, (block_m, block_n), (m, mc, splits, num_k if compute_grad else 1))
    loss, db, dt = rowsum.sum(dim=1).unbind()
    if accumulate:
        dz = dz.to(out_dtype)
    return (loss if compute_loss else None), (dz if compute_grad else None), dt, db


def _launch(args: tuple, flags: dict, blocks: tuple, sizes: tuple[int, int, int, int]) -> None:
    """The autotuned kernel, or fixed tiles when blocks (BLOCK_M, BLOCK_N) are given. sizes: rows,
    columns, column ranges requested, feature slices of dZ. Grid: row blocks × the non-empty
    column ranges × feature slices."""
    m, mc, splits, d_splits = sizes
    if blocks == (None, None):

        def grid(meta: dict) -> tuple[int, int, int]:
            return triton.cdiv(m, meta["BLOCK_M"]), _used_splits(mc, meta["BLOCK_N"], splits), d_splits

        autotuned_kernel[grid](*args, **flags)
    else:
        bm, bn = blocks[0] or 64, blocks[1] or 64
        grid = (triton.cdiv(m, bm), _used_splits(mc, bn, splits), d_splits)
        _sigmoid_pairwise_kernel[grid](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=4, **flags)
