"""``tools/compile_kernels.py --inventory FILE``: compile for sm_90 every kernel variant of a launch
inventory (tools/launch_inventory.py: what the GPU suite's first stage JIT-compiles) and report
each one's compile seconds and their sum, against a quarter of the stage's time limit.

The sum is what one process spends compiling them one after another (the JIT compiles in the thread
that launches, in the stage's pytest and bench processes), so they are compiled one at a time by default.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch
from gpu_suite import FIRST_STAGE_LIMIT_S
from triton.runtime.jit import MockTensor

from fastsigclr.kernels import augment, ntxent, sigmoid, sigmoid_strip
from fastsigclr.kernels.tiles import CompileCase

KERNELS = {
    "sigmoid": sigmoid._sigmoid_block_kernel,
    "sigmoid strip": sigmoid_strip._weight_strip_kernel,
    "ntxent fwd": ntxent._ntxent_fwd_kernel,
    "ntxent bwd": ntxent._ntxent_bwd_kernel,
    "augment": augment._two_view_kernel,
}
WHO = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
# The compile seconds of the stage's variants may take at most this share of its limit.
COMPILE_SHARE = 0.25


class Misaligned(MockTensor):
    """A tensor argument whose address is not a multiple of 16 bytes (a view at an odd offset)."""

    @staticmethod
    def data_ptr():
        return 8


def argument(spec: object) -> object:
    """A recorded argument (kernels/launches.py) as the compile tool passes it to the JIT's binder."""
    if isinstance(spec, dict):
        dtype = getattr(torch, spec["tensor"])
        return dtype if spec["aligned"] else Misaligned(dtype)
    return spec


def inventory_cases(path: str) -> list[CompileCase]:
    with open(path) as f:
        variants = json.load(f)["variants"]
    cases = []
    for v in variants:
        tensors = [a["tensor"] for a in v["args"] if isinstance(a, dict)]
        dtype = next((t for t in tensors if t.startswith(("float", "bfloat"))), tensors[0])  # the data's
        meta = dict(kernel=v["kernel"], dtype=dtype, constexprs=v["constexprs"], args=v["args"])
        meta["sources"] = v["sources"]
        args = tuple(argument(a) for a in v["args"])
        cases.append(CompileCase(KERNELS[v["kernel"]], args, v["constexprs"], v["warps"], v["stages"], meta))
    return cases


def timed_case(index: int, arch: int, path: str) -> dict:
    """Worker: compile_kernels.run_case, and the CPU seconds it took (its own and ptxas's): other
    jobs on the host stretch the wall-clock seconds, not these."""
    from compile_kernels import run_case

    def cpu() -> float:
        return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime for who in WHO)

    start = cpu()
    row = run_case(index, False, arch, "", path)
    return dict(row, cpu_seconds=round(cpu() - start, 1))


def compile_inventory(path: str, arch: int, jobs: int, out: str | None, argv: list[str]) -> int:
    """Compile each variant of the inventory at ``path``; print and (``out``) write the report."""
    from compile_kernels import header, write_report

    count = len(inventory_cases(path))
    load = [os.getloadavg()[0]]  # other jobs on the host slow the compiles: recorded with them
    rows = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        for row in pool.map(timed_case, range(count), [arch] * count, [path] * count):
            rows.append(row)
            c = row["constexprs"]
            what = f"{row['kernel']} {row['dtype']} {c.get('BLOCK_M', '')} K{c.get('BLOCK_K', '')}"
            print(
                f"[{len(rows)}/{count}] {what} {row.get('seconds', 'error')} s", file=sys.stderr, flush=True
            )
    load.append(os.getloadavg()[0])
    total = round(sum(r.get("seconds", 0) for r in rows), 1)
    cpu_total = round(sum(r["cpu_seconds"] for r in rows), 1)
    budget = COMPILE_SHARE * FIRST_STAGE_LIMIT_S
    by_kernel: dict[str, float] = {}
    for r in rows:
        by_kernel[r["kernel"]] = round(by_kernel.get(r["kernel"], 0) + r.get("seconds", 0), 1)
    with open(path) as f:
        inventory = json.load(f)
    report = {**header(argv), "arch": arch, "jobs": jobs, "inventory": path, "load_average_1min": load}
    report["inventory_recorded"] = {k: inventory.get(k) for k in ("date", "commit", "command")}
    report.update(stage="1", stage_limit_s=FIRST_STAGE_LIMIT_S, budget_s=budget, variants=count)
    report.update(compile_seconds=total, compile_cpu_seconds=cpu_total, compile_seconds_by_kernel=by_kernel)
    report["within_budget"] = total < budget
    report["kernels"] = rows
    if out:
        write_report(out, report)
    errors = [f"{r['kernel']} {r['dtype']}: {r['error']}" for r in rows if "error" in r]
    for line in errors:
        print("FAILED:", line, file=sys.stderr)
    verdict = "within" if total < budget else "OVER"
    print(f"stage 1: {count} variants, {total} s of compiling, {cpu_total} s of CPU time "
          f"({verdict} the budget of {budget:.1f} s)")  # fmt: skip
    return 1 if errors or total >= budget else 0
