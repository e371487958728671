"""What tools/compile_kernels.py compiles of the sigmoid loss kernel (``compile_cases``): its
launches at 2N = 8192 on an H100, with the plan, tiles and alignment sigmoid.py gives them."""

from __future__ import annotations

import dataclasses
import itertools
import math

import torch
import triton

from .sigmoid import PAIR_MODES, _blocks, _configs, _dot_flags, _feature_tiling, _slice_width
from .sigmoid_kernel import WIDE_BLOCK_K, _sigmoid_block_kernel
from .sigmoid_strip import STRIP_CONFIG, _weight_strip_kernel, strip_grid
from .tiles import CompileCase, plan_schedule

# (kernel, pairs, symmetric, deterministic, dtype name, dtype, fp32_dot, feature sizes) of what
# tools/compile_kernels.py compiles: the launches of a 2N = 8192 batch on an H100.
_WIDE = (128, 256, 512, 768, 1024)  # one feature tile, then 2-16 feature steps
_COMPILE_VARIANTS = [
    ("sigmoid", "self", False, False, "bf16", torch.bfloat16, None, (64, *_WIDE)),
    ("sigmoid", "self", False, False, "fp16", torch.float16, None, (128,)),
    ("sigmoid", "self", False, False, "fp32 tf32", torch.float32, "tf32", (128,)),
    ("sigmoid", "self", False, False, "fp32 bf16-operands", torch.float32, "bf16", (128,)),
    ("sigmoid", "self", False, False, "fp32 ieee", torch.float32, "ieee", (128,)),
    ("sigmoid symmetric", "self", True, False, "bf16", torch.bfloat16, None, (128,)),
    ("sigmoid deterministic", "self", False, True, "bf16", torch.bfloat16, None, (128,)),
    ("sigmoid cross-rank", "cross", False, False, "bf16", torch.bfloat16, None, (128,)),
    ("sigmoid two-tower", "two_tower", False, False, "bf16", torch.bfloat16, None, _WIDE),
    # Up to one feature tile SigLIP takes two of these sweeps, the towers swapped for ∂L/∂y
    # (sigmoid.py _cols_by_second_sweep): the rows' gradient only, in registers.
    ("sigmoid two-tower sweep", "two_tower", False, False, "bf16", torch.bfloat16, None, (128,)),
]


def compile_cases(quick: bool = False) -> list[CompileCase]:
    """The launches tools/compile_kernels.py compiles for sm_90, at 2N = 8192 with the plan and
    alignment they get at run time (IEEE fp32 and deterministic runs: their one pinned
    configuration): bf16 SigCLR at D = 64 and 128 with every autotune candidate of its tile, at
    D = 256-1024 the first, each with and without the loss terms (the symmetric tile at D = 128
    too); the other variants of _COMPILE_VARIANTS, the first candidate with the loss. quick (CI):
    bf16 SigCLR and the symmetric tile at D = 128 as above and the first candidate with the loss
    of the rest (it fits them all).
    Past one feature tile (and for two-tower's slices at D = 128) the report counts the column
    loop with its feature loops, each run feature_trips = D / WIDE_BLOCK_K times
    (tools/compile_kernels.py's nested_loop)."""
    m, cases = 8192, []
    for kernel, pairs, symmetric, det, name, dtype, fp32_dot, dims in _COMPILE_VARIANTS:
        flags = dict(_dot_flags(dtype, fp32_dot), UPCAST=False)
        exact = flags["PRECISION"] == "ieee" and dtype == torch.float32 and not flags["CAST_BF16"]
        for d in dims:
            plan = plan_schedule(m, m, symmetric_ok=symmetric, blocks=_blocks(d, dtype == torch.float32), d=d)
            plan = dataclasses.replace(plan, symmetric=symmetric)  # the model keeps every tile (§3.4)
            configs = [(plan.num_warps, plan.num_stages)] if det or exact or symmetric else [
                (c.num_warps, c.num_stages) for c in _configs() if c.num_warps == plan.num_warps
            ]  # fmt: skip
            block_k, num_k = _feature_tiling(d, symmetric)
            grad_cols = kernel == "sigmoid two-tower"
            bf16 = kernel in ("sigmoid", "sigmoid symmetric") and name == "bf16"
            every = bf16 and (d == 128 or (not quick and d == 64))
            for loss in (True, False) if every or (bf16 and not quick) else (True,):
                consts = dict(BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=block_k, NUM_K=num_k)
                block_do = _slice_width(block_k, num_k, grad_cols)
                consts.update(BLOCK_DO=block_do)
                consts.update(PAIRS=PAIR_MODES[pairs], SYMMETRIC=symmetric, GRAD_ROWS=True)
                consts.update(GRAD_COLS=grad_cols, COMPUTE_LOSS=loss, ATOMIC_ROWS=not det)
                consts.update(INT64=False, **flags)
                args = (dtype, dtype, torch.float32, torch.float32, torch.float32, torch.float32)
                args += (torch.float32, m, m, m // 2, d, d, d, d, d, 1.0 / m)
                # Ordered pairs per iteration of the sweep: a symmetric tile stands for two. Its
                # dots per element over the padded features: S, G·Z_J, and Gᵀ·Z_I in the
                # symmetric and two-tower sweeps.
                pairs_per_iteration = plan.block_m * plan.block_n * (2 if symmetric else 1)
                dots = 3 if symmetric or grad_cols else 2
                flops = 2 * block_k * num_k * dots // (2 if symmetric else 1)
                for warps, stages in configs if every else configs[:1]:
                    meta = dict(kernel=kernel, variant="loss" if loss else "no loss", dtype=name, D=d)
                    meta.update(BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, programs=plan.programs)
                    meta.update(dot_flops_per_pair=flops)
                    if block_do < block_k * num_k:
                        meta.update(BLOCK_K=block_k, feature_trips=triton.cdiv(d, block_do))
                    cases.append(CompileCase(
                        _sigmoid_block_kernel, args, consts, warps, stages, meta,
                        tensor_cores=fp32_dot != "ieee", candidate=not (det or exact or symmetric),
                        pairs_per_iteration=pairs_per_iteration,
                    ))  # fmt: skip
    return cases


def strip_cases() -> list[CompileCase]:
    """The weight-strip kernel (sigmoid_strip.py) as a bf16 launch past one feature tile makes it on
    an H100: SigCLR's rows and SigLIP's two towers at D = 256, 768 and 1024, with and without the
    loss terms, its one configuration, a strip of 4,096 rows against 2N = 65,536 columns; and at
    D = 128, where launches keep the fused kernel, to model the strips against it. Its column loop
    holds the feature loop (D / 64 trips); its one dot is S (2·D FLOPs per pair)."""
    cases, h, mc, block = [], 4096, 65536, STRIP_CONFIG["block"]
    for pairs, d, loss in itertools.product(("self", "two_tower"), (128, 256, 768, 1024), (True, False)):
        consts = dict(BLOCK_M=block, BLOCK_N=block, BLOCK_K=WIDE_BLOCK_K, PAIRS=PAIR_MODES[pairs])
        consts.update(COMPUTE_LOSS=loss, STORE_W=True, INT64=False, UPCAST=False, PRECISION="ieee")
        consts.update(CAST_BF16=False)
        args = (torch.bfloat16, torch.bfloat16, torch.bfloat16, *[torch.float32] * 3)
        # The first strip: SigCLR's square is its own rows (later columns count twice), SigLIP's
        # every column (col0 and square are multiples of 16 at every launch, as the JIT sees them).
        args += (0, h, 0, h if pairs == "self" else mc, mc, mc // 2, d, d, d, mc)
        kernel = "sigmoid weight strip" + (" two-tower" if pairs == "two_tower" else "")
        meta = dict(kernel=kernel, variant="loss" if loss else "no loss", dtype="bf16", D=d, BLOCK_M=block)
        meta.update(BLOCK_N=block, programs=math.prod(strip_grid(h, mc, block)), dot_flops_per_pair=2 * d)
        meta.update(BLOCK_K=WIDE_BLOCK_K, feature_trips=triton.cdiv(d, WIDE_BLOCK_K), strip_rows=h)
        meta.update(rare_tiles=True)  # SASS per pair of the common tile (tools/compile_kernels.py)
        cases.append(CompileCase(
            _weight_strip_kernel, args, consts, STRIP_CONFIG["num_warps"], STRIP_CONFIG["num_stages"],
            meta, tensor_cores=True, pairs_per_iteration=block * block,
        ))  # fmt: skip
    return cases
