"""Tile helpers shared by the contrastive kernels, and the description of a compile case."""

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


def dot_settings(dtype: torch.dtype) -> dict:
    """UPCAST (the interpreter's bf16 tl.dot is wrong, so it computes in fp32 there) and PRECISION
    (fp32 operands follow torch.backends.cuda.matmul.allow_tf32, like torch's own matmuls)."""
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return {"UPCAST": INTERPRET and dtype == torch.bfloat16, "PRECISION": "tf32" if tf32 else "ieee"}


def feature_tiling(d: int, max_block: int = 256) -> tuple[int, int]:
    """(BLOCK_K, NUM_K) for D features: one power-of-two tile up to max_block, else several."""
    block_k = min(triton.next_power_of_2(max(d, 16)), max_block)
    return block_k, triton.cdiv(d, block_k)


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
