"""``fastsigclr bench augment``: views per second of each loader backend on the same recipe, against
the way most SSL code augments: PIL operations per image in ``torch.utils.data.DataLoader``
workers (torchvision-style; written here with PIL directly, one view at a time), applying the
same parameter table (``plan.AugmentPlan``) as the loaders.

Each backend runs whole epochs over the same synthetic uint8 images (CIFAR 32² and Tiny-ImageNet
64² shapes), and (``--folder-size``) over a folder of JPEGs of mixed sizes cropped to that size:
there DALI and the PIL baseline decode every file every epoch, the gpu loader decodes the folder
once (at ``--folder-store``², its one-time ``setup_s`` reported apart) and FFCV reads the .beton
written once at that size. One untimed epoch (compilation, pipeline build, caches), then ``reps``
timed epochs, each ending when its last batch is on the device. Reported: median and spread of views/s, the
ratio to the PIL baseline measured in the same run, and peak memory (device memory on CUDA, on
the CPU this process's peak RSS during the case, its high-water mark reset before each).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm.auto import tqdm

from fastsigclr.bench.common import result_paths, write_results
from fastsigclr.bench.memory import peak_rss_bytes, reset_peak_rss
from fastsigclr.bench.pil_baseline import PilLoader
from fastsigclr.config import FastSigCLRError, check_fields, check_not_empty, option, to_dict
from fastsigclr.data.loaders import LOADERS, loader_versions
from fastsigclr.data.order import check_batch
from fastsigclr.data.plan import AugmentPlan, AugmentSpec, sample_params
from fastsigclr.data.samples import SampleIndex
from fastsigclr.runinfo import device_option, resolve_device, run_record

BACKENDS = (*LOADERS, "pil")


# ---- the cost of drawing the plan ------------------------------------------------------------------


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched inside its ``with`` block (each a kernel launch on
    a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> int:
    with OpCounter() as counter:
        fn()
    return counter.ops


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def plan_cost(size: int, images: int, batch_size: int, reps: int = 5) -> dict[str, Any]:
    """Operations and CPU time to draw an epoch's parameter table (``images`` rows per view), to
    take a batch's rows from it (what a loader does per batch), and to draw a batch on its own."""
    spec = AugmentSpec.simclr(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    plan = AugmentPlan(spec, images, (size, size), seed=0)
    gen = torch.Generator().manual_seed(0)
    index = torch.randperm(images, generator=gen)[:batch_size]
    plan.table(0)  # drawn once per epoch: a batch's rows then only gather

    def draw_epoch() -> torch.Tensor:  # what plan.table does once per epoch
        return sample_params(spec, images, size, size, gen)

    def draw_batch() -> torch.Tensor:
        return sample_params(spec, batch_size, size, size, gen)

    return {
        "size": size,
        "images": images,
        "batch_size": batch_size,
        "views": len(spec.views),
        "epoch_table_ops": count_ops(draw_epoch),
        "epoch_table_ms": _median_ms(draw_epoch, reps),
        "batch_rows_ops": count_ops(lambda: plan.rows(0, index)),
        "batch_rows_ms": _median_ms(lambda: plan.rows(0, index), reps * 20),
        "batch_draw_ops": count_ops(draw_batch),
        "batch_draw_ms": _median_ms(draw_batch, reps * 20),
        "threads": torch.get_num_threads(),
    }


# ---- the benchmark ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchAugmentConfig:
    backends: tuple[str, ...] = option(BACKENDS, "loaders to measure (pil: the torchvision-style baseline)")
    sizes: tuple[int, ...] = option((32, 64), "image sizes: 32 (CIFAR), 64 (Tiny-ImageNet)", ge=8)
    images: int | None = option(None, "images per epoch; unset: 50000 on CUDA, 1024 on CPU", ge=1)
    batch_size: int | None = option(None, "images per batch; unset: 512 on CUDA, 128 on CPU", ge=1)
    workers: int | None = option(
        None, "DataLoader workers / DALI and FFCV threads; unset: min(8, CPUs)", ge=0
    )
    reps: int = option(3, "timed epochs per backend and size", ge=1)
    folder_size: int | None = option(
        64, "also a folder of JPEGs of mixed sizes (¾ to 3× this side) cropped to it; 0: none", ge=0
    )
    folder_store: int = option(96, "the folder case: the side the gpu loader and FFCV store images at", ge=8)
    plan_images: int = option(50_000, "images of the epoch whose augmentation plan is drawn and timed", ge=1)
    device: str = device_option("device to measure on")
    out: str = option("benchmarks/local", "directory for augment-<device>.json and .png", path=True)
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"unknown backends {sorted(unknown)}; choose from {', '.join(BACKENDS)}")
        check_not_empty(self, "backends", "sizes")
        check_fields(self)

    def resolved(self, device: torch.device) -> BenchAugmentConfig:
        cuda = device.type == "cuda"
        resolved = dataclasses.replace(
            self,
            device=device.type,
            images=self.images or (50_000 if cuda else 1024),
            batch_size=self.batch_size or (512 if cuda else 128),
            workers=self.workers if self.workers is not None else min(8, os.cpu_count() or 1),
        )
        # An epoch drops its last partial batch: a batch past the images timed nothing (and raised
        # ZeroDivisionError on the rates).
        given = "" if self.batch_size else " (the default here)"
        check_batch(resolved.batch_size, resolved.images, f"images of --images {resolved.images}",
                    "raise --images", given)  # fmt: skip
        return resolved


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (JPEG-like content; noise would flatter nothing here)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, size // 4), max(2, size // 4), generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (x * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def write_jpeg_folder(folder: Path, n: int, side: int, seed: int = 0) -> SampleIndex:
    """``n`` smooth JPEGs (quality 90) of sides between ¾ and 3× ``side``, as an indexed folder."""
    from PIL import Image

    from fastsigclr.data.samples import file_index

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        h, w = (int(x) for x in rng.integers(3 * side // 4, 3 * side + 1, 2))
        coarse = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        files.append(folder / f"{i:06d}.jpg")
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(files[-1], quality=90)
    return file_index("folder", files, np.arange(n) % 10)


def _make_loader(name: str, samples: SampleIndex, spec, cfg: BenchAugmentConfig, device, tmp: Path):
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args = (samples, None, spec, cfg.batch_size, device, dtype)
    store = samples.resized(cfg.folder_store)
    if name == "pil":
        return PilLoader(*args, workers=cfg.workers)
    entry = LOADERS[name]
    return entry.cls(*args, **entry.bench_options(samples, spec, cfg.workers, tmp, store))


def measure(
    name: str,
    size: int,
    cfg: BenchAugmentConfig,
    device: torch.device,
    tmp: Path,
    folder: SampleIndex | None = None,
) -> dict[str, Any]:
    """One backend on synthetic uint8 images of ``size``², or on ``folder`` cropped to ``size``."""
    if folder is None:
        samples = SampleIndex.from_array(synthetic_images(cfg.images, size), np.arange(cfg.images))
    else:
        samples = folder
    spec = AugmentSpec.simclr(size, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    case = "uint8" if folder is None else "folder"
    row: dict[str, Any] = {"backend": name, "size": size, "images": len(samples), "case": case}
    own_peak = reset_peak_rss()  # the case's setup counts toward its peak
    try:
        t0 = time.perf_counter()
        loader = _make_loader(name, samples, spec, cfg, device, tmp)
        row["setup_s"] = time.perf_counter() - t0  # decoding the folder (gpu), writing the .beton (ffcv)
    except FastSigCLRError as err:
        return {**row, "status": "unavailable", "reason": str(err)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def one_epoch(e: int) -> int:
        views = 0
        for x, _ in loader.epoch(e):
            views += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return views

    one_epoch(0)  # warm-up: compilation, pipeline build, worker start
    rates = []
    for e in range(1, cfg.reps + 1):
        t0 = time.perf_counter()
        views = one_epoch(e)
        rates.append(views / (time.perf_counter() - t0))
    q = statistics.quantiles(rates, n=5) if len(rates) >= 2 else [rates[0]] * 4
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    return {
        **row,
        "status": "ok",
        "views_per_s": statistics.median(rates),
        "p20_views_per_s": q[0],
        "p80_views_per_s": q[3],
        "reps": len(rates),
        "peak_memory_bytes": peak,
        "peak_memory_kind": (
            "cuda allocated"
            if device.type == "cuda"
            else "peak RSS of this process during the case"
            if own_peak
            else "process max RSS (cumulative)"
        ),
    }


def run(cfg: BenchAugmentConfig, command: list[str] | None = None) -> dict[str, Any]:
    from fastsigclr.bench.plot import plot_augment

    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    paths = result_paths(cfg.out, "augment", device)
    results = []
    cases = [(name, size, False) for size in cfg.sizes for name in cfg.backends]
    cases += [(name, cfg.folder_size, True) for name in cfg.backends] if cfg.folder_size else []
    with (
        tempfile.TemporaryDirectory(prefix="fastsigclr-bench-") as tmp,
        tqdm(cases, desc="bench augment", unit="case", disable=not cfg.progress) as bar,
    ):
        folder = None
        for name, size, from_files in bar:
            bar.set_postfix_str(f"{name} {size}²{' JPEG folder' if from_files else ''}")
            if from_files and folder is None:
                folder = write_jpeg_folder(Path(tmp) / "folder", cfg.images, cfg.folder_size)
            results.append(measure(name, size, cfg, device, Path(tmp), folder if from_files else None))
    for r in results:
        same = [
            b for b in results if (b["size"], b["case"]) == (r["size"], r["case"]) and b["status"] == "ok"
        ]
        base = next((b for b in same if b["backend"] == "pil"), None)
        if r["status"] == "ok" and base:
            r["speedup_vs_pil"] = r["views_per_s"] / base["views_per_s"]
    payload = {
        "benchmark": "augment",
        "config": to_dict(cfg),
        **run_record(device, command),
        "versions_loaders": loader_versions(),
        "results": results,
        "plan": [plan_cost(size, cfg.plan_images, cfg.batch_size) for size in cfg.sizes],
    }
    write_results(payload, paths, plot_augment)
    return payload


def summary_table(payload: dict[str, Any]) -> str:
    lines = [f"{'backend':<6} {'case':<6} {'size':>4} {'views/s':>10} {'×pil':>6}  setup  peak memory"]
    for r in payload["results"]:
        head = f"{r['backend']:<6} {r.get('case', 'uint8'):<6} {r['size']:>4}"
        if r["status"] != "ok":
            lines.append(f"{head} {'-':>10} {'-':>6}  {r['status']}")
            continue
        speed = f"{r['speedup_vs_pil']:.2f}" if "speedup_vs_pil" in r else "-"
        lines.append(
            f"{head} {r['views_per_s']:>10.0f} {speed:>6}  {r.get('setup_s', 0):5.1f}s "
            f"{r['peak_memory_bytes'] / 2**20:.0f} MiB"
        )
    for p in payload.get("plan", []):
        lines.append(
            f"plan {p['size']}²: epoch table of {p['images']} images {p['epoch_table_ms']:.0f} ms "
            f"({p['epoch_table_ops']} ops), a batch's rows {p['batch_rows_ms']:.3f} ms "
            f"({p['batch_rows_ops']} ops), a batch drawn alone {p['batch_draw_ms']:.2f} ms "
            f"({p['batch_draw_ops']} ops)"
        )
    return "\n".join(lines)
