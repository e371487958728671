#!/usr/bin/env python3
"""Compile every Triton kernel ahead of time for a CUDA target, without a GPU.

Triton's compiler and ptxas run on any Linux host, so CPU-only CI catches what the interpreter
cannot: compiled-mode errors (non-constexpr globals, unsupported ops, dtype mismatches) and
whether the 16-bit dots of the loss kernel lower to Hopper tensor-core instructions (wgmma).

    python tools/compile_kernels.py [--arch 90] [--all-configs] [--json OUT]
Exit status 1 if a kernel fails to compile or a 16-bit loss dot misses the tensor cores on sm_90.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastsigclr.kernels import augment, sigmoid_loss

PTR = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def compile_one(fn, signature: dict, constexprs: dict, target: GPUTarget, warps: int, stages: int) -> dict:
    for name in constexprs:
        signature[name] = "constexpr"
    start = time.perf_counter()
    kernel = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs),
        target=target,
        options={"num_warps": warps, "num_stages": stages},
    )
    ptx = kernel.asm["ptx"]
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "wgmma": "wgmma" in ptx,
        "mma": "mma.sync" in ptx or "wgmma" in ptx,
        "shared_bytes": kernel.metadata.shared,
    }


def sigmoid_signature(dtype: str) -> dict:
    grad = PTR["bf16" if dtype == "bf16" else "fp32"]
    return {
        "Z": PTR[dtype],
        "ZC": PTR[dtype],
        "DZ": grad,
        "ROWSUM": "*fp32",
        "T": "*fp32",
        "B": "*fp32",
        "M": "i32",
        "MC": "i32",
        "N_PER_VIEW": "i32",
        "D": "i32",
        "stride_z": "i32",
        "stride_zc": "i32",
        "stride_dz": "i32",
        "INV_M": "fp32",
    }


def sigmoid_cases(target: GPUTarget, all_configs: bool, quick: bool):
    """Per dtype and D: the autotune candidates in order until one fits an H100's shared memory
    (every candidate with --all-configs). --quick starts fp32 at the small candidates. The
    cross-rank block (SELF_BLOCK=False, the distributed loss) is compiled for bf16 at D = 128."""
    configs = sigmoid_loss._configs()
    cases = [(dtype, d, True) for dtype in ("bf16", "fp16", "fp32") for d in (128, 512)]
    for dtype, d, self_block in [*cases, ("bf16", 128, False)]:
        if quick and dtype == "fp32" and d == 512:
            continue
        block_k = min(triton.next_power_of_2(d), sigmoid_loss.MAX_BLOCK_D)
        constexprs = dict(
            BLOCK_K=block_k,
            NUM_K=triton.cdiv(d, block_k),
            BLOCK_DO=block_k,
            SELF_BLOCK=self_block,
            COMPUTE_LOSS=True,
            COMPUTE_GRAD=True,
            UPCAST=False,
            PRECISION="ieee",
        )
        candidates = configs[-2:] if quick and dtype == "fp32" else configs
        fitted = False
        for cfg in candidates:
            if fitted and not all_configs:
                break
            kind = "sigmoid" if self_block else "sigmoid cross-rank"
            name = f"{kind} {dtype} D={d} BM={cfg.kwargs['BLOCK_M']} BN={cfg.kwargs['BLOCK_N']} "
            name += f"w={cfg.num_warps} s={cfg.num_stages}"
            row = run_case(
                name,
                sigmoid_loss._sigmoid_pairwise_kernel,
                sigmoid_signature(dtype),
                {**cfg.kwargs, **constexprs},
                target,
                cfg.num_warps,
                cfg.num_stages,
            )
            row["fits_h100"] = "error" not in row and row["shared_bytes"] <= sigmoid_loss.H100_SHARED_MEMORY
            fitted = fitted or row["fits_h100"]
            row["tensor_cores_required"] = dtype != "fp32" and target.arch >= 90
            yield row
        if not fitted:
            yield {"kernel": f"{kind} {dtype} D={d}", "error": "no candidate config fits an H100"}


def ntxent_cases(target: GPUTarget):
    """Forward and both backward passes of the NT-Xent kernel, at the launcher's 64×64 tiles."""
    from fastsigclr.kernels import ntxent

    for dtype in ("bf16", "fp32"):
        block_k, num_k = (128, 1)
        shared = dict(
            BLOCK_M=64, BLOCK_N=64, BLOCK_K=block_k, NUM_K=num_k, N_VIEWS=2, UPCAST=False, PRECISION="ieee"
        )
        fwd = {
            "Z": PTR[dtype],
            "LSE": "*fp32",
            "ROWLOSS": "*fp32",
            "M": "i32",
            "N_PER_VIEW": "i32",
            "D": "i32",
            "stride_z": "i32",
            "inv_tau": "fp32",
        }
        row = run_case(f"ntxent fwd {dtype}", ntxent._ntxent_fwd_kernel, fwd, shared, target, 4, 2)
        row["tensor_cores_required"] = dtype != "fp32" and target.arch >= 90
        yield row
        bwd = {
            "Z": PTR[dtype],
            "LSE": "*fp32",
            "DZ": "*fp32",
            "M": "i32",
            "N_PER_VIEW": "i32",
            "D": "i32",
            "stride_z": "i32",
            "stride_dz": "i32",
            "inv_tau": "fp32",
            "scale": "fp32",
        }
        for transposed in (False, True):
            consts = dict(shared, BLOCK_DO=block_k, TRANSPOSED=transposed, ACCUMULATE=transposed)
            name = f"ntxent bwd {dtype} transposed={transposed}"
            row = run_case(name, ntxent._ntxent_bwd_kernel, bwd, consts, target, 4, 2)
            row["tensor_cores_required"] = dtype != "fp32" and target.arch >= 90
            yield row


def augment_cases(target: GPUTarget):
    means = {n: "fp32" for n in ("mean0", "mean1", "mean2", "inv_std0", "inv_std1", "inv_std2")}
    for dtype in ("bf16", "fp32"):
        for size, finish in ((32, True), (64, False)):
            signature = {
                "SRC": "*u8",
                "IDX": "*i64",
                "PARAMS": "*fp32",
                "OUT": PTR[dtype],
                "H": "i32",
                "W": "i32",
                "B": "i32",
                **means,
            }
            constexprs = dict(
                S=size, BLOCK=triton.next_power_of_2(size * size), N_VIEWS=2, N_PARAMS=12, FINISH=finish
            )
            name = f"augment {dtype} {size}x{size} finish={finish}"
            yield run_case(name, augment._two_view_kernel, signature, constexprs, target, 4, 1)


def is_failure(row: dict) -> bool:
    """A loss candidate too big for an H100 is expected (the autotuner skips it); nothing else is."""
    error = row.get("error")
    if not error:
        return False
    candidate_too_big = (
        row["kernel"].startswith("sigmoid ") and "w=" in row["kernel"] and "wgmma" not in error
    )
    return not candidate_too_big


def run_case(name, fn, signature, constexprs, target, warps, stages) -> dict:
    try:
        return {"kernel": name, **compile_one(fn, dict(signature), constexprs, target, warps, stages)}
    except Exception as err:  # report every kernel, then fail
        return {"kernel": name, "error": f"{type(err).__name__}: {str(err)[:300]}"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability ×10 (90 = Hopper)")
    ap.add_argument("--all-configs", action="store_true", help="every autotune candidate of the loss kernel")
    ap.add_argument("--quick", action="store_true", help="skip the slow fp32 compiles of large tiles (CI)")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    report, failures = [], 0
    cases = [
        *sigmoid_cases(target, args.all_configs, args.quick),
        *ntxent_cases(target),
        *augment_cases(target),
    ]
    for row in cases:
        fits = row.get("fits_h100", "error" not in row)
        if row.get("tensor_cores_required") and fits and not row.get("wgmma"):
            row["error"] = "16-bit dots did not lower to wgmma (tensor cores)"
        # A candidate too big for an H100 is expected (the autotuner skips it); other errors are not.
        failures += ("error" in row and not row["kernel"].startswith("sigmoid")) or (
            "error" in row and ("no candidate" in row["error"] or "wgmma" in row["error"])
        )
        report.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "triton": triton.__version__, "kernels": report}, f, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
