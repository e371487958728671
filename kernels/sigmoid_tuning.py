"""Which tile configurations of the sigmoid loss kernel are timed, and what
tools/compile_kernels.py compiles of it: the autotune candidates, their pruning at run time,
and the compile cases.
"""

import torch
import triton
from triton.runtime.errors import OutOfResources

from .sigmoid_kernel import MAX_BLOCK_D, _sigmoid_pairwise_kernel
from .tiles import INTERPRET, CompileCase, feature_tiling, select_configs


def _configs() -> list[triton.Config]:
    if INTERPRET:
        # The interpreter's cost grows with programs × iterations: large blocks on small problems.
        # multi-config autotuning needs a GPU to time candidates, so one config here.
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]
    # Candidates for Hopper; the runtime keeps those that fit without spilling (_prune_configs), and
    # benchmarks/results/kernels-sm90.json records what each compiles to. Not yet timed on hardware.
    # 64×128 has 2 stages (80 KiB at D = 128; 3 took 112). 128×32 with 4 warps was dropped: its
    # 128×128 fp32 accumulator over 128 threads spilled 1.5-1.8 KB per thread at D = 128.
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (128, 64, 8, 3),
            (128, 128, 8, 2),
            (64, 64, 4, 3),
            (64, 128, 4, 2),
            (64, 32, 4, 2),
            (32, 32, 4, 2),
        ]
    ]


# Non-constexpr parameters in launch order: what the autotuner's pruning hook receives by name.
_ARGS = ("Z", "ZC", "DZ", "ROWSUM", "T", "B", "M", "MC", "N_PER_VIEW", "D")
_ARGS += ("stride_z", "stride_zc", "stride_dz", "COL_SPLITS", "INV_M")
# Every constexpr that selects a variant is in the key: a config tuned without the loss terms
# must not be reused for the variant that computes them (more registers).
_KEY = ["M", "MC", "D", "COL_SPLITS", "BLOCK_K", "NUM_K", "SELF_BLOCK", "COMPUTE_LOSS", "COMPUTE_GRAD"]
_KEY += ["ACCUMULATE", "PRECISION", "CAST_BF16"]


def _prune_configs(configs: list[triton.Config], named_args: dict, **constexprs) -> list[triton.Config]:
    """Compile every candidate for these arguments (the autotuner would anyway; the JIT caches
    them) and keep those that fit the device's shared memory without spilling (select_configs)."""
    if len(configs) == 1:
        return configs
    args = [named_args[name] for name in _ARGS]
    device = torch.cuda.current_device()
    max_shared = triton.runtime.driver.active.utils.get_device_properties(device)["max_shared_mem"]
    measured = []
    for cfg in configs:
        kernel = _sigmoid_pairwise_kernel.warmup(*args, grid=(1,), **constexprs, **cfg.all_kwargs())
        try:
            kernel._init_handles()  # loads it: raises when it needs more shared memory than there is
        except OutOfResources:
            continue
        measured.append((cfg, cfg.kwargs["BLOCK_M"], kernel.metadata.shared, kernel.n_spills))
    fma_only = named_args["Z"].dtype == torch.float32 and constexprs["PRECISION"] == "ieee"
    fma_only = fma_only and not constexprs["CAST_BF16"]
    wgmma = torch.cuda.get_device_capability(device)[0] >= 9 and not fma_only
    kept = select_configs(measured, max_shared, min_rows=64 if wgmma else 1)
    if not kept:
        raise RuntimeError(
            f"no tile configuration of the sigmoid loss kernel fits this GPU's {max_shared} bytes of "
            f"shared memory at D = {named_args['D']}; use impl='torch' or bf16 inputs"
        )
    return kept


autotuned_kernel = triton.autotune(
    configs=_configs(),
    key=_KEY,
    reset_to_zero=["DZ", "ROWSUM"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_sigmoid_pairwise_kernel)


# (name, input dtype, fp32_dot, feature sizes) of what tools/compile_kernels.py compiles: bf16 at
# CIFAR-10's D = 64, the D = 128 of the other recipes, 256 and 512; the other operands at 128.
_COMPILE_VARIANTS = [
    ("bf16", torch.bfloat16, None, (64, 128, 256, 512)),
    ("fp16", torch.float16, None, (128,)),
    ("fp32 ieee", torch.float32, "ieee", (128,)),
    ("fp32 tf32", torch.float32, "tf32", (128,)),
    ("fp32 bf16-operands", torch.float32, "bf16", (128,)),
]
# quick: the one candidate compiled for the cases other than bf16 at D = 128 (it fits them all).
_QUICK_TILE = {"BLOCK_M": 64, "BLOCK_N": 32}


def compile_cases(quick: bool = False) -> list[CompileCase]:
    """The launches tools/compile_kernels.py compiles for sm_90, at 2N = 8192 with the alignment
    the JIT sees at run time: every autotune candidate of each variant in _COMPILE_VARIANTS, with
    and without the loss terms, and the cross-rank block (bf16, D = 128). quick (CI): every bf16
    candidate at D = 128 with and without the loss, and the _QUICK_TILE candidate of the other
    cases with the loss."""
    m, cases = 8192, []
    variants = [(True, loss, name, dtype, fp32_dot, d) for name, dtype, fp32_dot, dims in _COMPILE_VARIANTS
                for d in dims for loss in (True, False)]  # fmt: skip
    variants += [(False, loss, "bf16", torch.bfloat16, None, 128) for loss in (True, False)]
    for self_block, loss, name, dtype, fp32_dot, d in variants:
        every = not quick or (name == "bf16" and d == 128 and self_block)
        if not (every or loss):
            continue
        block_k, num_k = feature_tiling(d, MAX_BLOCK_D)
        grad = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        args = (dtype, dtype, grad, torch.float32, torch.float32, torch.float32, m, m, m // 2, d, d, d, d)
        args += (5, 1.0 / m)  # 5 column ranges: default_col_splits at 2N = 8192 on 132 SMs
        flags = dict(BLOCK_K=block_k, NUM_K=num_k, BLOCK_DO=block_k, SELF_BLOCK=self_block)
        flags.update(COMPUTE_LOSS=loss, COMPUTE_GRAD=True, ACCUMULATE=True, UPCAST=False)
        flags.update(PRECISION="tf32" if fp32_dot == "tf32" else "ieee", CAST_BF16=fp32_dot == "bf16")
        kernel = "sigmoid" if self_block else "sigmoid cross-rank"
        for cfg in _configs():
            if not every and cfg.kwargs != _QUICK_TILE:
                continue
            meta = dict(kernel=kernel, variant="loss" if loss else "no loss", dtype=name, D=d)
            meta.update(BLOCK_M=cfg.kwargs["BLOCK_M"], BLOCK_N=cfg.kwargs["BLOCK_N"])
            # With NUM_K > 1 the hottest loop is S's loop over features: no per-pair count.
            pairs = cfg.kwargs["BLOCK_M"] * cfg.kwargs["BLOCK_N"] if num_k == 1 else 0
            cases.append(
                CompileCase(
                    _sigmoid_pairwise_kernel,
                    args,
                    {**flags, **cfg.kwargs},
                    cfg.num_warps,
                    cfg.num_stages,
                    meta,
                    tensor_cores=fp32_dot != "ieee",
                    pairs_per_iteration=pairs,
                    candidate=True,
                )
            )
    return cases
