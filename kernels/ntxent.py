"""Blockwise NT-Xent (SimCLR): forward with an online log-sum-exp per row (nothing M×M stored),
backward by recomputing tiles from the saved log-sum-exp.

Row i's loss is lse_i − (1/(V−1))·Σ_{p∈P(i)} s_ip/τ with lse_i over all k ≠ i. Its gradient
G_ij = (softmax_ij − [j∈P(i)]/(V−1))/(τ·M) is not symmetric, so dZ = G·Z + Gᵀ·Z takes two passes
of one kernel: TRANSPOSED=False owns rows i (G·Z), TRANSPOSED=True owns columns j (Gᵀ·Z) and adds.
Tiles are fixed at 64×64 (not yet tuned on a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launches
from .tiles import CompileCase, dot_settings, feature_tiling, similarity_tile

NEG_BIG = tl.constexpr(-1.0e30)  # finite "−∞": rows without a valid column never give exp(−∞ + ∞)
# The widest feature tile: at 256 the backward needs more shared memory than a block may use on an
# H100/H200 (232,448 bytes): 344,064 (fp32, D = 130) and 238,080 (bf16, D = 256, transposed), compiled
# for sm_90 with triton 3.6. At 128 the widest need 180,736 (fp32) and 123,392 (bf16), D = 128;
# compile_cases() compiles the widest tile of every dtype and the compile tool fails past the limit.
MAX_FEATURE_TILE = 128


@triton.jit
def _ntxent_fwd_kernel(
    Z,  # (M, D) normalised rows, view-major
    LSE,  # (M,) fp32 out: log Σ_{k≠i} e^{s_ik/τ}
    ROWLOSS,  # (M,) fp32 out: ℓ_i
    M,
    N_PER_VIEW,
    D,
    stride_z,
    inv_tau,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_K: tl.constexpr,
    N_VIEWS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    img = rows % N_PER_VIEW
    m_i = tl.full((BLOCK_M,), NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    pos_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start in range(0, M, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_ok = cols < M
        s = similarity_tile(
            Z,
            rows,
            row_ok,
            stride_z,
            Z,
            cols,
            col_ok,
            stride_z,
            D,
            BLOCK_M,
            BLOCK_N,
            BLOCK_K,
            NUM_K,
            UPCAST,
            PRECISION,
        )
        logits = s * inv_tau
        valid = row_ok[:, None] & col_ok[None, :] & (rows[:, None] != cols[None, :])
        pos = valid & (img[:, None] == (cols % N_PER_VIEW)[None, :])
        masked = tl.where(valid, logits, NEG_BIG)
        m_new = tl.maximum(m_i, tl.max(masked, axis=1))
        p = tl.where(valid, tl.exp(masked - m_new[:, None]), 0.0)
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(p, axis=1)
        m_i = m_new
        pos_sum += tl.sum(tl.where(pos, logits, 0.0), axis=1)
    lse = m_i + tl.log(tl.where(row_ok, l_i, 1.0))  # rows past M have no terms (l = 0)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(ROWLOSS + rows, lse - pos_sum / (N_VIEWS - 1), mask=row_ok)


@triton.jit
def _ntxent_bwd_kernel(
    Z,
    LSE,
    DZ,  # (M, D) fp32: written (ACCUMULATE=False) or added to (ACCUMULATE=True)
    M,
    N_PER_VIEW,
    D,
    stride_z,
    stride_dz,
    inv_tau,
    scale,  # 1 / (τ·M)
    BLOCK_M: tl.constexpr,  # rows of dZ owned by this program
    BLOCK_N: tl.constexpr,  # the other side's tile
    BLOCK_K: tl.constexpr,
    NUM_K: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    N_VIEWS: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    own = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    own_ok = own < M
    offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    if not TRANSPOSED:
        lse_own = tl.load(LSE + own, mask=own_ok, other=0.0)
    for start in range(0, M, BLOCK_N):
        other = start + tl.arange(0, BLOCK_N)
        other_ok = other < M
        # Softmax rows are r, columns c: r = own without TRANSPOSED, r = other with it.
        if TRANSPOSED:
            s = similarity_tile(
                Z,
                other,
                other_ok,
                stride_z,
                Z,
                own,
                own_ok,
                stride_z,
                D,
                BLOCK_N,
                BLOCK_M,
                BLOCK_K,
                NUM_K,
                UPCAST,
                PRECISION,
            )
            lse = tl.load(LSE + other, mask=other_ok, other=0.0)
            r, r_ok, c, c_ok = other, other_ok, own, own_ok
        else:
            s = similarity_tile(
                Z,
                own,
                own_ok,
                stride_z,
                Z,
                other,
                other_ok,
                stride_z,
                D,
                BLOCK_M,
                BLOCK_N,
                BLOCK_K,
                NUM_K,
                UPCAST,
                PRECISION,
            )
            lse = lse_own
            r, r_ok, c, c_ok = own, own_ok, other, other_ok
        valid = r_ok[:, None] & c_ok[None, :] & (r[:, None] != c[None, :])
        pos = valid & ((r % N_PER_VIEW)[:, None] == (c % N_PER_VIEW)[None, :])
        p = tl.where(valid, tl.exp(s * inv_tau - lse[:, None]), 0.0)
        # 1/(τM) is applied to the sum, after the dot: at M = 8192, τ = 0.2 a scaled negative
        # weight is ~7.5e-8, at fp16's subnormal floor (5.96e-8), while p and 1/(V−1) are ≤ 1.
        g = p - pos.to(tl.float32) / (N_VIEWS - 1)
        zo = tl.load(
            Z + other[:, None] * stride_z + offs_do[None, :],
            mask=other_ok[:, None] & (offs_do[None, :] < D),
            other=0.0,
        )
        if UPCAST:
            zo = zo.to(tl.float32)
        if TRANSPOSED:
            acc = tl.dot(tl.trans(g).to(zo.dtype), zo, acc, input_precision=PRECISION)
        else:
            acc = tl.dot(g.to(zo.dtype), zo, acc, input_precision=PRECISION)
    acc = acc * scale
    out = DZ + own[:, None] * stride_dz + offs_do[None, :]
    mask = own_ok[:, None] & (offs_do[None, :] < D)
    if ACCUMULATE:
        acc += tl.load(out, mask=mask, other=0.0)
    tl.store(out, acc, mask=mask)


def nt_xent_triton(
    zhat: torch.Tensor,
    *,
    temperature: float,
    n_views: int,
    compute_grad: bool = True,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NT-Xent of normalised rows zhat (M, D), view-major → (loss, dL/dzhat in fp32 or None)."""
    if zhat.stride(1) != 1:
        zhat = zhat.contiguous()
    m, d = zhat.shape
    bk, num_k = feature_tiling(d, MAX_FEATURE_TILE) if block_k is None else (block_k, triton.cdiv(d, block_k))
    common = dict(
        BLOCK_K=bk,
        NUM_K=num_k,
        N_VIEWS=n_views,
        **dot_settings(zhat.dtype),
    )
    inv_tau = 1.0 / temperature
    lse = torch.zeros(m, dtype=torch.float32, device=zhat.device)
    row_loss = torch.zeros(m, dtype=torch.float32, device=zhat.device)
    args = (zhat, lse, row_loss, m, m // n_views, d, zhat.stride(0), inv_tau)
    _run(
        _ntxent_fwd_kernel, (triton.cdiv(m, block_m),), args, dict(BLOCK_M=block_m, BLOCK_N=block_n, **common)
    )
    loss = row_loss.sum() / m
    if not compute_grad:
        return loss, None
    dz = torch.zeros((m, d), dtype=torch.float32, device=zhat.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(d, bk))
    for transposed in (False, True):
        args = (zhat, lse, dz, m, m // n_views, d, zhat.stride(0), dz.stride(0), inv_tau, inv_tau / m)
        consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DO=bk, TRANSPOSED=transposed, **common)
        _run(_ntxent_bwd_kernel, grid, args, dict(consts, ACCUMULATE=transposed))
    return loss, dz


def _run(kernel, grid: tuple, args: tuple, consts: dict) -> None:
    """Launch (triton's default warps and stages), recording the compiled launch when asked
    (kernels/launches.py: on a GPU UPCAST is off)."""
    if launches.recording():
        name = "ntxent fwd" if kernel is _ntxent_fwd_kernel else "ntxent bwd"
        launches.record(name, args, dict(consts, UPCAST=False), [launches.DEFAULT_CONFIG])
    if not launches.record_only():
        kernel[grid](*args, **consts)


def compile_cases(quick: bool = False) -> list[CompileCase]:
    """What tools/compile_kernels.py compiles for sm_90: the forward and both backward passes at
    the launcher's 64×64 tiles and triton's default 4 warps and 3 stages, M = 8192, bf16 and fp32, at
    D = 128 (one feature tile of MAX_FEATURE_TILE, the widest; shared memory grows with the tile's
    width and element size, so fp16 needs what bf16 does); without quick also D = 256 (bf16) and
    D = 130 (fp32), two feature tiles."""
    m, cases = 8192, []
    sizes = {"bf16": (128,) if quick else (128, 256), "fp32": (128,) if quick else (128, 130)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for d in sizes[name]:
            cases += _launches(name, dtype, m, d)
    return cases


def _launches(name: str, dtype: torch.dtype, m: int, d: int) -> list[CompileCase]:
    """The three launches of nt_xent_triton at (dtype, M, D) with its default tiles."""
    bk, num_k = feature_tiling(d, MAX_FEATURE_TILE)
    shared = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=bk, NUM_K=num_k, N_VIEWS=2, UPCAST=False, PRECISION="ieee")
    common = dict(dtype=name, D=d, BLOCK_M=64, BLOCK_N=64, BLOCK_K=bk)
    # Pairs of one inner-loop iteration (with NUM_K > 1 the hottest loop is over features: no count),
    # and the tensor-core FLOPs per pair of its dots: S over the padded features, then G·Z.
    pairs = 64 * 64 if num_k == 1 else 0
    fwd = (dtype, torch.float32, torch.float32, m, m // 2, d, d, 1 / 0.2)
    meta = dict(kernel="ntxent fwd", dot_flops_per_pair=2 * bk * num_k, **common)
    cases = [CompileCase(_ntxent_fwd_kernel, fwd, shared, 4, 3, meta, name == "bf16", pairs)]
    bwd = (dtype, torch.float32, torch.float32, m, m // 2, d, d, d, 1 / 0.2, 1 / (0.2 * m))
    for transposed in (False, True):
        consts = dict(shared, BLOCK_DO=bk, TRANSPOSED=transposed, ACCUMULATE=transposed)
        meta = dict(kernel="ntxent bwd", variant=f"transposed={transposed}", **common)
        meta["dot_flops_per_pair"] = 2 * bk * num_k + 2 * bk
        cases.append(CompileCase(_ntxent_bwd_kernel, bwd, consts, 4, 3, meta, name == "bf16", pairs))
    return cases
