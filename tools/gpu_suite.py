#!/usr/bin/env python3
"""The GPU suite's five stages and its command line; ``tools/gpu_suite.sh`` is the entry point (its
header says how to run each stage on a GPU machine), tools/stage_runner.py runs a stage.

    tools/gpu_suite.sh list              the stages, their limits and expected durations
    tools/gpu_suite.sh 1 [2 ...]         stages by number or name; `all` runs the five in order
    tools/gpu_suite.sh --smoke all       every step at tiny sizes: minutes on a CPU (CI runs it)
    tools/gpu_suite.sh data SHARED DIR   CIFAR-10 in the official layout from the JPEG pack

Results go to $OUT (default benchmarks/local/gpu-suite): stage-K.json and stage-K/ per stage. The
commit is $COMMIT or --commit (a copied checkout may have no .git), else git's. Exit status 1
when a step failed, ran out of time or was not reached.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from stage_runner import ROOT, Stage, StageRun, Step, environment, git_commit, now
from suite_tests import (
    KERNEL_TESTS,
    NOT_THERE,
    NOT_THERE_CASES,
    OTHER_TESTS,
    SIGMOID_TESTS,
    TRAIN_TESTS,
    unplaced_tests,
)

# A stage takes at most 8 minutes and the five together at most 25, so each fits a 10-minute command
# with its start-up; stage 1, the most valuable, has 5.5 so that a first GPU run of about 15 minutes
# in all keeps time to rerun it.
STAGE_LIMIT_S = 480
SUITE_LIMIT_S = 1500
FIRST_STAGE_LIMIT_S = 330
# Stage 1's expected time: the measured seconds of compiling every kernel variant it JIT-compiles
# (tools/launch_inventory.py, then tools/compile_kernels.py --inventory, on a 2-core CPU: a GPU
# host's CPU compiles no slower) plus STAGE1_REST_S, an estimate of the rest from its work: pytest's
# start-up and collection (~15 s), the kernel tests' own GPU time at their small sizes (~15 s),
# test_training_on_cuda's two 2-epoch runs on 2,048 images, one under torch.compile (~60 s), and
# the bench step's 12 timed cases with warm-up and the matmul rate (~30 s).
STAGE1_COMPILE = ROOT / "benchmarks" / "results" / "stage1-compile-sm90.json"
STAGE1_REST_S = 120
STAGE1_FALLBACK_S = 240  # without the compile report: the estimate from each step's work

PYTEST = "{py} -m pytest -p no:cacheprovider -q"
BENCH = "{py} -m fastsigclr bench"
DATA = Step("data", "{py} tools/gpu_suite.py data {shared} {data}", 120)
# siglip-kernel where installed ([baselines]); triton-fused: the one pass where triton takes strips
SIGLIP_PROVIDERS = "chunked,triton,triton-fused,siglip-kernel"


def correctness(smoke: bool) -> tuple[Step, ...]:
    only = " -k without_gradient" if smoke else ""
    loss = "--sizes 1024,8192,16384 --dims 128 --dtypes bf16"
    if smoke:
        loss = "--sizes 64,128 --dims 16 --dtypes fp32 --reps 2 --warmup 1"
    files = f"tests/test_gpu.py {SIGMOID_TESTS} {KERNEL_TESTS}"
    return (
        # One process: every kernel variant is compiled once (the JIT cache lives in the process).
        Step("pytest-kernels", f"{PYTEST} {files}{only}", 240, group="tests"),
        # eager vs the kernel; the bench measures the bf16 matmul rate in the same run
        Step("bench-loss", f"{BENCH} loss {loss} --providers eager,triton --out {{out}}", 80),
    )


def tests(smoke: bool) -> tuple[Step, ...]:
    files = f"{TRAIN_TESTS} {OTHER_TESTS} -k '{NOT_THERE_CASES}'"
    if smoke:
        files = "tests/test_train.py tests/test_models_optim.py -k 'cuda_without_gpu or lars'"
    return (Step("pytest-rest", f"{PYTEST} {files}", 290, group="tests"),)


def loss(smoke: bool) -> tuple[Step, ...]:
    # The bench's CUDA sizes (2N 1024-65536) and dims (64, 128, 256), in bf16, the training dtype.
    one = "--dims 128 --dtypes bf16"
    grid, chunked = "--dtypes bf16 --reps 10", f"--sizes 1024,4096,16384 {one} --reps 10"
    compiled = f"--sizes 16384 {one}"
    compiled_providers = "eager,compiled,triton"
    tiny = "--dtypes fp32 --reps 2 --warmup 1"
    if smoke:  # torch.compile costs ~15 s per case on a CPU; tests/test_config_cli.py runs it
        grid, chunked = f"--sizes 64,128 --dims 8,16 {tiny}", f"--sizes 64 --dims 8 {tiny}"
        compiled, compiled_providers = chunked, "eager,triton"
    bench = f"{BENCH} loss --out {{out}}"
    # SigLIP's two towers at B = 8,192 and 65,536, D = 128 and 768, against siglip-kernel (its bf16
    # default: cuBLAS over chunks of rows); what deterministic sums cost; SigCLR's strips (a quarter
    # of the rows, or as tall as their bytes allow) vs one pass.
    siglip = "--losses siglip --sizes 16384,131072 --dims 128,768 --dtypes bf16 --reps 10"
    determ = "--losses sigclr,siglip --sizes 16384,131072 --dims 128 --dtypes bf16 --reps 10"
    determ += " --providers chunked,triton"
    strips = "--losses sigclr --sizes 16384,131072 --dims 256,768 --dtypes bf16 --reps 10"
    strips += " --providers triton,triton-tall-strips,triton-fused"
    if smoke:
        siglip = f"--losses sigclr,siglip --sizes 64 --dims 8 {tiny}"
        determ = strips = f"{siglip} --providers chunked,triton"
    return (
        Step("bench-loss-siglip", f"{bench}/siglip {siglip} --providers {SIGLIP_PROVIDERS} --profile", 90),
        Step("bench-loss-strips", f"{bench}/strips {strips}", 45),
        Step("bench-loss-deterministic", f"{bench}/deterministic {determ} --deterministic", 60),
        Step("bench-loss-grid", f"{bench}/grid {grid} --providers eager,triton", 150),
        Step("bench-loss-chunked", f"{bench}/chunked {chunked} --providers eager,chunked", 90),
        Step("bench-loss-compiled", f"{bench}/compiled {compiled} --providers {compiled_providers}", 120),
    )


def pipeline(smoke: bool) -> tuple[Step, ...]:
    # The benchmarks' CUDA defaults: ResNet-18 at batch 512; 50,000 images; 2N 8192 and 16384.
    train, augment, dist = "", "", ""
    if smoke:
        train = "--width 8 --batch-size 32 --limit-train 256 --reps 2 --warmup 1"
        augment, dist = (
            "--backends gpu,pil --sizes 32 --images 128 --batch-size 64 --reps 1",
            "--sizes 128 --dim 16 --reps 2",
        )
    torchrun = "{py} -m torch.distributed.run --nproc_per_node 2 -m fastsigclr train --dataset cifar10"
    return (
        DATA,
        Step("bench-train", f"{BENCH} train --data-dir {{data}} --data real {train} --out {{out}}", 120),
        Step("bench-augment", f"{BENCH} augment {augment} --out {{out}}", 120),
        Step("bench-dist", f"{BENCH} dist {dist} --out {{out}}", 60),
        Step(
            "torchrun-2-ranks",
            f"{torchrun} --data-dir {{data}} --epochs 1 --no-progress --out {{out}}/run-torchrun",
            150,
            gpus=2,
        ),
    )


def cifar10(smoke: bool, epochs: int) -> tuple[Step, ...]:
    train, linear = f"--epochs {epochs} --warmup-epochs 1 --knn-every 5 --no-progress", ""
    if smoke:
        train = "--epochs 1 --width 8 --batch-size 128 --limit-train 512 --limit-test 200 --no-progress"
        linear = "--linear-epochs 2"
    run = "{out}/run-cifar10"
    fastsigclr = "{py} -m fastsigclr"
    return (
        DATA,
        # A rerun into the same $OUT trains anew: drop-weights left the last run's records without
        # its checkpoints, which --resume would refuse (and the evaluations find no checkpoint).
        Step("fresh-run", f"rm -rf {run}", 10),
        Step("train", f"{fastsigclr} train --dataset cifar10 --data-dir {{data}} {train} --out {run}", 200),
        Step("eval-knn", f"{fastsigclr} eval --run {run} knn --no-progress", 60),
        Step("eval-linear", f"{fastsigclr} eval --run {run} linear {linear} --no-progress", 120),
        # Keep the record, not the weights: the results folder stays small enough to copy back.
        Step("drop-weights", f"rm -rf {run}/checkpoints {run}/tensorboard", 10),
    )


def stage1_compile(path: Path | None = None) -> tuple[float | None, str]:
    """(seconds, what they are) of compiling stage 1's kernel variants, from the committed report
    (STAGE1_COMPILE); (None, why not) where it is missing or damaged."""
    path = path or STAGE1_COMPILE
    name = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    fix = "run tools/launch_inventory.py, then tools/compile_kernels.py --inventory"
    try:
        report = json.loads(path.read_text())
        seconds, variants = float(report["compile_seconds"]), int(report["variants"])
        cpu, commit = report["compiled_on"], str(report.get("commit") or "?")[:7]
        where = f"{cpu['cores']}-core {cpu['name']} CPU" if isinstance(cpu, dict) else str(cpu)
    except FileNotFoundError:
        return None, f"{name} is missing ({fix})"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"{name} is unreadable ({type(err).__name__}: {err}; {fix})"
    return seconds, f"{seconds:.1f} s compiling {variants} kernel variants, measured on a {where} at {commit}"


def stage1_expected() -> tuple[int, str]:
    """Stage 1's expected seconds and how they were reached."""
    seconds, what = stage1_compile()
    if seconds is None:
        return STAGE1_FALLBACK_S, f"an estimate from its steps' work: {what}"
    return round(seconds) + STAGE1_REST_S, f"{what}, + {STAGE1_REST_S} s estimated for the rest"


def build_stages(smoke: bool = False, epochs: int = 10) -> list[Stage]:
    """The five stages; with smoke, the same steps at tiny sizes, on whatever device is there.
    Expected durations are estimates from each step's work, except stage 1's compiling
    (stage1_expected) and stage 2 (measured on an H200: benchmarks/results/gpu-2026-12-04)."""
    return [
        Stage(
            "1",
            "correctness",
            "GPU-marked tests; the kernel tests compiled; loss bench, 2N 1024/8192/"
            "16384, D 128, bf16: eager vs kernel vs the matmul rate",
            stage1_expected()[0],
            FIRST_STAGE_LIMIT_S,
            correctness(smoke),
        ),
        Stage(
            "2",
            "tests",
            "training, distributed and the other tests with CUDA present (list: what is left out, why)",
            235,  # measured: 230 s on an H200 (benchmarks/results/gpu-2026-12-04)
            300,
            tests(smoke),
        ),
        Stage(
            "3",
            "loss",
            "loss bench: SigLIP vs siglip-kernel and the one pass (B 8192/65536, D 128/768), SigCLR's "
            "strips vs the one pass (D 256/768), determinism, bf16 grid (2N 1024-65536, D 64/128/256), "
            "chunked, compile",
            330,
            360,
            loss(smoke),
        ),
        Stage(
            "4",
            "pipeline",
            "bench train (ResNet-18, batch 512), augment (gpu vs PIL), dist; torchrun if 2 GPUs",
            150,
            210,
            pipeline(smoke),
        ),
        Stage(
            "5",
            "cifar10",
            f"SigCLR on CIFAR-10, {epochs} epochs, kNN and linear probe",
            200,
            300,
            cifar10(smoke, epochs),
        ),
    ]


def prepare_data(shared: Path, data: Path) -> int:
    """CIFAR-10 in the official layout under ``data``, written once (moved into place when whole)."""
    target = data / "cifar-10-batches-py"
    if (target / "test_batch").is_file():
        print(f"{target}: already written")
        return 0
    tool = shared / "tools" / "cifar10-from-jpeg"
    if not tool.is_file():
        print(
            f"no CIFAR-10 pack under {shared}: copy the shared tools/cifar10-from-jpeg and "
            "data/cifar10-jpeg/ into shared-data/ (see tools/gpu_suite.sh)",
            file=sys.stderr,
        )
        return 1
    partial = data.with_name(data.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    rc = subprocess.run([sys.executable, str(tool), str(partial)]).returncode
    if rc == 0:
        data.mkdir(parents=True, exist_ok=True)
        (partial / "cifar-10-batches-py").rename(target)
        partial.rmdir()
    return rc


def find_shared() -> Path:
    """The folder holding tools/cifar10-from-jpeg and data/cifar10-jpeg/: $FASTSIGCLR_SHARED, the
    git-ignored shared-data/ copied with the checkout, or a shared/ in it or beside it (CI)."""
    candidates = (
        os.environ.get("FASTSIGCLR_SHARED"),
        ROOT / "shared-data",
        ROOT / "shared",
        ROOT.parent / "shared",
    )
    for candidate in candidates:
        if candidate and (Path(candidate) / "tools" / "cifar10-from-jpeg").is_file():
            return Path(candidate)
    return ROOT / "shared-data"


def print_stages(stages: list[Stage]) -> None:
    def minutes(seconds: int) -> str:
        return f"{seconds / 60:.1f} min"

    print(f"{'stage':<6}{'name':<13}{'limit':>9}{'expected':>10}  steps")
    for st in stages:
        steps = ", ".join(s.name for s in st.steps)
        print(f"{st.key:<6}{st.name:<13}{minutes(st.limit_s):>9}{minutes(st.expected_s):>10}  {steps}")
        print(f"{'':<6}{st.what}")
    limit, expected = sum(s.limit_s for s in stages), sum(s.expected_s for s in stages)
    note = "(expected: stage 2 measured, the rest estimates)"
    print(f"{'all':<19}{minutes(limit):>9}{minutes(expected):>10}  {note}")
    print(f"stage 1 expected: {stage1_expected()[1]}")
    print("not in the suite: " + "; ".join(f"{Path(f).name} ({why})" for f, why in NOT_THERE.items()))
    unplaced = unplaced_tests(stages)
    print(f"test files in no stage: {' '.join(unplaced) if unplaced else 'none'}")


def select(names: list[str], stages: list[Stage]) -> list[Stage]:
    if names == ["all"]:
        return stages
    known = {**{s.key: s for s in stages}, **{s.name: s for s in stages}}
    unknown = [n for n in names if n not in known]
    if unknown:
        choices = ", ".join(f"{s.key} ({s.name})" for s in stages)
        raise SystemExit(f"gpu_suite: unknown stage {', '.join(unknown)}; choose list, all, or {choices}")
    return [known[n] for n in names]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="tools/gpu_suite.sh", description="The GPU suite, in stages.")
    ap.add_argument("stages", nargs="+", help="list, all, or stage numbers or names (see list)")
    ap.add_argument("--smoke", action="store_true", help="every step at tiny sizes: minutes on a CPU")
    ap.add_argument("--out", default=os.environ.get("OUT") or "benchmarks/local/gpu-suite", help="results")
    ap.add_argument("--commit", default=os.environ.get("COMMIT"), help="the commit measured; else git's")
    ap.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", "10")), help="stage 5")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"] and len(argv) == 3:
        return prepare_data(Path(argv[1]), Path(argv[2]))
    args = parse_args(argv)
    stages = build_stages(args.smoke, args.epochs)
    if args.stages == ["list"]:
        print_stages(stages)
        return 0
    chosen = select(args.stages, stages)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shared = find_shared()
    data = Path(os.environ.get("FASTSIGCLR_SUITE_DATA") or "/tmp/fastsigclr-suite/cifar10").resolve()
    env = {**os.environ, "FASTSIGCLR_SHARED": str(shared), "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    env["FASTSIGCLR_CIFAR10"] = str(data)  # tests/conftest.py converts into it once, or reuses it
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    git = git_commit()
    commit = args.commit or git
    if args.commit:  # the benchmarks' own records: a copy's .git, if any, may be older than its files
        env["FASTSIGCLR_COMMIT"] = args.commit
    command = ["tools/gpu_suite.sh", *argv]
    fmt = {"py": sys.executable, "data": str(data), "shared": str(shared)}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # lets a running stage record and clean up
    status = 0
    for stage in chosen:
        print(f"== {now()[11:19]} stage {stage.key} ({stage.name}), limit {stage.limit_s} s", flush=True)
        header = {
            "suite": "tools/gpu_suite.sh",
            "command": " ".join(command),
            "smoke": args.smoke,
            "commit": commit,
            "commit_source": "given" if args.commit else ("git" if git else None),
            "git_commit": git,
            "environment": environment(sys.executable, env, command),
        }
        status |= StageRun(stage, out, header, fmt, env).run()
    print(f"== done: {'ok' if status == 0 else 'FAILED'}, stages {' '.join(s.key for s in chosen)} -> {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
