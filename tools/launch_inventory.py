#!/usr/bin/env python3
"""The kernel variants the GPU suite's first stage compiles, recorded on a CPU.

Each launch is recorded as the compiled launch on an H100 would be made (kernels/launches.py: the
plan, constexprs, argument specialisations, warps and stages), and the inventory keeps each
variant once, as the JIT compiles it once per process. Three sources:

1. the stage's pytest files, run in the interpreter with FASTSIGCLR_RECORD_LAUNCHES set (the slow
   tests record-only: their sizes are the GPU's, too large for the interpreter);
2. the kernel tests of tests/test_gpu.py, which need CUDA: their launches made record-only on CPU tensors,
   with the parameters read from the test's own marks;
3. the stage's ``bench loss`` step: the bench's loss functions record-only on CPU tensors at the step's
   sizes, autotuned (no FASTSIGCLR_TUNE there), so every candidate of a tile is compiled.

Not recorded: test_training_on_cuda (a training run: the loss and augment launches of its batch,
and with --compile torch.compile's own kernels), which only a GPU can run.

    python tools/launch_inventory.py [--out benchmarks/results/stage1-launches.json]
Then ``tools/compile_kernels.py --inventory FILE`` compiles each variant and sums the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["TRITON_INTERPRET"] = "1"  # before triton: meta launches pass the loss's device check

import torch  # noqa: E402
from gpu_suite import correctness  # noqa: E402

from fastsigclr.kernels import launches  # noqa: E402
from fastsigclr.runinfo import run_record  # noqa: E402

NOT_RECORDED = {
    "tests/test_gpu.py::test_training_on_cuda": "a training run on CUDA (loss and augment launches of "
    "its batch; with --compile, torch.compile's own kernels): only a GPU runs it",
    "tests/test_deterministic.py::test_resumed_run_launches_with_the_recorded_plans[cuda]": "a training "
    "run on CUDA (bf16 autocast; the loss launches of its batch with the GPU's pinned plan): only a GPU "
    "runs it",
}


def stage_files() -> tuple[list[str], str]:
    """The pytest files of stage 1 and its bench-loss command (tools/gpu_suite.py)."""
    steps = {s.name: s.command for s in correctness(smoke=False)}
    files = [w for w in steps["pytest-kernels"].split() if w.endswith(".py")]
    return files, steps["bench-loss"]


def run_tests(files: list[str], record: Path, slow: bool) -> int:
    """pytest over ``files`` recording launches: fast tests run, slow ones record-only."""
    env = {k: v for k, v in os.environ.items() if k != launches.TUNE_ENV}  # conftest pins tiles
    env.update({launches.RECORD_ENV: str(record), "PYTHONPATH": str(ROOT)})
    env[launches.RECORD_ONLY_ENV] = "1" if slow else "0"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "slow" if slow else "not slow",
    ]
    return subprocess.run([*cmd, *files], cwd=ROOT, env=env).returncode


def rows(*shape: int, dtype=torch.float32, grad: bool = False) -> torch.Tensor:
    """CPU operands of a record-only launch (meta tensors would do, but autocast refuses them)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype).requires_grad_(grad)


def gpu_test_launches() -> None:
    """tests/test_gpu.py's kernel launches record-only on CPU tensors, at its marked parameters."""
    sys.path.insert(0, str(ROOT / "tests"))
    import test_gpu

    from fastsigclr.kernels import sigmoid_block
    from fastsigclr.losses import sigmoid_pairwise_loss

    marks = {m.args[0]: m.args[1] for m in test_gpu.test_autotuned_kernel_against_float64.pytestmark}
    for dtype, _ in marks["dtype,tol"]:
        for m, d, n_views in marks["m,d,n_views"]:
            zh, one = rows(m, d, dtype=dtype), torch.tensor(1.0)
            sigmoid_block(zh, zh, one, one, n_per_view=m // n_views, inv_m=1.0 / m, pairs="self")
    # test_memory_target_at_65536_rows: the loss of (65536, 256) bf16 rows, forward and backward.
    bias = torch.tensor(-10.0, requires_grad=True)
    sigmoid_pairwise_loss(
        rows(65536, 256, dtype=torch.bfloat16, grad=True), 10.0, bias, impl="triton"
    ).backward()


def bench_launches(command: str) -> None:
    """The bench-loss step's kernel launches (its triton provider) record-only on CPU tensors."""
    from fastsigclr.bench.common import DTYPES
    from fastsigclr.bench.loss import BENCH_LOSSES, BenchLossConfig, _loss_fn

    def values(flag: str) -> list[str]:
        found = re.search(rf"{flag} (\S+)", command)
        return found.group(1).split(",") if found else []

    if "triton" not in values("--providers"):
        return
    sizes, dims = [int(v) for v in values("--sizes")], [int(v) for v in values("--dims")]
    cfg = BenchLossConfig(sizes=tuple(sizes), dims=tuple(dims), dtypes=tuple(values("--dtypes")))
    for loss in values("--losses") or cfg.losses:
        for n in sizes:
            for dim in dims:
                for dtype in cfg.dtypes:
                    z = rows(n, dim, dtype=DTYPES[dtype], grad=True)
                    labels = torch.zeros(n // 2, dtype=torch.int64) if BENCH_LOSSES[loss].supervised else None
                    _loss_fn("triton", loss, cfg, torch.device("cpu"))(z, labels).backward()


def in_process(record: Path, tune: str, launch) -> None:
    os.environ.update({launches.RECORD_ENV: str(record), launches.RECORD_ONLY_ENV: "1"})
    os.environ[launches.TUNE_ENV] = tune
    try:
        launch()
    finally:
        for name in (launches.RECORD_ENV, launches.RECORD_ONLY_ENV, launches.TUNE_ENV):
            os.environ.pop(name, None)


def variants(records: dict[str, Path]) -> tuple[list[dict], dict]:
    """Each (kernel, arguments, constexprs, warps, stages) once, with the sources that launch it."""
    found: dict[str, dict] = {}
    counts = {}
    for source, path in records.items():
        lines = path.read_text().splitlines() if path.is_file() else []
        before = len(found)
        for line in lines:
            entry = json.loads(line)
            for warps, stages in entry.pop("configs"):
                variant = dict(entry, warps=warps, stages=stages)
                key = json.dumps(variant, sort_keys=True)
                found.setdefault(key, dict(variant, sources=[]))
                if source not in found[key]["sources"]:
                    found[key]["sources"].append(source)
        counts[source] = {"launches": len(lines), "new_variants": len(found) - before}
    return list(found.values()), counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/stage1-launches.json", help="the inventory (JSON)")
    args = ap.parse_args()
    files, bench = stage_files()
    with tempfile.TemporaryDirectory() as tmp:
        names = (
            "tests",
            "slow tests (record-only)",
            "tests/test_gpu.py (record-only)",
            "bench loss (autotuned)",
        )
        records = {name: Path(tmp) / f"{i}.jsonl" for i, name in enumerate(names)}
        status = {"tests": run_tests(files, records[names[0]], slow=False)}
        # Record-only: nothing is computed, so their asserts fail; only the launches count.
        status["slow tests (record-only)"] = run_tests(files, records[names[1]], slow=True)
        in_process(records[names[2]], "off", gpu_test_launches)
        in_process(records[names[3]], "on", lambda: bench_launches(bench))
        found, counts = variants(records)
    report = run_record(torch.device("cpu"), ["tools/launch_inventory.py", *sys.argv[1:]])
    report["recorded_on"] = report.pop("device")
    report.update(stage="1", test_files=files, bench_command=bench, pytest_exit_status=status)
    report.update(sources=counts, not_recorded=NOT_RECORDED, variant_count=len(found), variants=found)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".partial").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".partial").replace(out)
    print(f"{len(found)} variants -> {out}; by source: {json.dumps(counts)}")
    return 0 if status["tests"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
