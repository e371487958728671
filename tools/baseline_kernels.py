"""Compile cases of the public fused SigLIP kernel (PyPI ``siglip-kernel`` 0.1.2, extra
``baselines``), compiled by tools/compile_kernels.py exactly as ours are:

    python tools/compile_kernels.py --only siglip-kernel --json benchmarks/results/siglip-kernel-sm90.json

Its sm_90 path (``hopper_kernel.py``) runs one persistent kernel per tower: rows of one tower
against every row of the other, 128 × 128 × 64 tiles, 8 warps, 3 stages (its launcher's Hopper
choice), S on bf16 operands, G·Y on fp32 operands, read-modify-writing the tower's gradient per
column tile. Cases: B = 65,536 rows per tower at D = 128 and D = 768, bf16.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch

from fastsigclr.kernels.tiles import CompileCase

B = 65536
SMS = 132  # its grid: min(SMs, row blocks) persistent programs


def _hopper_module():
    """siglip_kernel.hopper_kernel without the package's __init__, which asks CUDA for the GPU's
    architecture at import (this host has none)."""
    spec = importlib.util.find_spec("siglip_kernel")
    if spec is None:
        raise SystemExit("siglip-kernel is not installed: pip install 'fastsigclr[baselines]'")
    if "siglip_kernel" not in sys.modules:
        package = types.ModuleType("siglip_kernel")
        package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
        sys.modules["siglip_kernel"] = package
    return importlib.import_module("siglip_kernel.hopper_kernel")


def siglip_kernel_cases() -> list[CompileCase]:
    hopper_kernel = _hopper_module()
    cases = []
    for d in (128, 768):
        block_d = min(64, 1 << (d - 1).bit_length())
        # Positional as its launcher passes them: 3 bf16 and 3 fp32 pointers, B, D, t, b, strides.
        args = (*(torch.bfloat16,) * 3, *(torch.float32,) * 3, B, d, 10.0, -10.0, d, d)
        consts = dict(NUM_SMS=SMS, BLOCK_I=128, BLOCK_J=128, BLOCK_D=block_d, USE_FP8=False)
        meta = dict(
            kernel="siglip-kernel hopper", dtype="bf16", D=d, BLOCK_M=128, BLOCK_N=128, BLOCK_K=block_d
        )
        # Per pair and tower: S over D on bf16 operands, then G·Y over D on fp32 ones (tf32); both
        # feature loops run D / BLOCK_D times inside the column loop.
        meta.update(dot_flops_per_pair={"bf16": 2 * d, "tf32": 2 * d}, feature_trips=d // block_d)
        kernel = hopper_kernel._hopper_fused_siglip_kernel
        cases.append(CompileCase(kernel, args, consts, 8, 3, meta, True, pairs_per_iteration=128 * 128))
    return cases
