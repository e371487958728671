#!/usr/bin/env python3
"""Does Triton warp-specialize the sigmoid loss's loops on Hopper? Compile and see.

Warp specialization would let one warpgroup issue the tensor-core work of a tile while another
runs the special functions and the element-wise work of the previous one (the loop is issue-bound
past one feature tile: docs/design.md §3). Triton's frontend asks for it per loop,
``tl.range(..., warp_specialize=True)``; the weight-strip kernel (kernels/sigmoid_strip.py) takes
it on its feature loop as the constexpr WARP_SPECIALIZE. This tool compiles that kernel's
two-tower case at D = 768 (bf16, with and without the loss terms) with the flag off and on, for
sm_90 and, for contrast, sm_100, and reports whether the compiler split the loop (a
``ttg.warp_specialize`` op in the TTGIR, its partitions' warps and requested registers,
``setmaxnreg`` in the PTX), the warps the kernel launches with, ptxas's registers (at launch) and
spills, and on sm_90 the SASS per pair of the column loop.

    python tools/warp_specialize.py [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import sys

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import torch
import triton
from compile_kernels import compile_case, specialise
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend

from fastsigclr.kernels import sigmoid_cases
from fastsigclr.runinfo import run_record


def probe(case, arch: int, on: bool) -> dict:
    """One compile of ``case`` for sm_<arch> with the feature loop's warp specialization on or off."""
    case = dataclasses.replace(case, constexprs=dict(case.constexprs, WARP_SPECIALIZE=on))
    row = dict(arch=arch, warp_specialize=on, variant=case.meta["variant"], D=case.meta["D"])
    target = GPUTarget("cuda", arch, 32)
    src, options = specialise(case, make_backend(target))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            kernel = triton.compile(src, target=target, options=options)
    except Exception as err:  # a toolchain that rejects the request is a finding too
        return dict(row, error=f"{type(err).__name__}: {str(err)[:200]}")
    ttgir = kernel.asm["ttgir"]
    # One `ttg.warp_specialize(...)` op per specialized loop: its default region runs on the
    # launch's warps, its `partitionN(...) num_warps(W)` regions on warps of their own.
    row["specialized_loops"] = len(re.findall(r"ttg\.warp_specialize\(", ttgir))
    row["partitions"] = [int(w) for w in re.findall(r"^\s*partition\d+\(.*\bnum_warps\((\d+)\)", ttgir, re.M)]
    asked = re.findall(r"requestedRegisters = array<i32: ([\d, ]+)>", ttgir)
    row["partition_registers"] = [int(n) for found in asked for n in found.split(",")]
    row["setmaxnreg"] = "setmaxnreg" in kernel.asm["ptx"]
    row["warps"] = kernel.metadata.num_warps
    # ptxas's usage and the SASS counts (tools/compile_kernels.py), whose loop finder and wgmma
    # check know Hopper's matrix instructions only: sm_100's dots are tcgen05, counted apart.
    counted = compile_case(dataclasses.replace(case, tensor_cores=arch == 90), arch)
    keep = ["registers", "spill_store_bytes", "shared_bytes", "error"]
    if arch == 90:
        keep += ["wgmma", "sass_per_pair", "mufu_per_pair"]
    else:
        row["tcgen05"] = "tcgen05.mma" in kernel.asm["ptx"]
    return dict(row, **{k: counted[k] for k in keep if k in counted})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="write the rows and the run's record here")
    args = ap.parse_args()
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True
    cases = [c for c in sigmoid_cases.strip_cases() if c.meta["kernel"].endswith("two-tower")]
    cases = [c for c in cases if c.meta["D"] == 768]
    rows = [probe(c, arch, on) for c in cases for arch in (90, 100) for on in (False, True)]
    for r in rows:
        print(json.dumps(r))
    if args.json:
        record = run_record(torch.device("cpu"), ["tools/warp_specialize.py", *sys.argv[1:]])
        record["compiled_on"] = record.pop("device")
        with open(args.json, "w") as f:
            json.dump({**record, "rows": rows}, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
