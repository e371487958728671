"""The fused sigmoid loss kernel (see sigmoid_loss.py for what it computes and how it is
launched): the sweep over column blocks, the per-row corrections of the pairs that are not
negatives, and the output.
"""

import triton
import triton.language as tl

from .sigmoid_terms import G_SCALE, INV_G_SCALE, LN2, LOG2E, dot_weight, negative_weight, softplus2
from .tiles import INTERPRET, as_operand, bf16_values, similarity_tile

# Widest feature tile: one tile serves S and dZ up to D = 128. A 256-wide dZ accumulator (128
# fp32 registers per thread) spilled 1-2 KB per thread in every candidate at D = 256 (sm_90,
# triton 3.6), so wider D loops over 128-feature steps for S and splits dZ into 128-wide slices
# on grid axis 2 (S is recomputed per slice: 1.5x the FLOPs of one pass at D = 256). The
# interpreter has no registers to spill: one tile up to 256 there halves its programs at D = 130.
MAX_BLOCK_D = 256 if INTERPRET else 128


@triton.jit
def _sweep_block(
    Z,
    ZC,
    zi,
    rows,
    row_ok,
    cols,
    stride_z,
    stride_zc,
    MC,
    D,
    pid_d,
    t2,
    b2,
    dz_acc,
    r_acc,
    l_acc,
    gs_acc,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_K: tl.constexpr,
    BLOCK_DO: tl.constexpr,
    TAIL: tl.constexpr,
    COMPUTE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_BF16: tl.constexpr,
):
    """One column block, every pair as a negative: S, row sums of r (and of the loss terms), and
    R·Z_J into dz_acc, or, without the gradient, row sums of r∘S. When D fits one tile, Z_J is
    loaded once and serves both dots (through tl.trans for S). TAIL masks columns ≥ MC: they
    load as zero rows of Z_J, so they add nothing to R·Z_J or r∘S, only to the row sums."""
    col_ok = cols < MC
    if NUM_K == 1:
        offs_k = tl.arange(0, BLOCK_K)
        mask = offs_k[None, :] < D
        if TAIL:
            mask = mask & col_ok[:, None]
        zd = as_operand(
            tl.load(ZC + cols[:, None] * stride_zc + offs_k[None, :], mask=mask, other=0.0), CAST_BF16, UPCAST
        )
        s = tl.dot(zi, tl.trans(zd), input_precision=PRECISION)
    else:
        s = similarity_tile(
            Z, rows, row_ok, stride_z, ZC, cols, col_ok, stride_zc, D,
            BLOCK_M, BLOCK_N, BLOCK_K, NUM_K, UPCAST, PRECISION, CAST_BF16,
        )  # fmt: skip
        offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
        mask = col_ok[:, None] & (offs_do[None, :] < D)
        zd = as_operand(
            tl.load(ZC + cols[:, None] * stride_zc + offs_do[None, :], mask=mask, other=0.0),
            CAST_BF16,
            UPCAST,
        )
    x, r = negative_weight(s, t2, b2)
    if TAIL:
        r = tl.where(col_ok[None, :], r, 0.0)
    r_acc += tl.sum(r, axis=1)
    if COMPUTE_LOSS:
        terms = softplus2(x, r)
        if TAIL:
            terms = tl.where(col_ok[None, :], terms, 0.0)
        l_acc += tl.sum(terms, axis=1)
    if COMPUTE_GRAD:
        dz_acc = tl.dot(dot_weight(r, ZC, CAST_BF16, UPCAST), zd, dz_acc, input_precision=PRECISION)
    else:
        gs_acc += tl.sum(r * s, axis=1)
    return dz_acc, r_acc, l_acc, gs_acc


@triton.jit
def _row_dots(
    Z,
    rows_a,
    rows_b,
    ok,
    stride_z,
    D,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_K: tl.constexpr,
    UPCAST: tl.constexpr,
    CAST_BF16: tl.constexpr,
):
    """⟨z_a, z_b⟩ row by row in fp32, over the operand values the dots saw."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for kb in tl.static_range(NUM_K):
        ks = kb * BLOCK_K + offs_k
        mask = ok[:, None] & (ks[None, :] < D)
        a = tl.load(Z + rows_a[:, None] * stride_z + ks[None, :], mask=mask, other=0.0)
        b = tl.load(Z + rows_b[:, None] * stride_z + ks[None, :], mask=mask, other=0.0)
        a = as_operand(a, CAST_BF16, UPCAST).to(tl.float32)
        b = as_operand(b, CAST_BF16, UPCAST).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
    return acc


@triton.jit
def _load_slice(Z, rows, ok, stride_z, offs_do, D, UPCAST: tl.constexpr, CAST_BF16: tl.constexpr):
    mask = ok[:, None] & (offs_do[None, :] < D)
    z = tl.load(Z + rows[:, None] * stride_z + offs_do[None, :], mask=mask, other=0.0)
    return as_operand(z, CAST_BF16, UPCAST).to(tl.float32)


@triton.jit
def _correct_self_pairs(
    Z,
    rows,
    row_ok,
    stride_z,
    M,
    N_PER_VIEW,
    D,
    offs_do,
    t2,
    b2,
    dz_acc,
    r_acc,
    l_acc,
    gs_acc,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_K: tl.constexpr,
    COMPUTE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    UPCAST: tl.constexpr,
    CAST_BF16: tl.constexpr,
):
    """The sweep counted i = j and the positives as negatives. The diagonal has no term: remove
    its weight r_ii, as rounded for the dot, and its softplus(a_ii). A positive's weight is
    r − 2¹⁵ and its term softplus(−a) = softplus(a) − a: add x_ip = −a·log2 e to the loss, and
    replace its rounded weight by r − 2¹⁵ in fp32. Subtracting 2¹⁵ from the 16-bit weight instead
    would leave its rounding error, up to 2⁻⁹·2¹⁵ for bf16, on a weight that tends to 0 as σ → 1."""
    s_ii = _row_dots(Z, rows, rows, row_ok, stride_z, D, BLOCK_M, BLOCK_K, NUM_K, UPCAST, CAST_BF16)
    x_ii, r_ii = negative_weight(s_ii, t2, b2)
    n_views = M // N_PER_VIEW
    r_acc -= r_ii + (n_views - 1) * G_SCALE
    if COMPUTE_LOSS:
        l_acc -= softplus2(x_ii, r_ii)
    if COMPUTE_GRAD:
        w_ii = dot_weight(r_ii, Z, CAST_BF16, UPCAST).to(tl.float32)
        dz_acc -= w_ii[:, None] * _load_slice(Z, rows, row_ok, stride_z, offs_do, D, UPCAST, CAST_BF16)
    else:
        gs_acc -= r_ii * s_ii
    for view in range(1, n_views):
        pos = (rows + view * N_PER_VIEW) % M
        s_ip = _row_dots(Z, rows, pos, row_ok, stride_z, D, BLOCK_M, BLOCK_K, NUM_K, UPCAST, CAST_BF16)
        x_ip, r_ip = negative_weight(s_ip, t2, b2)
        if COMPUTE_LOSS:
            l_acc += x_ip
        if COMPUTE_GRAD:
            fix = r_ip - dot_weight(r_ip, Z, CAST_BF16, UPCAST).to(tl.float32) - G_SCALE
            dz_acc += fix[:, None] * _load_slice(Z, pos, row_ok, stride_z, offs_do, D, UPCAST, CAST_BF16)
        else:
            gs_acc -= G_SCALE * s_ip
    return dz_acc, r_acc, l_acc, gs_acc


@triton.jit
def _sigmoid_pairwise_kernel(
    Z,  # (M, D) normalised anchor rows, view-major; any of fp32/fp16/bf16
    ZC,  # (MC, D) normalised columns: Z itself, or another rank's rows (same dtype)
    DZ,  # (M, D) out: ∂L/∂Z (not yet scaled by grad_output); fp32 and added to with ACCUMULATE
    ROWSUM,  # (3, M) fp32, zeroed: per-row sums of loss terms, of G and of G∘S are added to it
    T,  # pointer to the temperature (fp32 scalar)
    B,  # pointer to the bias (fp32 scalar)
    M,
    MC,
    N_PER_VIEW,
    D,
    stride_z,
    stride_zc,
    stride_dz,
    COL_SPLITS,  # column ranges requested on grid axis 1 (the grid drops empty ones)
    INV_M,  # 1 / (rows of the whole batch): 1/M here, 1/(world·M) for a distributed block
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # feature tile for S = Z_I Z_Jᵀ
    NUM_K: tl.constexpr,  # ceil(D / BLOCK_K)
    BLOCK_DO: tl.constexpr,  # feature slice of dZ owned by this program (grid axis 2): BLOCK_K
    SELF_BLOCK: tl.constexpr,  # columns are the anchors: no i = j term, positives at i ≡ j (mod N)
    COMPUTE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    ACCUMULATE: tl.constexpr,  # several column ranges add into DZ (atomically)
    UPCAST: tl.constexpr,  # interpreter only: 16-bit operands held in fp32 (see _dot_flags)
    PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 operands (ignored for 16-bit ones)
    CAST_BF16: tl.constexpr,  # fp32 inputs rounded to bf16 operands (tensor cores at bf16 rate)
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_d = tl.program_id(2)
    t = tl.load(T).to(tl.float32)
    t2 = -t * LOG2E
    b2 = -tl.load(B).to(tl.float32) * LOG2E

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    offs_do = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
    zi = rows  # only read when NUM_K == 1
    if NUM_K == 1:
        offs_k = tl.arange(0, BLOCK_K)
        zi = tl.load(
            Z + rows[:, None] * stride_z + offs_k[None, :],
            mask=row_ok[:, None] & (offs_k[None, :] < D),
            other=0.0,
        )
        zi = as_operand(zi, CAST_BF16, UPCAST)

    dz_acc = tl.zeros((BLOCK_M, BLOCK_DO), dtype=tl.float32)
    r_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    l_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    gs_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)

    # Column range of this program: whole blocks, so only the block that ends at MC is masked.
    span = tl.cdiv(tl.cdiv(MC, BLOCK_N), COL_SPLITS) * BLOCK_N
    lo = pid_n * span
    hi = tl.minimum(lo + span, MC)
    full = lo + (hi - lo) // BLOCK_N * BLOCK_N
    for start in range(lo, full, BLOCK_N):
        dz_acc, r_acc, l_acc, gs_acc = _sweep_block(
            Z, ZC, zi, rows, row_ok, start + tl.arange(0, BLOCK_N), stride_z, stride_zc, MC, D, pid_d, t2, b2,
            dz_acc, r_acc, l_acc, gs_acc, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K, BLOCK_DO,
            False, COMPUTE_LOSS, COMPUTE_GRAD, UPCAST, PRECISION, CAST_BF16,
        )  # fmt: skip
    if full < hi:
        dz_acc, r_acc, l_acc, gs_acc = _sweep_block(
            Z, ZC, zi, rows, row_ok, full + tl.arange(0, BLOCK_N), stride_z, stride_zc, MC, D, pid_d, t2, b2,
            dz_acc, r_acc, l_acc, gs_acc, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K, BLOCK_DO,
            True, COMPUTE_LOSS, COMPUTE_GRAD, UPCAST, PRECISION, CAST_BF16,
        )  # fmt: skip

    # Nested: SELF_BLOCK is decided at compile time, pid_n at run time.
    if SELF_BLOCK:  # noqa: SIM102
        if pid_n == 0:
            dz_acc, r_acc, l_acc, gs_acc = _correct_self_pairs(
                Z, rows, row_ok, stride_z, M, N_PER_VIEW, D, offs_do, t2, b2, dz_acc, r_acc, l_acc, gs_acc,
                BLOCK_M, BLOCK_K, NUM_K, COMPUTE_LOSS, COMPUTE_GRAD, UPCAST, CAST_BF16,
            )  # fmt: skip
    _write_out(
        Z, DZ, ROWSUM, rows, row_ok, offs_do, stride_z, stride_dz, M, D, pid_d, t, INV_M,
        dz_acc, r_acc, l_acc, gs_acc, COMPUTE_LOSS, COMPUTE_GRAD, ACCUMULATE, UPCAST, CAST_BF16,
    )  # fmt: skip


@triton.jit
def _write_out(
    Z,
    DZ,
    ROWSUM,
    rows,
    row_ok,
    offs_do,
    stride_z,
    stride_dz,
    M,
    D,
    pid_d,
    t,
    INV_M,
    dz_acc,
    r_acc,
    l_acc,
    gs_acc,
    COMPUTE_LOSS: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    ACCUMULATE: tl.constexpr,
    UPCAST: tl.constexpr,
    CAST_BF16: tl.constexpr,
):
    """dZ_I = 2t·(GZ)_I, and the row sums, with G = r/(2¹⁵·M): ∂L/∂ẑ_i = t·Σ_j (g_ij + g_ji) ẑ_j
    = 2t·Σ_j g_ij ẑ_j since g is symmetric, so the rows of one rank need only their own rows of
    G, whoever holds the columns; and Σ_j g_ij s_ij = ⟨ẑ_i, (GZ)_i⟩ summed over feature slices."""
    scale = INV_M * INV_G_SCALE
    if COMPUTE_GRAD:
        out = dz_acc * (2.0 * t * scale)
        mask = row_ok[:, None] & (offs_do[None, :] < D)
        ptrs = DZ + rows[:, None] * stride_dz + offs_do[None, :]
        if ACCUMULATE:
            tl.atomic_add(ptrs, out, mask=mask, sem="relaxed")
        elif DZ.dtype.element_ty == tl.bfloat16:
            tl.store(ptrs, bf16_values(out, UPCAST).to(tl.bfloat16), mask=mask)
        else:
            tl.store(ptrs, out.to(DZ.dtype.element_ty), mask=mask)
        zi = _load_slice(Z, rows, row_ok, stride_z, offs_do, D, UPCAST, CAST_BF16)
        gs_acc = tl.sum(zi * dz_acc, axis=1)
    # Per-row rather than per-block sums: the buffer's shape must not depend on the autotuned
    # BLOCK_M. Every feature slice adds its share of ⟨ẑ_i, (GZ)_i⟩; slice 0 adds the rest.
    tl.atomic_add(ROWSUM + 2 * M + rows, gs_acc * scale, mask=row_ok, sem="relaxed")
    if pid_d == 0:
        tl.atomic_add(ROWSUM + M + rows, r_acc * scale, mask=row_ok, sem="relaxed")
        if COMPUTE_LOSS:
            tl.atomic_add(ROWSUM + rows, l_acc * (INV_M * LN2), mask=row_ok, sem="relaxed")
