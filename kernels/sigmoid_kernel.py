"""The fused sigmoid loss kernel: one tile of pairs (the per-pair arithmetic is in
sigmoid_terms.py), a row's sweep over its column tiles, and the program that owns a range of those
sweeps. Its launcher, autograd Function and public functions are in sigmoid.py.

Logits a = logit_scale·⟨ẑ_i, ẑ_j⟩ + logit_bias are formed in the exp2 domain (log2 e folded into
the scale and bias). Every pair of a tile but i = j is first treated as a negative, r = 2¹⁵·σ(a);
the O(M·V) positives are corrected once per row afterwards.

i = j (SELF) is dropped in the sweep, on the tiles that hold it, outside the column loop, which
runs over the others without the test. Added as a negative and subtracted by the correction, the
diagonal's r_ii·s_ii (the largest term of a row's Σ g·s) cancelled in fp32: ∂L/∂logit_scale erred
1.3e-5 of its scale at D = 300, 26 rows (interpreter, fp32), 2.4e-6 this way (fp32's floor there:
Σ|g·s| is 175× |Σ g·s|), and 6.5e-7 against 1.9e-9 at logit_scale 10, logit_bias −10, 24 rows.
Compiled (D = 128 bf16, 128×128, 8 warps, sm_90, triton 3.6) the column loop keeps its 24.7 SASS
per pair and no spills; a per-tile test in the loop spilled 484 bytes per thread (30.6 SASS), the
diagonal tile after the loop 64, the diagonal tile apart from the tail tile 12-16.
"""

import math

import triton
import triton.language as tl

from .sigmoid_terms import G_SCALE, INV_G_SCALE, dot_weight, negative_weight, softplus2, weight_of
from .tiles import INTERPRET, add_rows, load_rows, row_dots

# Widest feature tile. Up to it, one tile serves S and dZ, and a program keeps dZ of its rows in
# registers over its whole sweep. Wider D takes S in a loop over WIDE_BLOCK_K-feature steps and
# adds each tile's dZ slices to memory instead: a 256-wide register accumulator (128 fp32
# registers per thread) spilled 1-2 KB per thread in every candidate at D = 256 (sm_90, triton
# 3.6). The interpreter has no registers to spill: one tile up to 256 halves its work at D = 130.
MAX_BLOCK_D = 256 if INTERPRET else 128
# Feature step of S and width of the dZ slices past one feature tile. 64: 128×128 tiles, 8 warps
# compile without spilling at D = 256-1024 (bf16, sm_90, triton 3.6; 254-255 registers), where
# 128-feature steps of S spilled 20-100 bytes per thread at D = 768-1024. Every feature loop then
# runs D / 64 times, what tools/compile_kernels.py multiplies the loops' SASS by.
WIDE_BLOCK_K = 64

LOG2E = tl.constexpr(1 / math.log(2))
LN2 = tl.constexpr(math.log(2))
# Pair modes (the launcher's `pairs`): cols is rows, positives at i ≡ j (mod N_PER_VIEW), no
# i = j term; every pair a negative; SigLIP's two towers, positives at i = j.
SELF, CROSS, TWO_TOWER = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
PAIR_MODES = {"self": SELF.value, "cross": CROSS.value, "two_tower": TWO_TOWER.value}


@triton.jit
def _add_fix(acc, OUT, out_rows, ok, stride_out, coef, Z, src_rows, stride_z, D, gscale,
             IN_REGISTERS: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_K: tl.constexpr,
             NUM_K: tl.constexpr, CAST_BF16: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """A per-row correction coef·z_src of dZ: into the register accumulator acc (one feature
    tile), or scaled by gscale into OUT's rows, slice by slice."""
    coef = tl.where(ok, coef, 0.0)
    if IN_REGISTERS:
        offs = tl.arange(0, BLOCK_K)
        acc += coef[:, None] * load_rows(Z, src_rows, ok, stride_z, offs, D, CAST_BF16, UPCAST).to(tl.float32)
    else:
        for kb in range(NUM_K):
            offs = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            z = load_rows(Z, src_rows, ok, stride_z, offs, D, CAST_BF16, UPCAST).to(tl.float32)
            add_rows(OUT, out_rows, ok, stride_out, offs, D, (gscale * coef)[:, None] * z, ATOMIC, False)
    return acc


@triton.jit
def _correct_rows(X, Y, DX, DY, rows, row_ok, M, MC, N_PER_VIEW, D, stride_x, stride_y, stride_dx,
                  stride_dy, scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc,
                  BLOCK_K: tl.constexpr, NUM_K: tl.constexpr, PAIRS: tl.constexpr,
                  GRAD_ROWS: tl.constexpr, GRAD_COLS: tl.constexpr, COMPUTE_LOSS: tl.constexpr,
                  ATOMIC_ROWS: tl.constexpr, CAST_BF16: tl.constexpr, UPCAST: tl.constexpr,
                  GS_FROM_DZ: tl.constexpr, IN_REGS: tl.constexpr):  # fmt: skip
    """The sweep counted every pair but i = j (SELF) as a negative. A positive's weight is r − 2¹⁵
    and its term softplus(−a) = softplus(a) − a: add x = −a·log2 e to the loss and replace the
    rounded weight by r − 2¹⁵ in fp32. Subtracting 2¹⁵ from the 16-bit weight instead would leave
    its rounding error, up to 2⁻⁹·2¹⁵ for bf16, on a weight that tends to 0 as σ → 1. TWO_TOWER:
    the positive is (i, i)."""
    regs: tl.constexpr = IN_REGS
    if PAIRS == SELF:
        r_acc -= (M // N_PER_VIEW - 1) * G_SCALE
        for view in range(1, M // N_PER_VIEW):
            pos = (rows + view * N_PER_VIEW) % M
            s_ip = row_dots(X, X, rows, pos, row_ok, stride_x, stride_x, D, BLOCK_K, NUM_K, CAST_BF16, UPCAST)
            x_ip, r_ip = negative_weight(s_ip, scale2, bias2)
            if not GS_FROM_DZ:
                gs_acc -= G_SCALE * s_ip
            if COMPUTE_LOSS:
                l_acc += x_ip
            if GRAD_ROWS:
                fix = r_ip - dot_weight(r_ip, X, CAST_BF16, UPCAST).to(tl.float32) - G_SCALE
                dz_acc = _add_fix(dz_acc, DX, rows, row_ok, stride_dx, fix, X, pos, stride_x, D, gscale,
                                  regs, ATOMIC_ROWS, BLOCK_K, NUM_K, CAST_BF16, UPCAST)  # fmt: skip
    else:  # TWO_TOWER
        ok = row_ok & (rows < MC)
        s_ii = row_dots(X, Y, rows, rows, ok, stride_x, stride_y, D, BLOCK_K, NUM_K, CAST_BF16, UPCAST)
        x_ii, r_ii = negative_weight(s_ii, scale2, bias2)
        r_acc -= tl.where(ok, G_SCALE, 0.0)
        if not GS_FROM_DZ:
            gs_acc -= G_SCALE * s_ii
        if COMPUTE_LOSS:
            l_acc += tl.where(ok, x_ii, 0.0)
        fix = r_ii - dot_weight(r_ii, Y, CAST_BF16, UPCAST).to(tl.float32) - G_SCALE
        if GRAD_ROWS:
            dz_acc = _add_fix(dz_acc, DX, rows, ok, stride_dx, fix, Y, rows, stride_y, D, gscale,
                              regs, ATOMIC_ROWS, BLOCK_K, NUM_K, CAST_BF16, UPCAST)  # fmt: skip
        if GRAD_COLS:
            _add_fix(dz_acc, DY, rows, ok, stride_dy, fix, X, rows, stride_x, D, gscale,
                     False, True, BLOCK_K, NUM_K, CAST_BF16, UPCAST)  # fmt: skip
    return dz_acc, l_acc, r_acc, gs_acc


@triton.jit
def _block(Z, b, LIMIT, stride, D, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr,
           INT64: tl.constexpr, CAST_BF16: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """Block b of Z's rows: their indices, which are < LIMIT, and, when D fits one feature tile,
    the rows themselves as a dot operand (else the indices stand in, unread)."""
    idx = b * BLOCK + tl.arange(0, BLOCK)
    ok = idx < LIMIT
    if INT64:
        idx = idx.to(tl.int64)
    z = idx
    if NUM_K == 1:
        z = load_rows(Z, idx, ok, stride, tl.arange(0, BLOCK_K), D, CAST_BF16, UPCAST)
    return idx, ok, z


@triton.jit
def _tile(X, Y, DX, DY, zi, rows, row_ok, j, MC, D, stride_x, stride_y, stride_dx,
          stride_dy, scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc,
          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr,
          BLOCK_DO: tl.constexpr, WEIGHT: tl.constexpr, TAIL: tl.constexpr, GRAD_ROWS: tl.constexpr,
          COL_SIDE: tl.constexpr, GS_FROM_DZ: tl.constexpr, NO_SELF_PAIR: tl.constexpr,
          COMPUTE_LOSS: tl.constexpr, ATOMIC_ROWS: tl.constexpr, INT64: tl.constexpr,
          UPCAST: tl.constexpr, PRECISION: tl.constexpr, CAST_BF16: tl.constexpr):  # fmt: skip
    """One tile: S = Z_I Z_Jᵀ once, r and (on logging steps) the softplus terms once, then
    G·Z_J into the rows of I and, COL_SIDE, Gᵀ·Z_I into the rows of J. WEIGHT: how many ordered
    pairs each element stands for in the sums (2 off the diagonal of the symmetric schedule).
    Up to one feature tile, Z_J is loaded once for both dots and dZ_I stays in dz_acc; wider
    rows form S in BLOCK_K steps, then add each BLOCK_DO-wide slice of each product to memory,
    over the one G (S is never recomputed). 64-wide slices: 128 at D = 256 took 255 registers
    and spilled 1.1 KB per thread (128×128 tiles, 8 warps, sm_90, triton 3.6).
    TAIL masks columns ≥ MC: they load as zero rows, so they only reach the row sums. Rows ≥ M
    need no mask: zero too, they reach only their own row sums, which the sweep drops.
    NO_SELF_PAIR (SELF): this tile holds pairs i = j (_sweep tells), which have no term."""
    cols, col_ok, zj = _block(Y, j, MC, stride_y, D, BLOCK_N, BLOCK_K, NUM_K, INT64, CAST_BF16, UPCAST)
    offs = tl.arange(0, BLOCK_K)
    if NUM_K == 1:
        s = tl.dot(zi, tl.trans(zj), input_precision=PRECISION)
    else:
        # Bases advanced by k: loop-invariant (BLOCK, BLOCK_K) 64-bit pointers held registers.
        s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, D, BLOCK_K):
            za = load_rows(X + k, rows, row_ok, stride_x, offs, D - k, CAST_BF16, UPCAST)
            zb = load_rows(Y + k, cols, col_ok, stride_y, offs, D - k, CAST_BF16, UPCAST)
            s = tl.dot(za, tl.trans(zb), s, input_precision=PRECISION)
    if NO_SELF_PAIR:  # x = +∞ at i = j: r = 0 and a zero softplus term
        x = tl.where(rows[:, None] == cols[None, :], float("inf"), s * scale2 + bias2)
        r = weight_of(x)
    else:
        x, r = negative_weight(s, scale2, bias2)
    if TAIL:
        r = tl.where(col_ok[None, :], r, 0.0)
    r_acc += WEIGHT * tl.sum(r, axis=1)
    if not GS_FROM_DZ:
        gs_acc += WEIGHT * tl.sum(r * s, axis=1)
    if COMPUTE_LOSS:
        terms = softplus2(x, r)
        if TAIL:
            terms = tl.where(col_ok[None, :], terms, 0.0)
        l_acc += WEIGHT * tl.sum(terms, axis=1)
    w = dot_weight(r, Y, CAST_BF16, UPCAST)
    # BLOCK_DO < BLOCK_K at one feature tile (two-tower's ∂L/∂y): S as one tile, both products
    # to memory in slices as past one feature tile (see _sweep's in_regs).
    if NUM_K == 1 and BLOCK_DO == BLOCK_K:
        if GRAD_ROWS:
            dz_acc = tl.dot(w, zj, dz_acc, input_precision=PRECISION)
        if COL_SIDE:
            dcol = tl.dot(tl.trans(w), zi, input_precision=PRECISION)
            add_rows(DY, cols, col_ok, stride_dy, offs, D, dcol * gscale, True, False)
    else:
        # One loop per product: in one loop G, Gᵀ (a second register copy) and both accumulators
        # were live at once and spilled 160 bytes per thread (two-tower, D = 768, 128×128).
        ks = tl.arange(0, BLOCK_DO)
        if GRAD_ROWS:
            for k in range(0, D, BLOCK_DO):
                zj_slice = load_rows(Y + k, cols, col_ok, stride_y, ks, D - k, CAST_BF16, UPCAST)
                part = tl.dot(w, zj_slice, input_precision=PRECISION)
                add_rows(DX + k, rows, row_ok, stride_dx, ks, D - k, part * gscale, ATOMIC_ROWS, False)
        if COL_SIDE:
            wt = tl.trans(w)
            for k in range(0, D, BLOCK_DO):
                zs = load_rows(X + k, rows, row_ok, stride_x, ks, D - k, CAST_BF16, UPCAST)
                dcol = tl.dot(wt, zs, input_precision=PRECISION)
                add_rows(DY + k, cols, col_ok, stride_dy, ks, D - k, dcol * gscale, True, False)
    return dz_acc, l_acc, r_acc, gs_acc


@triton.jit
def _sweep(X, Y, DX, DY, i, j_lo, j_hi, correct, M, MC, N_PER_VIEW, D, stride_x, stride_y, stride_dx,
           stride_dy, scale2, bias2, gscale,
           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NUM_K: tl.constexpr,
           BLOCK_DO: tl.constexpr, PAIRS: tl.constexpr, SYMMETRIC: tl.constexpr, GRAD_ROWS: tl.constexpr,
           GRAD_COLS: tl.constexpr, COMPUTE_LOSS: tl.constexpr, ATOMIC_ROWS: tl.constexpr,
           INT64: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
           CAST_BF16: tl.constexpr):  # fmt: skip
    """Row block i against column tiles j_lo..j_hi−1, then (correct) its rows' corrections, then
    its dZ out of registers. Returns the sums of loss terms, of r and of r·s of its rows."""
    rows, row_ok, zi = _block(X, i, M, stride_x, D, BLOCK_M, BLOCK_K, NUM_K, INT64, CAST_BF16, UPCAST)
    offs = tl.arange(0, BLOCK_K)
    # dZ_I in registers up to one feature tile; past it dZ goes to memory and this is a stub (a
    # full-size stub carried through the sweep cost 64 registers and spilled, D = 1024, sm_90).
    # Two-tower with ∂L/∂y at one feature tile sends G·Z_J to memory too (BLOCK_DO < BLOCK_K,
    # the launcher's _slice_width): S, G, dZ_I and Gᵀ·Z_I live at once spilled 424 bytes per thread
    # at D = 128 bf16 (128×128, 8 warps, sm_90, triton 3.6; 30.8 SASS per pair before the spills).
    in_regs: tl.constexpr = NUM_K == 1 and BLOCK_DO == BLOCK_K
    dz_acc = tl.zeros((BLOCK_M, BLOCK_K) if in_regs else (16, 16), dtype=tl.float32)
    l_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    r_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    gs_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    # SELF: the column tiles d_lo..d_hi−1 hold i = j (i alone for square tiles): they drop it per
    # element, outside the column loop (why: the module's docstring).
    self_pairs: tl.constexpr = PAIRS == SELF
    d_lo = i * BLOCK_M // BLOCK_N if self_pairs else j_hi
    d_hi = ((i + 1) * BLOCK_M - 1) // BLOCK_N + 1 if self_pairs else j_hi
    if SYMMETRIC:
        # The diagonal tile holds both orders of its pairs: counted once, no transposed product.
        if (j_lo == i) & (j_hi > j_lo):  # masked as a tail: one tile per row block
            dz_acc, l_acc, r_acc, gs_acc = _tile(
                X, Y, DX, DY, zi, rows, row_ok, i, MC, D, stride_x, stride_y, stride_dx, stride_dy,
                scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K,
                BLOCK_DO, 1.0, True, GRAD_ROWS, False, False, True, COMPUTE_LOSS, ATOMIC_ROWS, INT64,
                UPCAST, PRECISION, CAST_BF16,
            )  # fmt: skip
            j_lo += 1
        d_lo, d_hi = j_hi, j_hi  # the others are off the diagonal
    weight: tl.constexpr = 2.0 if SYMMETRIC else 1.0
    col_side: tl.constexpr = (SYMMETRIC and GRAD_ROWS) or GRAD_COLS
    # Σ_j g_ij s_ij = ⟨ẑ_i, (GZ)_i⟩ from dz_acc once, where it holds every pair of these rows (as
    # the previous kernel did), on steps without the loss terms: the per-tile sum of r·s spilled
    # 4 bytes per thread there, and this way 52 with them (D = 128 bf16, 128×128, 8 warps, sm_90).
    gs_from_dz: tl.constexpr = in_regs and GRAD_ROWS and not SYMMETRIC and not COMPUTE_LOSS
    tail = MC // BLOCK_N  # the column tile that ends at MC, when MC is not a multiple of BLOCK_N
    end = tl.minimum(j_hi, tail)
    # The tiles lo..hi−1 hold i = j (none unless SELF; the tail among them when it does): masked
    # per element, as tails (full tiles pass), and the column loop takes the others.
    lo = tl.minimum(tl.maximum(d_lo, j_lo), j_hi)
    hi = tl.minimum(tl.maximum(d_hi, lo), tl.minimum(j_hi, tail + 1))
    n_in = tl.maximum(tl.minimum(hi, end) - lo, 0)  # of them before the tail
    if self_pairs:
        if BLOCK_M == BLOCK_N:  # one tile, no loop (tools/compile_kernels.py counts the longest)
            if lo < hi:
                dz_acc, l_acc, r_acc, gs_acc = _tile(
                    X, Y, DX, DY, zi, rows, row_ok, lo, MC, D, stride_x, stride_y, stride_dx, stride_dy,
                    scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K,
                    BLOCK_DO, weight, True, GRAD_ROWS, col_side, gs_from_dz, True, COMPUTE_LOSS, ATOMIC_ROWS,
                    INT64, UPCAST, PRECISION, CAST_BF16,
                )  # fmt: skip
        else:
            for j in range(lo, hi):
                dz_acc, l_acc, r_acc, gs_acc = _tile(
                    X, Y, DX, DY, zi, rows, row_ok, j, MC, D, stride_x, stride_y, stride_dx, stride_dy,
                    scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K,
                    BLOCK_DO, weight, True, GRAD_ROWS, col_side, gs_from_dz, True, COMPUTE_LOSS, ATOMIC_ROWS,
                    INT64, UPCAST, PRECISION, CAST_BF16,
                )  # fmt: skip
    for t in range(j_lo, end - n_in):
        j = t + (t >= lo).to(tl.int32) * n_in if self_pairs else t
        dz_acc, l_acc, r_acc, gs_acc = _tile(
            X, Y, DX, DY, zi, rows, row_ok, j, MC, D, stride_x, stride_y, stride_dx, stride_dy,
            scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K,
            BLOCK_DO, weight, False, GRAD_ROWS, col_side, gs_from_dz, False, COMPUTE_LOSS, ATOMIC_ROWS,
            INT64, UPCAST, PRECISION, CAST_BF16,
        )  # fmt: skip
    if (tail >= j_lo) & (tail < j_hi) & ((tail < lo) | (tail >= hi)):
        dz_acc, l_acc, r_acc, gs_acc = _tile(
            X, Y, DX, DY, zi, rows, row_ok, tail, MC, D, stride_x, stride_y, stride_dx, stride_dy,
            scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K,
            BLOCK_DO, weight, True, GRAD_ROWS, col_side, gs_from_dz, False, COMPUTE_LOSS, ATOMIC_ROWS,
            INT64, UPCAST, PRECISION, CAST_BF16,
        )  # fmt: skip
    if PAIRS != CROSS:  # noqa: SIM102
        if correct:
            dz_acc, l_acc, r_acc, gs_acc = _correct_rows(
                X, Y, DX, DY, rows, row_ok, M, MC, N_PER_VIEW, D, stride_x, stride_y, stride_dx,
                stride_dy, scale2, bias2, gscale, dz_acc, l_acc, r_acc, gs_acc, BLOCK_K, NUM_K, PAIRS,
                GRAD_ROWS, GRAD_COLS, COMPUTE_LOSS, ATOMIC_ROWS, CAST_BF16, UPCAST, gs_from_dz, in_regs,
            )  # fmt: skip
    if gs_from_dz:
        gs_acc = tl.sum(zi.to(tl.float32) * dz_acc, axis=1)
    if in_regs and GRAD_ROWS:
        # Without atomics the program owns its slot's rows alone: one plain store.
        add_rows(DX, rows, row_ok, stride_dx, offs, D, dz_acc * gscale, ATOMIC_ROWS, not ATOMIC_ROWS)
    zero = tl.zeros((BLOCK_M,), dtype=tl.float32)
    return (
        tl.sum(tl.where(row_ok, l_acc, zero), axis=0),
        tl.sum(tl.where(row_ok, r_acc, zero), axis=0),
        tl.sum(tl.where(row_ok, gs_acc, zero), axis=0),
    )


@triton.jit
def _sigmoid_block_kernel(
    X,  # (M, D) normalised rows; fp32, fp16 or bf16
    Y,  # (MC, D) normalised columns, X's dtype: X itself (SELF), another rank's rows, or the texts
    DX,  # fp32 ∂L/∂X: (M, D) zeroed, added to atomically (ATOMIC_ROWS), else one (M, D) slot per column range
    DY,  # fp32 (MC, D) ∂L/∂Y, zeroed, added to atomically (SELF's symmetric schedule: DX itself)
    PARTIALS,  # (programs, 3) fp32 out: each program's sums of loss terms, of G and of G∘S
    LOGIT_SCALE,  # pointer to the fp32 logit scale
    LOGIT_BIAS,  # pointer to the fp32 logit bias
    M,
    MC,
    N_PER_VIEW,
    D,
    stride_x,
    stride_y,
    stride_dx,
    stride_dy,
    INV_M,  # 1 / (rows of the whole batch): 1/M, or 1/(world·M) for a block of a distributed batch
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,  # = BLOCK_M in the symmetric schedule
    BLOCK_K: tl.constexpr,  # feature tile
    NUM_K: tl.constexpr,  # ceil(D / BLOCK_K)
    BLOCK_DO: tl.constexpr,  # slices of dZ when NUM_K > 1 (see _tile)
    PAIRS: tl.constexpr,  # SELF, CROSS or TWO_TOWER
    SYMMETRIC: tl.constexpr,  # SELF on tiles j ≥ i only (else every ordered tile)
    GRAD_ROWS: tl.constexpr,
    GRAD_COLS: tl.constexpr,  # TWO_TOWER's ∂L/∂Y
    COMPUTE_LOSS: tl.constexpr,
    ATOMIC_ROWS: tl.constexpr,  # False: deterministic, partials reduced by the launcher in a fixed order
    INT64: tl.constexpr,  # 64-bit offsets (an offset can pass 2³¹)
    UPCAST: tl.constexpr,  # interpreter only: 16-bit operands held in fp32
    PRECISION: tl.constexpr,  # "ieee" or "tf32" for fp32 operands (ignored for 16-bit ones)
    CAST_BF16: tl.constexpr,  # fp32 inputs rounded to bf16 operands (tensor cores at bf16 rate)
):
    """Grid: (row units, column ranges). A row unit is one row block's sweep over its column
    tiles, or, SYMMETRIC, row blocks u and nb−1−u over their tiles j ≥ i: nb + 1 tiles for every
    unit. Each program takes an equal contiguous range of its unit's tiles."""
    pid_u = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_s = tl.num_programs(1)
    logit_scale = tl.load(LOGIT_SCALE).to(tl.float32)
    scale2 = -logit_scale * LOG2E
    bias2 = -tl.load(LOGIT_BIAS).to(tl.float32) * LOG2E
    # ∂L/∂ẑ_i = logit_scale·Σ_j (g_ij + g_ji)·ẑ_j = 2·logit_scale·Σ_j g_ij ẑ_j when g is symmetric.
    gscale = (1.0 if PAIRS == TWO_TOWER else 2.0) * logit_scale * INV_M * INV_G_SCALE
    if not ATOMIC_ROWS:
        slot = pid_s.to(tl.int64) if INT64 else pid_s
        DX += slot * M * stride_dx
    nb = tl.cdiv(M, BLOCK_M)
    length = nb + 1 if SYMMETRIC else tl.cdiv(MC, BLOCK_N)
    span = tl.cdiv(length, n_s)
    k0 = pid_s * span
    k1 = tl.minimum(k0 + span, length)
    first = nb - pid_u if SYMMETRIC else length  # tiles of the unit's first row block
    j0 = pid_u if SYMMETRIC else 0
    l_sum, r_sum, gs_sum = _sweep(
        X, Y, DX, DY, pid_u, j0 + k0, j0 + tl.minimum(k1, first), k0 == 0, M, MC, N_PER_VIEW, D,
        stride_x, stride_y, stride_dx, stride_dy, scale2, bias2, gscale, BLOCK_M, BLOCK_N, BLOCK_K,
        NUM_K, BLOCK_DO, PAIRS, SYMMETRIC, GRAD_ROWS, GRAD_COLS, COMPUTE_LOSS, ATOMIC_ROWS, INT64, UPCAST,
        PRECISION, CAST_BF16,
    )  # fmt: skip
    if SYMMETRIC:
        i = nb - 1 - pid_u
        lo = tl.maximum(k0, first) - first
        hi = k1 - first
        if (i > pid_u) and (hi > lo):
            l2, r2, gs2 = _sweep(
                X, Y, DX, DY, i, i + lo, i + hi, lo == 0, M, MC, N_PER_VIEW, D, stride_x, stride_y,
                stride_dx, stride_dy, scale2, bias2, gscale, BLOCK_M, BLOCK_N, BLOCK_K, NUM_K, BLOCK_DO,
                PAIRS, SYMMETRIC, GRAD_ROWS, GRAD_COLS, COMPUTE_LOSS, ATOMIC_ROWS, INT64, UPCAST, PRECISION,
                CAST_BF16,
            )  # fmt: skip
            l_sum += l2
            r_sum += r2
            gs_sum += gs2
    out = PARTIALS + (pid_u * n_s + pid_s) * 3
    tl.store(out, l_sum * (INV_M * LN2))
    tl.store(out + 1, r_sum * (INV_M * INV_G_SCALE))
    tl.store(out + 2, gs_sum * (INV_M * INV_G_SCALE))
