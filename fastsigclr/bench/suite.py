"""``fastsigclr bench all``: every microbenchmark in one go (loss, augmentation, train step, and
the distributed loss's overhead with one rank), each
writing its own JSON and plot, plus one ``all-<device>.json`` that lists every figure with its
median and spread beside the device, versions, git SHA, date and command.

On the CPU the sizes are small (a few minutes on 2 cores); on CUDA each benchmark runs its own
GPU defaults, the sizes of the issues' targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastsigclr.bench.augment import BenchAugmentConfig
from fastsigclr.bench.common import check_outputs, result_paths, write_json
from fastsigclr.bench.dist import BenchDistConfig
from fastsigclr.bench.loss import BenchLossConfig
from fastsigclr.bench.train import BenchTrainConfig
from fastsigclr.config import check_fields, check_not_empty, option, to_dict
from fastsigclr.runinfo import device_option, resolve_device, run_record

BENCHMARKS = ("loss", "augment", "train", "dist")
# The CPU sizes: enough to show each comparison without turning the suite into a training run.
CPU_LOSS = dict(sizes=(512, 1024, 2048), dims=(64, 128), reps=3)
CPU_AUGMENT = dict(images=512, batch_size=128, reps=3)
CPU_TRAIN = dict(reps=3, limit_train=2048)
# --quick: the smallest run that still exercises every benchmark end to end (a smoke test).
QUICK = {
    "loss": dict(sizes=(256,), dims=(32,), reps=1, warmup=1, providers=("eager", "chunked")),
    "augment": dict(sizes=(32,), images=128, batch_size=64, reps=1),
    "train": dict(reps=1, warmup=1, limit_train=256, width=8, batch_size=32),
    "dist": dict(sizes=(256,), dim=32, reps=1),
}


@dataclass(frozen=True)
class BenchAllConfig:
    device: str = device_option("device to measure on")
    only: tuple[str, ...] = option(BENCHMARKS, "benchmarks to run", choices=BENCHMARKS)
    data: str = option(
        "auto", "train step images: real, synthetic, or auto", choices=("auto", "real", "synthetic")
    )
    out: str = option(
        "benchmarks/local", "directory for all-<device>.json and every benchmark's JSON and PNG", path=True
    )
    quick: bool = option(False, "smallest sizes only: a smoke test of the whole suite, not a measurement")

    def __post_init__(self) -> None:
        check_not_empty(self, "only")  # --only loss,loss ran the loss benchmark twice
        check_fields(self)


MS = ("median_ms", "p20_ms", "p80_ms")
VIEWS = ("views_per_s", "p20_views_per_s", "p80_views_per_s")


def _row(what: str, r: dict[str, Any], fields: tuple[str, str, str], unit: str) -> dict[str, Any]:
    median, p20, p80 = (r[f] for f in fields)
    return {"what": what, "median": median, "p20": p20, "p80": p80, "unit": unit}


def _figures(name: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat record per measured figure: what, median, spread (p20, p80), unit."""
    results = payload["results"]
    if name == "train":
        rows = [_row(f"train {key}", r, MS, "ms") for key, r in results.items()]
    elif name == "augment":
        ok = [r for r in results if r["status"] == "ok"]
        rows = [_row(f"augment {r['backend']} {r['size']}x{r['size']}", r, VIEWS, "views/s") for r in ok]
    else:  # loss and dist: one row per provider, dtype and size
        rows = []
        for r in results:
            if r.get("status", "ok") != "ok":
                continue
            kind = (
                f"{r.get('loss', 'sigmoid')} {r['provider']}"
                if name == "loss"
                else f"dist {r['provider']} (world 1)"
            )
            rows.append(_row(f"{kind} {r['dtype']} 2N={r['rows']} D={r['dim']}", r, MS, "ms"))
    return [{"benchmark": name, **row} for row in rows]


def run(cfg: BenchAllConfig, command: list[str] | None = None, progress=print) -> dict[str, Any]:
    from fastsigclr.bench import augment, dist, loss, train

    device = resolve_device(cfg.device)
    cpu = device.type == "cpu"
    out = Path(cfg.out)
    sizes = {"loss": CPU_LOSS, "augment": CPU_AUGMENT, "train": CPU_TRAIN} if cpu else {}
    if cfg.quick:
        sizes = QUICK
    common = dict(device=device.type, out=str(out))
    plans = {
        "loss": (loss.run, BenchLossConfig(**common, **sizes.get("loss", {}))),
        "augment": (augment.run, BenchAugmentConfig(**common, **sizes.get("augment", {}))),
        "train": (train.run, BenchTrainConfig(**common, data=cfg.data, **sizes.get("train", {}))),
        "dist": (dist.run, BenchDistConfig(**common, **sizes.get("dist", {}))),
    }
    # Every benchmark's files before the first one measures: a folder in the way of the last one's
    # plot would otherwise end the suite after the others' minutes.
    for name in cfg.only:
        result_paths(out, name, device)
    check_outputs([out / f"all-{device.type}.json"])
    payloads, seconds = {}, {}
    for name in cfg.only:
        fn, sub = plans[name]
        progress(f"bench {name} …")
        start = time.perf_counter()
        payloads[name] = fn(sub, command=command)
        seconds[name] = round(time.perf_counter() - start, 1)
    summary = {
        "benchmark": "all",
        "config": to_dict(cfg),
        **run_record(device, command),
        "files": {name: f"{name}-{device.type}.json" for name in payloads},
        "seconds": seconds,
        "figures": [row for name, p in payloads.items() for row in _figures(name, p)],
        "sub_configs": {name: to_dict(plans[name][1]) for name in payloads},
    }
    if "train" in payloads:
        summary["train_data"] = payloads["train"].get("data")
        summary["train_full_over_model"] = payloads["train"]["full_over_model"]
    write_json(out / f"all-{device.type}.json", summary)
    return summary
