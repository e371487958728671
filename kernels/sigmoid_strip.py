"""Past one feature tile on a GPU: the sigmoid loss's pair weights strip by strip, their products by
dense matmuls (docs/design.md §3, "Weight strips").

``_weight_strip_kernel`` → ``weight_strip``, its launcher → ``sigmoid_block_strips``, a block with
``sigmoid_block``'s arguments and returns, to which ``sigmoid_block`` hands its 16-bit CUDA launches
past one feature tile (``strips_wanted``).

Why: past one feature tile the fused kernel adds each tile's gradient products to memory, D/16 bytes
of fp32 atomics per pair with two towers (D/32 for SigCLR's rows), and on an H200 those ran at 1.37
TB/s: 154 ms for SigLIP at B = 65,536, D = 768, whose 6·B²·D FLOPs take 24.8 ms at the 797 TFLOP/s
a bf16 matmul reached in the same run. Here the kernel forms S (2·D FLOPs per pair, 64-feature
steps as the fused kernel's wide path) and writes each pair's weight once, 2 bytes in the operands'
dtype; the products are matmuls over the strip: W·Y into the strip's rows of ∂L/∂rows and, two
towers, Wᵀ·X_strip into ∂L/∂cols. SigCLR's G is symmetric: a strip takes the columns from its own
first row on, and Wᵀ·X_strip adds the mirror pairs into the later rows. Nothing is added per tile,
and the strip is read back once per product.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import triton
import triton.language as tl

from . import launches
from .fp32_products import mm_has_out_dtype, put_product
from .sigmoid_kernel import CROSS, LN2, LOG2E, PAIR_MODES, SELF, TWO_TOWER, WIDE_BLOCK_K
from .sigmoid_terms import INV_G_SCALE, softplus2, weight_of
from .tiles import H100_SMS, bf16_values, load_rows, needs_int64

# A strip holds at most this many bytes of weights (or one row tile, past 2²¹ columns): 512 MiB,
# 4,096 rows at 2N = 65,536 (bf16), whose W·Y has 192 output tiles of 128 × 128 at D = 768 (1.45
# waves of 132 SMs) and 64 at D = 256, where cuBLAS must split the sum over the columns to fill
# the SMs (assumed, not timed). The same 512 MiB are 4× the bf16 rows at 2N = 65,536, D = 1,024.
STRIP_BYTES = 512 << 20
# The strip kernel's one configuration: 128 × 128 tiles, 8 warps, 2 stages of 64-feature operand
# tiles (64 KiB). Compiled for sm_90 (triton 3.6, bf16, a 4,096-row strip against 65,536 columns):
# on a common tile (no positive, i = j or tail in it) 17.1 SASS per pair for two towers at D = 256
# (no spills) and 18.2 for SigCLR's rows (48 bytes); with the loss terms 32.7 and 33.4 (104 and
# 112 bytes of spills per thread: loop-invariant values, reloaded 8-16 times per tile, none inside
# the feature loop). 3 stages (two towers, before the tiles' branch, the column start
# and square): 16 bytes, 39.5 SASS against 39.1 with 2; 4 stages more.
STRIP_CONFIG = {"block": 128, "num_warps": 8, "num_stages": 2}
FP32_STRIP_CONFIG = {"block": 64, "num_warps": 4, "num_stages": 3}
# SigCLR's strips are at most a quarter of the rows (past STRIP_BYTES' bound, which first binds at
# 2N = 32,768): S strips visit (1 + 1/S)/2 of the ordered pairs, so four visit 62.5% where one visits
# all. Modelled on an H200 (tools/cost_model.py, bf16, the loss terms), at 2N = 16,384 the block
# takes 368 µs in four strips against 466 in one at D = 256 and 883 against 1,045 at D = 768; at
# 8,192, in two strips of this minimum, 101 against 117 and 237 against 264. A strip keeps at least
# 4,096 rows: below that its W·Y has under 64 output tiles at D = 256 and the three launches per
# strip (about 5 µs each, not modelled) would eat the gain. Not timed on a GPU.
SYMMETRIC_MIN_ROWS = 4096
# SELF's strips add their mirror pairs into the later rows' gradient by products of at most this
# many bytes of fp32 results (or one strip's height of rows): 128 MiB, 131,072 rows at D = 256, so
# one product per strip at 2N = 65,536, whose 61,440 × 256 output (960 tiles of 128 × 128) fills
# the SMs; blocks of one strip's 4,096 rows would take 120 products of 64 output tiles each.
MIRROR_BYTES = 128 << 20
# Whether sigmoid_block may hand its launches to the strips (fused_only turns it off), and whether
# SigCLR's strips keep to a quarter of the rows (tall_strips turns it off).
_STRIPS = contextvars.ContextVar("weight_strips", default=True)
_QUARTERS = contextvars.ContextVar("symmetric_strip_quarters", default=True)
# Programs per launch: about four waves of the SMs, each a strip's row tile against a range of
# its column tiles (the row sums of a tile stay in registers over the range).
WAVES = 4


@triton.jit
def _holds_positives(r0, c0, MC, N_PER_VIEW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """SELF: whether rows r0..r0+BLOCK_M−1 and columns c0..c0+BLOCK_N−1 hold a positive or i = j,
    a multiple of N_PER_VIEW among the differences c − i (shifted by a multiple of it to stay
    non-negative)."""
    shift = tl.cdiv(MC + BLOCK_M, N_PER_VIEW) * N_PER_VIEW
    hi = c0 - r0 + BLOCK_N - 1 + shift
    return hi - hi % N_PER_VIEW > c0 - r0 - BLOCK_M + shift


@triton.jit
def _tested(r0, c0, MC, N_PER_VIEW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAIRS: tl.constexpr):
    """Whether a tile needs tests per element: it holds a positive or i = j, or ends past MC."""
    tail = c0 + BLOCK_N > MC
    if PAIRS == SELF:
        return tail | _holds_positives(r0, c0, MC, N_PER_VIEW, BLOCK_M, BLOCK_N)
    elif PAIRS == TWO_TOWER:
        return tail | ((c0 < r0 + BLOCK_M) & (r0 < c0 + BLOCK_N))
    else:
        return tail


@triton.jit
def _weights(x, rows, cols, col_ok, N_PER_VIEW, PAIRS: tl.constexpr, COMPUTE_LOSS: tl.constexpr,
             TESTED: tl.constexpr):  # fmt: skip
    """A tile's weights r = 2¹⁵·σ(a), signed g (−2¹⁵·σ(−a) at positives, from their x negated: no
    cancellation as σ(a) → 1; 0 at i = j and past the columns), and the row sums of its loss
    terms (log2 units; 0 without COMPUTE_LOSS). TESTED: the tile holds positives, i = j or a
    column tail, tested per element; the other tiles skip the tests."""
    if TESTED:
        if PAIRS == SELF:
            pos = (rows % N_PER_VIEW)[:, None] == (cols % N_PER_VIEW)[None, :]
            x = tl.where(pos, -x, x)
            x = tl.where(rows[:, None] == cols[None, :], float("inf"), x)  # i = j: r = 0, no term
        elif PAIRS == TWO_TOWER:
            pos = rows[:, None] == cols[None, :]
            x = tl.where(pos, -x, x)
    r = weight_of(x)
    g = r
    if TESTED:
        g = tl.where(col_ok[None, :], r, 0.0)
        if PAIRS != CROSS:
            g = tl.where(pos, -g, g)
    terms = tl.zeros((x.shape[0],), dtype=tl.float32)
    if COMPUTE_LOSS:
        t = softplus2(x, r)
        if TESTED:
            t = tl.where(col_ok[None, :], t, 0.0)
        terms = tl.sum(t, axis=1)
    return terms, g


@triton.jit
def _weight_strip_kernel(
    X,  # (M, D) normalised rows; fp32, fp16 or bf16
    Y,  # (MC, D) normalised columns, X's dtype (X itself for SELF)
    W,  # (H, MC − COL0) out: the strip's weights 2¹⁵·(σ(a) − [positive]) in W's dtype, 0 for i = j
    PARTIALS,  # (programs, 3) fp32 out: each program's sums of softplus terms (in nats), of w and of w·s
    LOGIT_SCALE,  # pointer to the fp32 logit scale
    LOGIT_BIAS,  # pointer to the fp32 logit bias
    ROW0,  # the strip's first row
    H,  # rows in the strip
    COL0,  # its first column, 0 or a strip's first row (SELF): a multiple of 16, as the JIT specialises it
    SQUARE,  # columns COL0..COL0+SQUARE−1 count once, later ones twice (SELF: the mirror pairs); 16·k
    MC,
    N_PER_VIEW,
    D,
    stride_x,
    stride_y,
    stride_w,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PAIRS: tl.constexpr,  # SELF, CROSS or TWO_TOWER (sigmoid_kernel.py)
    COMPUTE_LOSS: tl.constexpr,
    STORE_W: tl.constexpr,  # False: the sums only (no gradient wanted; W is a stand-in)
    INT64: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter only: 16-bit operands held in fp32
    PRECISION: tl.constexpr,
    CAST_BF16: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr = False,  # of the feature loop: a no-op on sm_90 (tools/warp_specialize.py)
):
    """Grid: (row tiles of the strip, column ranges). A program takes its row tile against each
    column tile of its range: S in BLOCK_K-feature steps, each pair's weight, positives by their
    own sign (w = −2¹⁵·σ(−a) and softplus(−a) from x = a·log2 e: no cancellation as σ(a) → 1).
    SELF: a tile at or past SQUARE, a whole number of tiles, adds its sums twice."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_ranges = tl.num_programs(1)
    scale2 = -tl.load(LOGIT_SCALE).to(tl.float32) * LOG2E
    bias2 = -tl.load(LOGIT_BIAS).to(tl.float32) * LOG2E
    local = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = local < H
    if INT64:
        local = local.to(tl.int64)
    rows = ROW0 + local
    n_tiles = tl.cdiv(MC - COL0, BLOCK_N)
    span = tl.cdiv(n_tiles, n_ranges)
    j1 = tl.minimum(pid_n * span + span, n_tiles)
    offs = tl.arange(0, BLOCK_K)
    l_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    r_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    gs_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for j in range(pid_n * span, j1):
        local_cols = j * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = local_cols < MC - COL0
        cols = COL0 + local_cols
        mirrored = 1.0
        if PAIRS == SELF:  # 2 past the square: (i, j) stands for (j, i) too
            mirrored = 1.0 + (j * BLOCK_N >= SQUARE).to(tl.float32)
        if INT64:
            cols = cols.to(tl.int64)
        s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        # Bases advanced by k, as the fused kernel's wide path.
        for k in tl.range(0, D, BLOCK_K, warp_specialize=WARP_SPECIALIZE):
            za = load_rows(X + k, rows, row_ok, stride_x, offs, D - k, CAST_BF16, UPCAST)
            zb = load_rows(Y + k, cols, col_ok, stride_y, offs, D - k, CAST_BF16, UPCAST)
            s = tl.dot(za, tl.trans(zb), s, input_precision=PRECISION)
        x = s * scale2 + bias2  # −a·log2 e
        c0 = COL0 + j * BLOCK_N
        if _tested(ROW0 + pid_m * BLOCK_M, c0, MC, N_PER_VIEW, BLOCK_M, BLOCK_N, PAIRS):
            terms, g = _weights(x, rows, cols, col_ok, N_PER_VIEW, PAIRS, COMPUTE_LOSS, True)
        else:
            terms, g = _weights(x, rows, cols, col_ok, N_PER_VIEW, PAIRS, COMPUTE_LOSS, False)
        l_acc += terms * mirrored
        r_acc += tl.sum(g, axis=1) * mirrored
        gs_acc += tl.sum(g * s, axis=1) * mirrored
        if STORE_W:
            w = g
            if W.dtype.element_ty == tl.bfloat16:
                w = bf16_values(g, UPCAST)  # rounded to nearest (the interpreter's cast truncates)
            ptrs = W + local[:, None] * stride_w + local_cols[None, :]
            tl.store(ptrs, w.to(W.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    zero = tl.zeros((BLOCK_M,), dtype=tl.float32)
    out = PARTIALS + (pid_m * n_ranges + pid_n) * 3
    tl.store(out, tl.sum(tl.where(row_ok, l_acc, zero), axis=0) * LN2)
    tl.store(out + 1, tl.sum(tl.where(row_ok, r_acc, zero), axis=0) * INV_G_SCALE)
    tl.store(out + 2, tl.sum(tl.where(row_ok, gs_acc, zero), axis=0) * INV_G_SCALE)


def strips_wanted(rows: torch.Tensor, cols: torch.Tensor, tiles: dict) -> bool:
    """Whether sigmoid_block hands this launch to sigmoid_block_strips: when asked (``strip_rows``),
    or (outside fused_only) for 16-bit CUDA rows wider than one compiled feature tile (128) with no
    plan or tile given (a recorded plan keeps the fused kernel's order of sums; tests pin tiles),
    where torch can multiply 16-bit operands into an fp32 result (torch ≥ 2.8: ``mm.dtype``; before
    it the strips would take their products in fp32). Empty blocks stay with the fused kernel.
    Recording a compiled launch (kernels/launches.py) on CPU tensors decides as CUDA would."""
    if not (rows.numel() and cols.numel()):
        return False
    if tiles.get("strip_rows") is not None:
        return True
    if not _STRIPS.get():
        return False
    if any(tiles.get(k) is not None for k in ("plan", "block_m", "block_n", "block_k", "col_splits")):
        return False
    cuda = rows.device.type == "cuda" or launches.recording()
    wide = rows.dtype in (torch.bfloat16, torch.float16) and rows.shape[1] > 128
    return cuda and wide and mm_has_out_dtype()


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value: bool) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def fused_only() -> contextlib.AbstractContextManager[None]:
    """Within it, sigmoid_block keeps every launch on the fused kernel's one pass, whatever D (the
    loss bench's ``triton-fused`` provider times the two side by side)."""
    return _setting(_STRIPS, False)


def tall_strips() -> contextlib.AbstractContextManager[None]:
    """Within it, SigCLR's strips are as tall as STRIP_BYTES allows (one strip up to 2N = 16,384),
    not a quarter of the rows (the loss bench's ``triton-tall-strips`` times the two)."""
    return _setting(_QUARTERS, False)


def strip_rows(m: int, mc: int, element_bytes: int, block: int, symmetric: bool = False) -> int:
    """Rows per strip: as many as STRIP_BYTES of weights hold, a multiple of ``block``, at least one
    tile and at most every row; ``symmetric`` (SigCLR, each pair once) also at most a quarter of
    the rows, but not under SYMMETRIC_MIN_ROWS."""
    fits = STRIP_BYTES // (element_bytes * mc) // block * block
    if symmetric:
        fits = min(fits, max(SYMMETRIC_MIN_ROWS, triton.cdiv(triton.cdiv(m, 4), block) * block))
    return min(m, max(block, fits))


def strip_grid(h: int, mc: int, block: int, sms: int = H100_SMS) -> tuple[int, int]:
    """(row tiles, column ranges) of a strip of h rows: about WAVES waves of programs, no range
    empty. Each strip takes its own grid; the sums' buffer holds the largest (sigmoid_block_strips)."""
    row_tiles, col_tiles = triton.cdiv(h, block), triton.cdiv(mc, block)
    ranges = max(1, min(col_tiles, round(WAVES * sms / row_tiles)))
    return row_tiles, triton.cdiv(col_tiles, triton.cdiv(col_tiles, ranges))


def _config(rows: torch.Tensor, cast_bf16: bool) -> dict:
    return STRIP_CONFIG if rows.dtype != torch.float32 or cast_bf16 else FP32_STRIP_CONFIG


def weight_strip(rows, cols, w, partials, scalars, row0: int, h: int, *, col0: int, square: int, ranges: int,
                 n_per_view: int, pairs: str, compute_loss: bool, store: bool, flags: dict,
                 config: dict) -> int:  # fmt: skip
    """Launch the strip kernel: rows row0..row0+h−1 against columns col0.. (a multiple of the tile;
    the sums of tiles past col0 + square twice), their weights into w (store; else w is a
    stand-in), per-program sums into partials; returns its programs."""
    mc = cols.shape[0]
    block = config["block"]
    grid = (triton.cdiv(h, block), ranges)
    consts = dict(BLOCK_M=block, BLOCK_N=block, BLOCK_K=WIDE_BLOCK_K, PAIRS=PAIR_MODES[pairs])
    consts.update(COMPUTE_LOSS=compute_loss, STORE_W=store, INT64=needs_int64([rows, cols, w]), **flags)
    # square in whole tiles: the same tiles count twice, and the JIT sees a multiple of 16 (one
    # variant; SASS per pair rose from 30.4 to 34.3 and spills appeared with col0 and square left
    # unspecialised, bf16 SigCLR rows at D = 256, sm_90).
    square = triton.cdiv(square, block) * block
    args = (rows, cols, w, partials, *scalars, row0, h, col0, square, mc, n_per_view, rows.shape[1])
    args += (rows.stride(0), cols.stride(0), w.stride(0))
    if launches.recording():  # the launch a compiled run makes (interpreted: UPCAST off there)
        launches.record("sigmoid strip", args, dict(consts, UPCAST=False),
                        [(config["num_warps"], config["num_stages"])])  # fmt: skip
    if not launches.record_only():
        _weight_strip_kernel[grid](*args, num_warps=config["num_warps"], num_stages=config["num_stages"],
                                   **consts)  # fmt: skip
    return grid[0] * grid[1]


def _strips(m: int, height: int, symmetric: bool) -> list[tuple[int, int, int]]:
    """(first row, rows, first column) of each strip: SELF's start at their own first row."""
    return [(r0, min(height, m - r0), r0 if symmetric else 0) for r0 in range(0, m, height)]


def _strip_products(w, ops, grads, row0: int, h: int, col0: int, *, first: bool, mirror: int) -> None:
    """A strip's products: W·Y into its rows of ∂L/∂rows and, two towers, Wᵀ·X_strip into ∂L/∂cols;
    SELF (``mirror`` rows per product; 0: another pair mode) also Wᵀ·X_strip into the rows after
    the strip, its mirror pairs. Written in place where nothing has reached them yet (SELF's first
    strip reaches every row; the other modes' strips each write their own rows, and the first
    every column), else added: ∂L/∂rows and ∂L/∂cols need no zeroing."""
    d_rows, d_cols = grads
    x_strip = ops[0][row0 : row0 + h]
    if d_rows is not None:
        put_product(d_rows[row0 : row0 + h], w, ops[1][col0:], first or not mirror)  # not mirror: own rows
        for c in range(row0 + h, d_rows.shape[0], mirror) if mirror else ():
            put_product(d_rows[c : c + mirror], w[:, c - col0 : c - col0 + mirror].T, x_strip, first)
    if d_cols is not None:
        put_product(d_cols, w.T, x_strip, first)


def sigmoid_block_strips(rows, cols, logit_scale, logit_bias, *, n_per_view: int, inv_m: float,
                         pairs: str, grad_rows: bool, grad_cols: bool, compute_loss: bool,
                         flags: dict, out_dtype: torch.dtype, height: int = 0) -> tuple:  # fmt: skip
    """sigmoid_block's block by weight strips (its arguments checked and resolved there): returns
    (loss | None, ∂L/∂rows | None, ∂L/∂cols | None, ∂L/∂logit_scale, ∂L/∂logit_bias). ``height``
    rows per strip (0: strip_rows), in a fixed order without atomics: deterministic as it is
    (cuBLAS's matmuls with CUBLAS_WORKSPACE_CONFIG, which --deterministic sets). Other pair modes
    visit every ordered pair once, in strips of every column; without a gradient wanted in one
    strip, storing no weight. SELF (G symmetric) takes the columns from each strip's own first row
    on, its height rounded up to whole row tiles: a pair past the strip's square (i, j) stands for
    (j, i), counted twice in the sums, and Wᵀ·X_strip adds these mirror pairs into the later rows'
    gradient. With S strips that visits (1 + 1/S)/2 of the ordered pairs: all of them in one strip."""
    if isinstance(height, bool) or not isinstance(height, int) or height < 0:
        raise ValueError(f"strip_rows must be a positive number of rows (0: the default), got {height!r}")
    rows, cols = rows.detach(), cols.detach()  # the gradients are returned, not traced
    (m, d), mc = rows.shape, cols.shape[0]
    config = _config(rows, flags["CAST_BF16"])
    block, symmetric = config["block"], pairs == "self"
    w_dtype = torch.bfloat16 if flags["CAST_BF16"] else rows.dtype
    store = grad_rows or (pairs == "two_tower" and grad_cols)
    height = height or strip_rows(m, mc, w_dtype.itemsize, block, symmetric and _QUARTERS.get())
    height = min(m, triton.cdiv(height, block) * block if symmetric else height if store else m)
    strips = _strips(m, height, symmetric)
    # SELF's mirror products, of whole tiles of rows: each starts at a 16-byte offset in W's rows.
    mirror = max(height, MIRROR_BYTES // (4 * d) // block * block) if symmetric else 0
    cuda = rows.device.type == "cuda"
    sms = torch.cuda.get_device_properties(rows.device).multi_processor_count if cuda else H100_SMS
    f32 = dict(dtype=torch.float32, device=rows.device)
    buffer = torch.empty(height * mc if store else 1, dtype=w_dtype, device=rows.device)
    grids = [strip_grid(h, mc - c0, block, sms) for _, h, c0 in strips]
    partials = torch.zeros((max(a * b for a, b in grids), 3), **f32)
    scalars = [s.detach().to(torch.float32).reshape(1).contiguous() for s in (logit_scale, logit_bias)]
    ops = (rows.to(w_dtype), cols.to(w_dtype)) if rows.dtype != w_dtype else (rows, cols)
    grads = [torch.empty(shape, **f32) if want else None for shape, want in
             (((m, d), grad_rows), ((mc, d), pairs == "two_tower" and grad_cols))]  # fmt: skip
    sums = torch.zeros(3, **f32)
    for (row0, h, col0), (_, ranges) in zip(strips, grids, strict=True):
        n = mc - col0
        w = buffer[: h * n].view(h, n) if store else buffer.view(1, 1)
        programs = weight_strip(rows, cols, w, partials, scalars, row0, h, col0=col0,
                                square=h if symmetric else n, ranges=ranges, n_per_view=n_per_view,
                                pairs=pairs, compute_loss=compute_loss, store=store, flags=flags,
                                config=config)  # fmt: skip
        sums += partials[:programs].sum(dim=0)
        if store and not launches.record_only():
            _strip_products(w, ops, grads, row0, h, col0, first=row0 == 0, mirror=mirror)
    del buffer, w  # before the gradients' casts allocate
    # ∂L/∂ẑ_i = t·Σ_j (g_ij + g_ji)·ẑ_j: 2t·G·Z for SigCLR's symmetric G, and for a cross block,
    # whose mirrored block has the same G (see sigmoid_kernel.py).
    gscale = scalars[0] * (inv_m * (1.0 if pairs == "two_tower" else 2.0) * INV_G_SCALE.value)
    out = [g.mul_(gscale).to(out_dtype) if g is not None else None for g in grads]
    loss, db, dt = (sums * inv_m).unbind()
    return (loss if compute_loss else None), out[0], out[1], dt, db
