"""Tile helpers shared by the contrastive kernels, and the description of a compile case."""

import functools
import os
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Compiled code uses approximate special functions (one MUFU instruction each); the interpreter
# cannot run inline PTX and computes them exactly.
FAST_MATH = tl.constexpr(not INTERPRET)


@triton.jit
def fast_rcp(x):
    """1/x: rcp.approx.ftz (one MUFU.RCP, ≤ 1 ulp) where `1.0 / x` takes five instructions
    (MUFU.RCP with a range check, measured in SASS for sm_90, triton 3.6)."""
    if FAST_MATH:
        return tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return 1.0 / x


@triton.jit
def bf16_values(x, UPCAST: tl.constexpr):
    """x rounded to bf16 (nearest even): bf16 when compiled, fp32 holding bf16 values in the
    interpreter (its bf16 tl.dot is wrong, and its fp32 → bf16 cast truncates)."""
    if UPCAST:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(tl.bfloat16)


@triton.jit
def as_operand(x, CAST_BF16: tl.constexpr, UPCAST: tl.constexpr):
    """A loaded tile as a tl.dot operand: optionally rounded to bf16 (fp32 inputs on tensor
    cores); UPCAST (interpreter only) holds 16-bit values in fp32."""
    if CAST_BF16:
        x = bf16_values(x, UPCAST)
    elif UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def similarity_tile(
    ZA,
    rows_a,
    ok_a,
    stride_a,
    ZB,
    rows_b,
    ok_b,
    stride_b,
    D,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    CAST_BF16: tl.constexpr = False,
):
    """S = ZA[rows_a] ZB[rows_b]ᵀ, (BLOCK_A, BLOCK_B) in fp32, over D in NUM_K steps of BLOCK_K;
    masked rows and features read as 0."""
    offs_k = tl.arange(0, BLOCK_K)
    s = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    # A loop rather than unrolled steps: the compiler pipelines it one feature tile per stage. The
    # sigmoid kernel unrolled at D = 512 held every step of a column block in shared memory at
    # once (160-512 KiB per config, 3 KB of spills per thread).
    for kb in range(NUM_K):
        ks = kb * BLOCK_K + offs_k
        a = tl.load(
            ZA + rows_a[:, None] * stride_a + ks[None, :], mask=ok_a[:, None] & (ks[None, :] < D), other=0.0
        )
        bt = tl.load(
            ZB + rows_b[None, :] * stride_b + ks[:, None], mask=ok_b[None, :] & (ks[:, None] < D), other=0.0
        )
        # Inline unless rounding: each call of a jit function costs the interpreter milliseconds.
        if CAST_BF16:
            a = as_operand(a, CAST_BF16, UPCAST)
            bt = as_operand(bt, CAST_BF16, UPCAST)
        elif UPCAST:
            a = a.to(tl.float32)
            bt = bt.to(tl.float32)
        s = tl.dot(a, bt, s, input_precision=PRECISION)
    return s


@triton.jit
def load_rows(Z, rows, ok, stride, offs, D, CAST_BF16: tl.constexpr, UPCAST: tl.constexpr):
    """Rows of Z at the features offs, masked rows and features as 0, as a dot operand."""
    mask = ok[:, None] & (offs[None, :] < D)
    z = tl.load(Z + rows[:, None] * stride + offs[None, :], mask=mask, other=0.0)
    return as_operand(z, CAST_BF16, UPCAST)


@triton.jit
def add_rows(OUT, rows, ok, stride, offs, D, value, ATOMIC: tl.constexpr, STORE: tl.constexpr):
    """OUT[rows, offs] += value: atomically (other programs add to the same rows), by a plain
    read-modify-write (rows this program alone adds to), or, STORE, as its only writer."""
    mask = ok[:, None] & (offs[None, :] < D)
    ptrs = OUT + rows[:, None] * stride + offs[None, :]
    if ATOMIC:
        tl.atomic_add(ptrs, value, mask=mask, sem="relaxed")
    elif STORE:
        tl.store(ptrs, value, mask=mask)
    else:
        tl.store(ptrs, tl.load(ptrs, mask=mask, other=0.0) + value, mask=mask)


@triton.jit
def row_dots(X, Y, rows_a, rows_b, ok, stride_a, stride_b, D, BLOCK_K: tl.constexpr,
              NUM_K: tl.constexpr, CAST_BF16: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """⟨x_a, y_b⟩ row by row in fp32, over the operand values the dots saw."""
    acc = tl.zeros(rows_a.shape, dtype=tl.float32)
    for kb in tl.static_range(NUM_K):
        ks = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        a = load_rows(X, rows_a, ok, stride_a, ks, D, CAST_BF16, UPCAST).to(tl.float32)
        b = load_rows(Y, rows_b, ok, stride_b, ks, D, CAST_BF16, UPCAST).to(tl.float32)
        acc += tl.sum(a * b, axis=1)
    return acc


def dot_settings(dtype: torch.dtype, interpret: bool = INTERPRET) -> dict:
    """UPCAST (the interpreter's bf16 tl.dot is wrong, so it computes in fp32 there) and PRECISION
    (fp32 operands follow torch.backends.cuda.matmul.allow_tf32, like torch's own matmuls)."""
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return {"UPCAST": interpret and dtype == torch.bfloat16, "PRECISION": "tf32" if tf32 else "ieee"}


def feature_tiling(d: int, max_block: int = 256) -> tuple[int, int]:
    """(BLOCK_K, NUM_K) for D features: one power-of-two tile up to max_block, else several."""
    block_k = min(triton.next_power_of_2(max(d, 16)), max_block)
    return block_k, triton.cdiv(d, block_k)


INT32_MAX = 2**31 - 1
# Hopper's SMs (H100 SXM and H200): what a schedule fills when no GPU is there to ask.
H100_SMS = 132
WAVE_TARGET = 0.9


def needs_int64(tensors: list[torch.Tensor], *extents: int) -> bool:
    """Whether a kernel's element offsets can pass 2³¹ − 1, where 32-bit offsets (triton's
    default for integer arguments and aranges) overflow silently: the furthest element any 2-D
    operand reaches, (rows − 1)·stride(0) + (cols − 1)·stride(1), or any other extent (e.g. the
    slots of a partial-sum buffer). Reads only shapes and strides: meta tensors and strided views
    test it at the boundary without memory."""
    furthest = [(t.shape[0] - 1) * t.stride(0) + (t.shape[1] - 1) * t.stride(1) for t in tensors if t.numel()]
    return max([*furthest, *(e - 1 for e in extents)], default=0) > INT32_MAX


def wave_efficiency(tiles: int, programs: int, tiles_per_program: int, sms: int) -> float:
    """Work done over work the GPU could do in the waves a grid takes: ``programs`` programs of at
    most ``tiles_per_program`` tiles, ``sms`` at a time, ``tiles`` tiles in all."""
    waves = -(-programs // sms)
    return tiles / (waves * sms * tiles_per_program)


@dataclass(frozen=True)
class Plan:
    """How one launch covers its tiles: the symmetric schedule or every ordered tile, square
    tiles of ``block`` rows, ``programs`` column ranges per row unit, and the launch
    configuration. Deterministic runs record it (``dataclasses.asdict``) so a resumed run
    reduces in the same order."""

    symmetric: bool
    block_m: int
    block_n: int
    programs: int
    num_warps: int
    num_stages: int


def _power_of_two(n: int, low: int, high: int) -> bool:
    return low <= n <= high and n & (n - 1) == 0


def check_plan(plan: Plan, *, symmetric_ok: bool) -> None:
    """A ValueError naming what a given plan (a recorded one, or ``plan=``) cannot launch: a
    symmetric schedule where the launch may not take one (other pair modes, deterministic runs)
    or with tiles that are not square (its gradients came out wrong by 46-60%), tiles that are
    not powers of two from 16 to 256 (tl.arange needs them), warps not 1-16 and a power of two,
    or fewer than one program or stage."""
    problem = None
    if plan.symmetric and not symmetric_ok:
        problem = "a symmetric schedule, which only non-deterministic 'self' launches take"
    elif plan.symmetric and plan.block_m != plan.block_n:
        problem = f"a symmetric schedule of {plan.block_m}×{plan.block_n} tiles (it needs square ones)"
    elif not (_power_of_two(plan.block_m, 16, 256) and _power_of_two(plan.block_n, 16, 256)):
        problem = f"{plan.block_m}×{plan.block_n} tiles (each side a power of two from 16 to 256)"
    elif not _power_of_two(plan.num_warps, 1, 16):
        problem = f"{plan.num_warps} warps (a power of two up to 16)"
    elif plan.programs < 1 or plan.num_stages < 1:
        problem = f"{plan.programs} programs and {plan.num_stages} stages (at least one each)"
    if problem:
        raise ValueError(f"the tile plan {plan} has {problem}: pass a plan sigmoid_plan returned")


def schedule_units(m: int, mc: int, block_m: int, symmetric: bool, block_n: int = 0) -> tuple[int, int, int]:
    """(row units, tiles per unit, tiles in all) of a schedule."""
    nb, nbc = triton.cdiv(m, block_m), triton.cdiv(mc, block_n or block_m)
    if symmetric:
        return (nb + 1) // 2, nb + 1, nb * (nb + 1) // 2
    return nb, nbc, nb * nbc


def launch_config(block: int) -> tuple[int, int]:
    """(warps, stages) of a square tile of ``block`` rows."""
    # 4 warps per 64 rows: a 128×128 fp32 accumulator over 128 threads spilled 1.5-1.8 KB per
    # thread at D = 128 (sm_90, triton 3.6). 2 stages kept 128-row tiles at 80 KiB at D = 128.
    return (8, 2) if block == 128 else (4, 3)


# The schedule's cost model, in units of one 128×128 ordered tile's compute (docs/design.md §3.4).
# A symmetric tile: 1.72 (0.167 modelled cycles per ordered pair against 0.193 for every ordered
# tile, bf16 D = 128, compiled for sm_90). A 64-row tile: 1.25/4 (half the rows per wgmma issue).
SYMMETRIC_TILE = 1.72
SMALL_TILE = 1.25 / 4
# What one 128×128 tile computes in SM cycles: 0.193 cycles per pair up to D = 128 (issue-bound),
# then 0.0009 more per feature, the line through the compiled 0.193 at D = 128 and 1.0 at 1,024
# (0.31, 0.54, 0.77 at D = 256, 512, 768 against the compiled 0.36, 0.52, 0.75).
PAIR_CYCLES, PAIR_CYCLES_PER_FEATURE = 0.193, 0.0009
# HBM bytes per SM per cycle: 3.35 TB/s over 132 SMs at 1.83 GHz (H100 SXM; the H200 has more).
SM_BYTES_PER_CYCLE = 3.35e12 / 132 / 1.83e9


def flush_cost(block: int, d: int) -> float:
    """One program's fp32 dZ rows (block × D) added to memory, in 128×128 tiles of compute: at
    128 rows 0.75 at D = 64, 1.49 at 128, 1.87 at 256, 2.31 at 1,024 (the bytes grow with D
    faster than the compute per pair). Every column range pays it once; each off-diagonal
    symmetric tile pays it for its transposed product."""
    pair_cycles = PAIR_CYCLES + PAIR_CYCLES_PER_FEATURE * max(d - 128, 0)
    tile_cycles = 128 * 128 * pair_cycles
    return block * d * 4 / SM_BYTES_PER_CYCLE / tile_cycles


@functools.lru_cache(maxsize=256)
def plan_schedule(
    m: int,
    mc: int,
    *,
    symmetric_ok: bool,
    sms: int = H100_SMS,
    blocks: tuple[int, ...] = (128, 64),
    d: int = 128,
) -> Plan:
    """Of the schedules with ≥ WAVE_TARGET wave efficiency (all if none), the one with the
    shortest modelled time on ``sms`` SMs, one program each at a time: waves × (tiles per program
    × tile cost + the program's dZ flush), a symmetric tile costing SYMMETRIC_TILE and a flush
    for its transposed product, a 64-row tile SMALL_TILE. Without the flush the model split
    2N = 65,536 into 256 column ranges for a 3% gain, 8.6 GB of fp32 atomics (and an 8 GiB slot
    buffer in deterministic mode). Its wave efficiency is ≥ 90% at the sizes of docs/design.md
    §3.4's table (powers of two and three times them, 2N = 1,024 to 65,536); sizes between can fall
    short (1,536: 87%)."""
    best = None
    for symmetric in (True, False) if symmetric_ok else (False,):
        for block in blocks:
            units, length, tiles = schedule_units(m, mc, block, symmetric)
            size, flush = 1.0 if block == 128 else SMALL_TILE, flush_cost(block, d)
            tile = (SYMMETRIC_TILE * size + flush) if symmetric else size
            for programs in range(1, length + 1):
                span = triton.cdiv(length, programs)
                if programs > 1 and triton.cdiv(length, programs - 1) == span:
                    continue  # the same ranges with an empty program
                waves = triton.cdiv(units * programs, sms)
                cost = waves * (span * tile + flush)
                efficient = wave_efficiency(tiles, units * programs, span, sms) >= WAVE_TARGET
                key = (not efficient, cost, units * programs)
                if best is None or key < best[0]:
                    best = (key, Plan(symmetric, block, block, programs, *launch_config(block)))
    return best[1]


def schedule_efficiency(m: int, mc: int, plan: Plan, sms: int = H100_SMS) -> float:
    """Wave efficiency of a plan: its tiles over the tile slots of the waves it takes."""
    units, length, tiles = schedule_units(m, mc, plan.block_m, plan.symmetric)
    return wave_efficiency(tiles, units * plan.programs, triton.cdiv(length, plan.programs), sms)


def select_configs(measured: list[tuple[object, int, int, int]], max_shared: int, min_rows: int = 1) -> list:
    """The autotune candidates worth timing, from (config, BLOCK_M, shared memory bytes, local
    memory bytes per thread) as compiled: those that fit in shared memory, spill nothing to local
    memory and have at least min_rows rows (Hopper's wgmma needs 64 rows per warpgroup: a 32-row
    bf16 tile falls back to mma.sync and took 44 SASS instructions per pair against 26 at 64 rows,
    sigmoid loss at D = 128); if there are none, every one that fits, for the timings to decide.
    Empty if none fits."""
    fits = [(cfg, rows, spills) for cfg, rows, shared, spills in measured if shared <= max_shared]
    best = [cfg for cfg, rows, spills in fits if spills == 0 and rows >= min_rows]
    return best or [cfg for cfg, _, _ in fits]


@dataclass(frozen=True)
class CompileCase:
    """One launch of a kernel as tools/compile_kernels.py compiles it ahead of time.

    args: the launch's positional arguments, with a torch dtype standing for each tensor (a
    16-byte aligned pointer, as the JIT assumes of torch's allocations); constexprs: the keyword
    constexprs; meta: what the report says about the case (kernel, dtype, D, tiles, ...)."""

    fn: object
    args: tuple
    constexprs: dict
    num_warps: int
    num_stages: int
    meta: dict = field(default_factory=dict)
    tensor_cores: bool = False  # its dots must lower to wgmma on sm_90
    pairs_per_iteration: int = 0  # pairs of one inner-loop iteration, for the SASS/pair counts
    candidate: bool = False  # one of several autotune configs: it may not fit, and may be pruned
