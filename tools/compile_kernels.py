#!/usr/bin/env python3
"""Compile every Triton kernel ahead of time for a CUDA target, as the JIT would, without a GPU.

Triton's compiler and ptxas run on any Linux host, so CPU-only CI sees what the interpreter cannot:
compiled-mode errors, and what each launch costs on the GPU. Every kernel module lists its launches
(``compile_cases()``: example arguments, constexprs, warps and stages as its launcher passes them);
the JIT's own argument binder turns them into the specialisation it compiles at run time (16-byte
aligned pointers, integers divisible by 16 marked so). Per case the report gives ptxas's registers,
spills and local memory, the shared memory, whether the dots lower to wgmma (Hopper's tensor
cores), and from the SASS of the inner loop its instructions and MUFU (special-function)
operations per pair, i.e. per element of the loop's tile over the threads that share it.
Autotune candidates are marked ``kept`` when the runtime's pruning (select_configs) would keep
them.

    python tools/compile_kernels.py [--arch 90] [--quick] [--jobs N] [--json OUT]
    python tools/compile_kernels.py --inventory FILE [--json OUT]   (tools/compile_inventory.py)
The committed report is benchmarks/results/kernels-sm90.json (a run without --quick); the GPU
suite's first stage's is benchmarks/results/stage1-compile-sm90.json. Exit status
1 if a launchable case fails to compile, a dot that must use tensor cores misses wgmma on sm_90,
or a group of autotune candidates has none the runtime would keep.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")

import cost_model
import torch
import triton
from sass_listing import inner_loop, nested_loop, ptxas_usage, sass_instructions, spill_instructions
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import MockTensor, create_function_from_signature

from fastsigclr.kernels import augment, ntxent, sigmoid_cases
from fastsigclr.kernels.tiles import CompileCase, select_configs
from fastsigclr.runinfo import run_record

# Shared memory one block may opt in to on an H100/H200 (sm_90): 227 KiB.
SM90_MAX_SHARED = 227 * 1024
GROUP = ("kernel", "variant", "dtype", "D")  # the rows one autotuner chooses among


def all_cases(quick: bool, only: str = "") -> list[CompileCase]:
    """Every module's compile cases; ``only``: those whose kernel name starts with it."""
    cases = [
        *sigmoid_cases.compile_cases(quick),
        *sigmoid_cases.strip_cases(),
        *ntxent.compile_cases(quick),
        *augment.compile_cases(quick),
    ]
    if only.startswith("siglip-kernel"):  # the public baseline (tools/baseline_kernels.py)
        from baseline_kernels import siglip_kernel_cases

        cases = siglip_kernel_cases()
    return [c for c in cases if c.meta.get("kernel", "").startswith(only)]


def specialise(case: CompileCase, backend) -> tuple[ASTSource, dict]:
    """The source and options the JIT would compile for this launch (triton 3.6's binder)."""
    fn = case.fn
    kwargs = dict(case.constexprs, num_warps=case.num_warps, num_stages=case.num_stages, debug=False)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*map(MockTensor.wrap_dtype, case.args), **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(fn, signature, constexprs, attrs), options.__dict__


def compile_case(case: CompileCase, arch: int) -> dict:
    target = GPUTarget("cuda", arch, 32)
    src, options = specialise(case, make_backend(target))
    start = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # ptxas -v, printed by triton with dump_ptxas_log
        kernel = triton.compile(src, target=target, options=options)
    row = {"seconds": round(time.perf_counter() - start, 1), **ptxas_usage(log.getvalue())}
    row["shared_bytes"] = kernel.metadata.shared
    row["launchable"] = kernel.metadata.shared <= SM90_MAX_SHARED
    ptx = kernel.asm["ptx"]
    row["wgmma"] = "wgmma" in ptx
    row["mma"] = "mma.sync" in ptx
    per_thread = case.pairs_per_iteration / (case.num_warps * 32)
    if case.pairs_per_iteration and "feature_trips" in case.meta:
        sass, trips = sass_instructions(kernel.asm["cubin"]), case.meta["feature_trips"]
        total, mufu = nested_loop(sass, trips, "cheapest" if case.meta.get("rare_tiles") else "all")
        row.update(loop_instructions=total, sass_per_pair=round(total / per_thread, 2))
        row.update(spill_instructions(sass))
        if case.meta.get("rare_tiles"):  # what a tile with positives, i = j or a tail adds
            row["rare_tile_instructions"] = nested_loop(sass, trips, "dearest")[0] - total
        row["mufu_per_pair"] = round(mufu / per_thread, 3)
    elif case.pairs_per_iteration:
        body = inner_loop(sass_instructions(kernel.asm["cubin"]))
        row["loop_instructions"] = len(body)
        row["sass_per_pair"] = round(len(body) / per_thread, 2)
        row["mufu_per_pair"] = round(sum(t.split()[0].startswith("MUFU") for t in body) / per_thread, 3)
    if case.tensor_cores and row["launchable"]:
        # wgmma takes 64 rows per warpgroup: smaller tiles may only reach mma.sync.
        wgmma = arch >= 90 and case.meta.get("BLOCK_M", 64) >= 64
        if not row["wgmma"] and (wgmma or not row["mma"]):
            row["error"] = f"dots did not lower to {'wgmma' if wgmma else 'mma'} (tensor cores)"
    return row


def run_case(index: int, quick: bool, arch: int, only: str = "", inventory: str = "") -> dict:
    """Worker: rebuild the case list (kernels cannot be pickled) and compile case ``index``."""
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # a cached kernel has no ptxas log
    if inventory:
        from compile_inventory import inventory_cases

        case = inventory_cases(inventory)[index]
    else:
        case = all_cases(quick, only)[index]
    row = dict(case.meta, warps=case.num_warps, stages=case.num_stages, candidate=case.candidate)
    row["tensor_cores"] = case.tensor_cores
    try:
        row.update(compile_case(case, arch))
    except Exception as err:  # report every case, then fail
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return row


def mark_kept(rows: list[dict]) -> None:
    """kept: what the runtime's pruning would time, per group of autotune candidates, with ptxas's
    stack frame standing for the local memory the driver reports."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["candidate"] and "error" not in row:
            groups.setdefault(tuple(row.get(k) for k in GROUP), []).append(row)
    for members in groups.values():
        measured = [(id(r), r["BLOCK_M"], r["shared_bytes"], r["local_bytes"]) for r in members]
        keep = select_configs(measured, SM90_MAX_SHARED, min_rows=64 if members[0]["tensor_cores"] else 1)
        for row in members:
            row["kept"] = id(row) in keep


def failures(rows: list[dict]) -> list[str]:
    bad = [f"{r['kernel']} {r.get('dtype')}: {r['error']}" for r in rows if "error" in r]
    # A launcher's own configuration (not an autotune candidate) must fit: nothing prunes it.
    bad += [
        f"{r['kernel']} {r.get('variant', '')} {r['dtype']} D={r['D']}: {r['shared_bytes']} bytes of shared "
        f"memory, over the {SM90_MAX_SHARED} a block may use"
        for r in rows
        if not r["candidate"] and r.get("launchable") is False
    ]
    groups = {tuple(r.get(k) for k in GROUP) for r in rows if r["candidate"]}
    kept = {tuple(r.get(k) for k in GROUP) for r in rows if r.get("kept")}
    bad += [f"{' '.join(map(str, g))}: no autotune candidate fits without spilling" for g in groups - kept]
    return bad


def header(argv: list[str]) -> dict:
    """What every results file records (date, command, commit, versions), the host that compiled,
    and the cost model's constants (tools/cost_model.py)."""
    record = run_record(torch.device("cpu"), ["tools/compile_kernels.py", *argv])
    record["compiled_on"] = record.pop("device")
    return {**record, "cost_model": cost_model.constants()}


def remodel(path: str, argv: list[str]) -> int:
    """Apply the cost model to the rows of an existing report, in place (no compiling). The
    report keeps its compile's date, command and commit; ``remodelled`` records this run's."""
    with open(path) as f:
        report = json.load(f)
    cost_model.annotate(report["kernels"])
    now = header(argv)
    report["cost_model"] = now["cost_model"]
    report["remodelled"] = {key: now[key] for key in ("date", "command", "commit")}
    write_report(path, report)
    print_predictions(report["kernels"])
    return 0


def write_report(path: str, report: dict) -> None:
    with open(path + ".partial", "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    os.replace(path + ".partial", path)


def print_predictions(rows: list[dict]) -> None:
    """The modelled best config per (kernel, variant, dtype, D) and its predicted time."""
    groups = sorted({tuple(r.get(k) for k in GROUP) for r in rows if "model" in r}, key=str)
    for group in groups:
        pick = cost_model.best(rows, **dict(zip(GROUP, group, strict=True)))
        if pick is None:
            continue
        m = pick["model"]
        times = ", ".join(f"{k} {v} µs" for k, v in m["predicted_us"].items())
        what = " ".join(str(g) for g in group if g is not None)
        limits = "/".join(m.get("time_bound", [m["bound"]]))
        print(f"{what} {pick['BLOCK_M']}x{pick['BLOCK_N']}: loop {m['bound']}-bound, time {limits}; {times}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability ×10 (90 = Hopper)")
    ap.add_argument("--quick", action="store_true", help="the cases CI compiles (see compile_cases)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles in parallel")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--only", default="", help="only kernels whose name starts with this (e.g. ntxent)")
    ap.add_argument("--model", metavar="REPORT", help="apply the cost model to REPORT's rows, no compiling")
    inventory = (
        "compile a launch inventory's variants (tools/compile_inventory.py), one at a time unless --jobs"
    )
    ap.add_argument("--inventory", metavar="FILE", help=inventory)
    args = ap.parse_args()
    if args.model:
        return remodel(args.model, sys.argv[1:])
    if args.inventory:
        from compile_inventory import compile_inventory

        jobs = args.jobs if "--jobs" in sys.argv else 1
        return compile_inventory(args.inventory, args.arch, jobs, args.json, sys.argv[1:])
    count = len(all_cases(args.quick, args.only))
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        for row in pool.map(
            run_case, range(count), [args.quick] * count, [args.arch] * count, [args.only] * count
        ):
            rows.append(row)
            what = " ".join(str(row.get(k, "")) for k in (*GROUP, "BLOCK_M", "BLOCK_N"))
            print(
                f"[{len(rows)}/{count}] {what} {row.get('seconds', 'error')} s", file=sys.stderr, flush=True
            )
    mark_kept(rows)
    cost_model.annotate(rows)
    for row in rows:
        print(json.dumps(row), flush=True)
    print_predictions(rows)
    if args.json:
        seconds = round(sum(r.get("seconds", 0) for r in rows), 1)
        report = {**header(sys.argv[1:]), "arch": args.arch, "triton": triton.__version__}
        report.update(quick=args.quick, only=args.only, compile_seconds=seconds, kernels=rows)
        write_report(args.json, report)
    problems = failures(rows)
    for line in problems:
        print("FAILED:", line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
