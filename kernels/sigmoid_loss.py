"""Fused pairwise sigmoid loss: forward and the whole backward in one blockwise pass.

For row block I and column block J: S = Z_I Z_Jᵀ, a = t·S + b, the softplus loss terms,
G = (σ(a) − [positive]) / M, dZ_I += G Z_J, db += ΣG, dt += Σ G∘S, all accumulated in fp32.
Nothing M×M is ever written to memory; the launcher returns the loss and the gradients with
respect to the (already normalised) rows, the bias and the temperature.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .tiles import INTERPRET, dot_settings, feature_tiling, similarity_tile

# Widest feature tile kept in registers: a 128×256 fp32 accumulator is already 128 registers
# per thread at 8 warps. Wider D is split across a second grid axis (S is recomputed per split).
MAX_BLOCK_D = 256


def _configs() -> list[triton.Config]:
    if INTERPRET:
        # The interpreter's cost grows with programs × iterations: large blocks on small problems.
        # multi-config autotuning needs a GPU to time candidates, so one config here.
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]
    # Candidate set for Hopper/Ampere; not yet tuned on hardware (issue 8 records the winners).
    # Compiled for sm_90 (tools/compile_kernels.py, triton 3.6): 128×64, 3 stages takes 48 KiB of
    # shared memory for bf16 at D = 128 and 160 KiB at D = 512, but 224 KiB for fp32 at D = 128 and
    # 672 KiB at D = 512, which no GPU can launch: the small configs at the end are for fp32.
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (128, 64, 8, 3),
            (128, 128, 8, 2),
            (64, 64, 4, 3),
            (64, 128, 4, 3),
            (128, 32, 4, 4),
            (64, 32, 4, 2),
            (32, 32, 4, 2),
        ]
    ]


# Shared memory an H100 block may use. Configs over it fail to compile and the autotuner skips
# them; the last two candidates exist so fp32 operands always have one that fits.
H100_SHARED_MEMORY = 227 * 1024


@triton.jit
def _sigmoid_pairwise_kernel(
    Z,  # (M, D) normalised anchor rows, view-major; any of fp32/fp16/bf16
    ZC,  # (MC, D) normalised columns: Z itself, or another rank's rows (same dtype)
    DZ,  # (M, D) out: ∂L/∂Z (not yet scaled by grad_output)
    ROWSUM,  # (3, M) fp32 out: per-row sums of loss terms / M, of G, of G∘S (written by split 0)
    T,  # pointer to the temperature (fp32 scalar)
    B,  # pointer to the bias (fp32 scalar)
    M,
    MC,
    N_PER_VIEW,
    D,
    stride_z,
    stride_zc,
    stride_dz,
    INV_M,  # 1 / (rows of the whole batch): 1/M here, 1/(world·M) for a distributed block
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # feature tile for S = Z_I Z_Jᵀ
    NUM_K: tl.constexpr,  # ceil(D / BLOCK_K)
    BLOCK_DO: tl.constexpr,  # feature slice of dZ owned by this program (grid axis 1)
    SELF_BLOCK: tl.constexpr,  # columns are the anchors: skip i = j, positives at i ≡ j (mod N)
    COMPUTE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter only: its bf16 tl.dot is wrong, so compute in fp32
    PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 operands (ignored for 16-bit ones)
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    t = tl.load(T).to(tl.float32)
    b = tl.load(B).to(tl.float32)
    inv_m = INV_M

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    row_img = rows % N_PER_VIEW
    offs_k = tl.arange(0, BLOCK_K)
    offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)

    if NUM_K == 1:
        zi = tl.load(
            Z + rows[:, None] * stride_z + offs_k[None, :],
            mask=row_ok[:, None] & (offs_k[None, :] < D),
            other=0.0,
        )
        if UPCAST:
            zi = zi.to(tl.float32)

    dz_acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    loss_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    g_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    gs_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)

    for start_n in range(0, MC, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < MC
        if NUM_K == 1:
            zj_t = tl.load(
                ZC + cols[None, :] * stride_zc + offs_k[:, None],
                mask=col_ok[None, :] & (offs_k[:, None] < D),
                other=0.0,
            )
            if UPCAST:
                zj_t = zj_t.to(tl.float32)
            s = tl.dot(zi, zj_t, input_precision=PRECISION)
        else:
            s = similarity_tile(
                Z,
                rows,
                row_ok,
                stride_z,
                ZC,
                cols,
                col_ok,
                stride_zc,
                D,
                BLOCK_M,
                BLOCK_N,
                BLOCK_K,
                NUM_K,
                UPCAST,
                PRECISION,
            )

        if SELF_BLOCK:
            valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
            pos = valid & (row_img[:, None] == (cols % N_PER_VIEW)[None, :])
        else:  # another rank's images: every pair is a negative
            valid = row_ok[:, None] & col_ok[None, :]
            pos = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int1)
        a = t * s + b
        # One exp serves both the softplus and the sigmoid.
        e = tl.exp(-tl.abs(a))
        r = 1.0 / (1.0 + e)
        sig = tl.where(a >= 0, r, e * r)
        g = tl.where(valid, sig - pos.to(tl.float32), 0.0) * inv_m
        g_acc += tl.sum(g, axis=1)
        gs_acc += tl.sum(g * s, axis=1)
        if COMPUTE_LOSS:
            # softplus(−y·a) = max(−y·a, 0) + log1p(e); log(1 + e) rounds 1 + e and loses all
            # digits of e below 6e-8, so small e takes four Taylor terms (error < e⁵/5 ≤ 2e-11).
            x = tl.where(pos, -a, a)
            l1p = tl.where(e < 1e-2, e * (1.0 - e * (0.5 - e * (1.0 / 3.0 - 0.25 * e))), tl.log(1.0 + e))
            loss_acc += tl.sum(tl.where(valid, tl.maximum(x, 0.0) + l1p, 0.0), axis=1)
        if COMPUTE_GRAD:
            zj = tl.load(
                ZC + cols[:, None] * stride_zc + offs_do[None, :],
                mask=col_ok[:, None] & (offs_do[None, :] < D),
                other=0.0,
            )
            if UPCAST:
                zj = zj.to(tl.float32)
            dz_acc = tl.dot(g.to(zj.dtype), zj, dz_acc, input_precision=PRECISION)

    if COMPUTE_GRAD:
        # ∂L/∂ẑ_i = t·Σ_j (g_ij + g_ji) ẑ_j = 2t·Σ_j g_ij ẑ_j, since g is symmetric; so the
        # rows of one rank need only their own rows of G, whoever holds the columns.
        tl.store(
            DZ + rows[:, None] * stride_dz + offs_do[None, :],
            (2.0 * t * dz_acc).to(DZ.dtype.element_ty),
            mask=row_ok[:, None] & (offs_do[None, :] < D),
        )
    # Per-row rather than per-block sums: the buffer's shape must not depend on the autotuned
    # BLOCK_M, or slots written by a candidate config during tuning would survive as stale sums.
    if pid_d == 0:
        tl.store(ROWSUM + rows, loss_acc * inv_m, mask=row_ok)
        tl.store(ROWSUM + M + rows, g_acc, mask=row_ok)
        tl.store(ROWSUM + 2 * M + rows, gs_acc, mask=row_ok)


_autotuned_kernel = triton.autotune(configs=_configs(), key=["M", "MC", "D"])(_sigmoid_pairwise_kernel)


def _grad_storage_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16 keeps fp32's exponent range, so storing its gradient in bf16 loses nothing that a
    # loss scaler relies on. fp16 would flush the unscaled gradient (~1e-5 at M = 8192) to
    # zero before GradScaler multiplies it back up, so fp16 inputs keep an fp32 gradient.
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def sigmoid_pairwise_triton(
    zhat: torch.Tensor,
    temperature: torch.Tensor,
    bias: torch.Tensor,
    n_views: int,
    *,
    compute_grad: bool = True,
    compute_loss: bool = True,
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Loss and gradients of the pairwise sigmoid loss in one fused pass.

    zhat: (M, D) normalised rows (view-major, M = n_views·N), fp32/fp16/bf16, unit stride in D.
    temperature, bias: 0-d tensors on zhat's device.
    Returns (loss, dL/dzhat, dL/dt, dL/db); the loss and scalar gradients are fp32 0-d tensors,
    the loss is None without compute_loss and dL/dzhat None without compute_grad.
    block_* override the autotuned tile sizes (tests use them to exercise tails).
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
        block_m=block_m,
        block_n=block_n,
        block_k=block_k,
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
    block_m: int | None = None,
    block_n: int | None = None,
    block_k: int | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One block of the loss: anchors ``rows`` (M, D) against ``cols`` (MC, D), both normalised.

    self_block: cols is rows (skip i = j; positives where i ≡ j mod n_per_view); otherwise every
    pair is a negative (another rank's images). Every term is scaled by inv_m = 1 / (rows of the
    whole batch). Returns this block's (loss, ∂L/∂rows, ∂L/∂t, ∂L/∂b); ∂L/∂rows is stored in
    dz_dtype (default: bf16 for bf16 rows, else fp32).
    """
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    if cols.stride(1) != 1:
        cols = cols.contiguous()
    if cols.dtype != rows.dtype or cols.shape[1] != rows.shape[1]:
        raise ValueError(
            f"cols {cols.dtype} {tuple(cols.shape)} do not match rows {rows.dtype} {tuple(rows.shape)}"
        )
    m, d = rows.shape
    block_k, num_k = feature_tiling(d, MAX_BLOCK_D) if block_k is None else (block_k, triton.cdiv(d, block_k))
    block_do = block_k
    n_splits = triton.cdiv(d, block_do) if compute_grad else 1
    # Without a gradient the kernel never touches DZ, so the rows stand in for it.
    dz = (
        torch.empty(rows.shape, dtype=dz_dtype or _grad_storage_dtype(rows.dtype), device=rows.device)
        if compute_grad
        else rows
    )
    t = temperature.detach().to(torch.float32).contiguous()
    b = bias.detach().to(torch.float32).contiguous()
    args = dict(
        BLOCK_K=block_k,
        NUM_K=num_k,
        BLOCK_DO=block_do,
        SELF_BLOCK=self_block,
        COMPUTE_LOSS=compute_loss,
        COMPUTE_GRAD=compute_grad,
        **dot_settings(rows.dtype),
    )

    rowsum = torch.empty((3, m), dtype=torch.float32, device=rows.device)
    common = (rows, cols, dz, rowsum, t, b, m, cols.shape[0], n_per_view, d)
    common += (rows.stride(0), cols.stride(0), dz.stride(0), float(inv_m))
    if block_m is None and block_n is None:
        _autotuned_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), n_splits)](*common, **args)
    else:
        bm, bn = block_m or 64, block_n or 64
        grid = (triton.cdiv(m, bm), n_splits)
        _sigmoid_pairwise_kernel[grid](*common, BLOCK_M=bm, BLOCK_N=bn, num_warps=4, **args)
    loss, db, dt = rowsum.sum(dim=1).unbind()
    return (loss if compute_loss else None), (dz if compute_grad else None), dt, db
