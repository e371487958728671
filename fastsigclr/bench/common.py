"""Timing and result files shared by the microbenchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from fastsigclr.checkpoint import WriteError, json_text, write_text_atomic
from fastsigclr.config import FastSigCLRError
from fastsigclr.filetype import PNG_MAGIC, json_object, not_a_file, replaces_only, starts_with

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_even_sizes(sizes: tuple[int, ...] | None) -> None:
    """--sizes counts the rows 2N of two views of N images (the losses' view-major layout)."""
    odd = [n for n in sizes or () if n % 2]
    if odd:
        raise ValueError(
            f"--sizes {','.join(map(str, odd))}: each size is 2N rows, two views of N images, so it must "
            f"be even; pass e.g. --sizes {','.join(str(n + 1) for n in odd)}"
        )


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int, reps: int) -> dict[str, float]:
    """Median and 20th/80th percentiles of ``fn`` in milliseconds; warm-up (and any compilation
    it triggers) stays outside the timed region. CUDA is timed with events, one pair per call."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        pairs = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)
        ]
        for start, end in pairs:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        times = [start.elapsed_time(end) for start, end in pairs]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    # "inclusive": the default ("exclusive") extrapolates past the data with few reps, and times of
    # [1, 10] ms gave p20 = −0.8 ms, a negative error bar that matplotlib refuses.
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) >= 2 else [times[0]] * 4
    return {"median_ms": statistics.median(times), "p20_ms": q[0], "p80_ms": q[3], "reps": len(times)}


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    """Achieved rate of one square matmul in this run: the roofline the loss kernels are held to.
    fp32 on CUDA is timed with TF32 allowed, as the kernels take fp32 rows by default (torch's own
    default, IEEE fp32 off the tensor cores, would let a TF32 kernel pass its roofline)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = device.type == "cuda" and dtype == torch.float32
    try:
        timing = time_fn(lambda: a @ b, device, warmup=2, reps=reps)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    return 2 * size**3 / (timing["median_ms"] * 1e-3) / 1e12


def write_json(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json_text(payload, indent=2, default=str) + "\n", fix="choose a writable --out")


def is_results(record: dict[str, Any] | None) -> bool:
    """Whether a JSON object is a results file of fastsigclr's: it opens with the run record."""
    return record is not None and {"date", "command", "versions"} <= set(record)


# What a results path may replace, by its suffix: a results JSON, a plot, a table of ccem's.
RESULT_KINDS = {
    ".json": (lambda path: is_results(json_object(path)), "a results file of fastsigclr's"),
    ".png": (lambda path: starts_with(path, PNG_MAGIC), "a PNG image"),
    ".csv": (lambda path: starts_with(path, b"variant,"), "a results table of fastsigclr's"),
}


def check_outputs(paths: Iterable[Path], fix: str = "move it away, or choose another --out") -> None:
    """Refuse, in one line and before anything is measured, an output path where a write would
    fail or replace what is not a results file: a folder, a symbolic link (the rename would
    replace the link), a pipe, socket or device, or a file of another kind (``RESULT_KINDS``: an
    --out that held a dataset or a sweep's results). A missing path is fine."""
    for path in map(Path, paths):
        # None also where a part of its folder path is a file: writable_folder names that
        if (what := not_a_file(path)) is not None:
            raise FastSigCLRError(f"{path} is {what}, where a results file is written; {fix}")
        kind = RESULT_KINDS.get(path.suffix)
        if kind is not None and (why := replaces_only(path, *kind)) is not None:
            raise FastSigCLRError(f"{path} {why}; {fix}")


def partial_path(json_path: Path) -> Path:
    """Where a benchmark that writes its cases as it goes keeps them until it completes (`bench
    loss`): ``<name>-<device>.partial.json``, so the last complete results stay as they were."""
    return json_path.with_suffix(".partial.json")


def result_paths(out: str | Path, name: str, device: torch.device) -> tuple[Path, Path]:
    """``<out>/<name>-<device>.json`` and ``.png``, checked (``check_outputs``, with the partial
    results' path) before measuring."""
    stem = Path(out) / f"{name}-{device.type}"
    paths = stem.with_suffix(".json"), stem.with_suffix(".png")
    check_outputs([*paths, partial_path(paths[0])])
    return paths


def write_results(payload: dict[str, Any], paths: tuple[Path, Path], plot: Callable[..., None]) -> None:
    """The results JSON, then its plot; a plot that cannot be written keeps the JSON (the
    measurement) and says how to draw the plot again."""
    json_path, png_path = paths
    write_json(json_path, payload)
    try:
        plot(payload, png_path)
    except WriteError as err:
        what = "free space" if err.no_space else "move what is in the way, or make the folder writable"
        raise FastSigCLRError(
            f"{str(err).rsplit('; ', 1)[0]}; the measured results are in {json_path}: {what}, then "
            f"`fastsigclr bench plot {json_path}` draws the plot"
        ) from err
