"""Tile helpers shared by the contrastive kernels."""

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


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
):
    """S = ZA[rows_a] ZB[rows_b]ᵀ, (BLOCK_A, BLOCK_B) in fp32, over D in NUM_K steps of BLOCK_K;
    masked rows and features read as 0."""
    offs_k = tl.arange(0, BLOCK_K)
    s = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for kb in tl.static_range(NUM_K):
        ks = kb * BLOCK_K + offs_k
        a = tl.load(
            ZA + rows_a[:, None] * stride_a + ks[None, :], mask=ok_a[:, None] & (ks[None, :] < D), other=0.0
        )
        bt = tl.load(
            ZB + rows_b[None, :] * stride_b + ks[:, None], mask=ok_b[None, :] & (ks[:, None] < D), other=0.0
        )
        if UPCAST:
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
