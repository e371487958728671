"""What a sweep reports, read back from its run directories: results.json (provenance, the grid,
each run's config, results and kNN curve), results.md (mean ± std over seeds per setting) and
results.png (accuracy per setting with every seed; kNN accuracy against epoch)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fastsigclr import significance
from fastsigclr.bench.plot import save_figure
from fastsigclr.checkpoint import json_text, read_text, write_text_atomic
from fastsigclr.config import FastSigCLRError, default_of, to_dict
from fastsigclr.filetype import json_loads
from fastsigclr.runconfig import TrainConfig
from fastsigclr.runlog import read_records

EVAL_FILE = "sweep-eval.json"  # in each run directory: the sweep's evaluation of that run
STATUS = {
    "done": "done",
    "trained": "partial",
    "checkpointed": "partial",
    "started": "pending",
    "new": "pending",
}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep's grid: planned by ``sweep.plan``, read back here for the report."""

    index: int  # 1-based position in the grid
    setting: str
    seed: int
    run_dir: Path
    train_config: TrainConfig


def run_state(run_dir: Path) -> str:
    """done (evaluated) | trained (summary, not evaluated) | checkpointed | started | new."""
    if (run_dir / EVAL_FILE).is_file():
        return "done"
    if (run_dir / "summary.json").is_file():
        return "trained"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "checkpointed"
    return "started" if run_dir.exists() else "new"


def read_json(path: Path, fix: str) -> dict[str, Any] | None:
    """A JSON object the sweep or its runs wrote (None where there is none), never read through a
    link; a damaged one raises one line that ends with ``fix``."""
    if not path.is_file() and not path.is_symlink():
        return None
    try:
        value = json_loads(read_text(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastSigCLRError(f"{path} is damaged ({err}); {fix}") from None
    except PermissionError:
        raise FastSigCLRError(f"cannot read {path} (permission denied); make it readable") from None
    if not isinstance(value, dict):
        raise FastSigCLRError(f"{path} is damaged (not a JSON object); {fix}")
    return value


def _run_file(run_dir: Path, name: str) -> dict[str, Any] | None:
    again = "the sweep evaluates the run again" if name == EVAL_FILE else "then run the sweep again"
    return read_json(run_dir / name, f"restore it, or delete it ({again})")


def _epoch_record(record: dict[str, Any]) -> bool:
    """An epoch's record as the trainer writes it (a line edited by hand is left out)."""
    whole = isinstance(record.get("epoch"), int) and not isinstance(record.get("epoch"), bool)
    timed = isinstance(record.get("seconds"), (int, float))
    return record.get("kind") == "epoch" and whole and timed


def _number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite JSON number (not a bool) within [low, high]."""
    plain = isinstance(value, int | float) and not isinstance(value, bool)
    return plain and math.isfinite(value) and low <= value <= high


def _summary(run_dir: Path) -> dict[str, Any]:
    """summary.json's loss scalars and last kNN monitor, each a finite number (a hand-edited
    ``"final_logit_bias": "abc"`` ended the report in a TypeError traceback)."""
    summary = _run_file(run_dir, "summary.json") or {}
    # Summaries written before the loss registry named sigclr's logit scale final_temperature.
    summary.setdefault("final_logit_scale", summary.get("final_temperature"))
    summary.setdefault("final_logit_bias", summary.get("final_bias"))  # and its logit bias final_bias
    found = {}
    for key, name in (("final_logit_bias",) * 2, ("final_logit_scale",) * 2, ("knn_acc", "monitor_knn_acc")):
        value = summary.get(key)
        if value is not None and not _number(value):
            raise FastSigCLRError(
                f"{run_dir / 'summary.json'} is damaged ({key} is {value!r:.40}, not a number); restore "
                f"it, or delete it (then run the sweep again)"
            )
        if value is not None:
            found[name] = value  # knn_acc: the trainer's own last kNN monitor
    return found


def _evaluation(run_dir: Path) -> dict[str, Any]:
    """The sweep's kNN and linear accuracies of the run (none before it is evaluated), each a
    number in [0, 1]: "nan" was reported as "kNN nan%"."""
    evaluation = _run_file(run_dir, EVAL_FILE)
    if evaluation is None:
        return {}
    try:
        found = {
            "knn_acc": float(evaluation["knn"]["accuracy"]),
            "linear_acc": float(evaluation["linear"]["accuracy"]),
            "linear_train_acc": float(evaluation["linear"]["train_accuracy"]),
            "eval_seconds": float(evaluation["seconds"]),
        }
        highest = {"knn_acc": 1, "linear_acc": 1, "linear_train_acc": 1, "eval_seconds": math.inf}
        what = next((f"{k} is {v}" for k, v in found.items() if not _number(v, 0, highest[k])), None)
        k = evaluation["knn"].get("k")
        if isinstance(k, int) and not isinstance(k, bool):
            found["knn_k"] = k  # the vote's (an older record's: the --knn-k asked, even past the bank)
    except (KeyError, TypeError, ValueError) as err:
        what = f"an accuracy is missing: {err!r}"
    if what is not None:
        fix = "restore it, or delete it (the sweep evaluates the run again)"
        raise FastSigCLRError(f"{run_dir / EVAL_FILE} is damaged ({what}); {fix}")
    return found


def collect_run(run_dir: Path) -> dict[str, Any]:
    """A run directory's results: kNN curve and training time from metrics.jsonl, loss scalars
    from summary.json, the sweep's kNN and linear accuracy from its evaluation file."""
    epochs = [r for r in read_records(run_dir / "metrics.jsonl") if _epoch_record(r)]
    return {
        "epochs_done": len(epochs),
        "train_seconds": sum(r["seconds"] for r in epochs),
        # an accuracy edited into something else is left out, as an edited line is
        "knn_curve": [[r["epoch"] + 1, r["knn_acc"]] for r in epochs if _number(r.get("knn_acc"), 0, 1)],
        **_summary(run_dir),
        **_evaluation(run_dir),
    }


def knn_k(config: dict[str, Any], recorded: int | None) -> int:
    """The k a run's kNN vote took: its evaluation's record, else its --knn-k, at most the train
    split's images (knn.nearest's min(k, bank); a record written before the k taken was recorded
    holds the k asked)."""
    asked = recorded if recorded is not None else config.get("knn_k", default_of(TrainConfig, "knn_k"))
    bank = config.get("limit_train")
    return min(asked, bank) if isinstance(bank, int) and bank > 0 else asked


def _knn_k_text(payload: dict[str, Any]) -> str:
    """results.md's k of the kNN vote: the one the finished runs took (each run's, when they differ),
    and the --knn-k asked where the train split had fewer images."""
    runs = [e for e in payload["runs"] if e["status"] == "done"] or payload["runs"]
    taken = sorted({e["knn_k"] for e in runs})
    asked = sorted({e["config"].get("knn_k", default_of(TrainConfig, "knn_k")) for e in runs})
    if len(taken) > 1:
        return f"k = {', '.join(map(str, taken))}: the runs differ, each run's k is its knn_k in results.json"
    over = [str(k) for k in asked if k > taken[0]]  # the vote took the whole bank: the train split
    if over:
        return f"k = {taken[0]}: the train split has {taken[0]} images, fewer than --knn-k {', '.join(over)}"
    return f"k = {taken[0]}"


def _stats(values: list[float]) -> dict[str, Any] | None:
    """Mean and sample standard deviation (None for a single value) of the seeds' values."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def aggregate(entries: list[dict[str, Any]], settings: list[str]) -> list[dict[str, Any]]:
    """One row per setting over its finished runs."""
    rows = []
    for setting in settings:
        mine = [e for e in entries if e["setting"] == setting]
        done = [e for e in mine if e["status"] == "done"]
        row: dict[str, Any] = {"setting": setting, "done": len(done), "planned": len(mine)}
        for key in ("knn_acc", "linear_acc", "final_logit_bias", "final_logit_scale"):
            row[key] = _stats([e[key] for e in done if key in e])
        rows.append(row)
    return rows


def _percent(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "–"
    spread = f" ± {100 * stats['std']:.2f}" if stats["std"] is not None else ""
    return f"{100 * stats['mean']:.2f}{spread}"


def _scalar(stats: dict[str, Any] | None) -> str:
    return "–" if stats is None else f"{stats['mean']:.3g}"


def markdown(payload: dict[str, Any]) -> str:
    """The table of results.md, under a header saying what was run, where and how it was scored."""
    first = payload["runs"][0]["config"]
    images = f"{first['limit_train'] or 'all'} train / {first['limit_test'] or 'all'} test images"
    proj = "-".join(map(str, first["proj_dims"]))
    device = payload["device"]
    lines = [
        "# Sweep results",
        "",
        f"{first['dataset']}, {first['arch']} width {first['width']}, projector {proj}, "
        f"{first['epochs']} epochs, batch {first['batch_size']}, {images}; device {device['type']} "
        f"({device['name']}), precision {payload['precision']}; commit {payload['commit']}, "
        f"updated {payload['updated']}.",
        "",
        "Top-1 accuracy on the test split in %, mean ± sample standard deviation over seeds, from "
        "frozen backbone features (extracted once per run): weighted kNN "
        f"({_knn_k_text(payload)}; cosine) and a linear probe trained on "
        "the features. "
        f"Command: `{payload['command']}`.",
        "",
        "| setting | train options | runs done | kNN top-1 | linear top-1 | final b | final t |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in payload["table"]:
        options = ", ".join(f"{k}={v}" for k, v in payload["grid"]["settings"][row["setting"]].items())
        lines.append(
            f"| {row['setting']} | {options} | {row['done']}/{row['planned']} | {_percent(row['knn_acc'])} "
            f"| {_percent(row['linear_acc'])} | {_scalar(row['final_logit_bias'])} "
            f"| {_scalar(row['final_logit_scale'])} |"
        )
    done = [e for e in payload["runs"] if e["status"] == "done"]
    lines += ["", *significance.markdown(significance.compare(done))]
    failed = [e for e in payload["runs"] if e["status"] == "failed"]
    lines += [""] + [f"Failed: {e['setting']} seed {e['seed']}: {e['error']}" for e in failed]
    return "\n".join(lines).rstrip() + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    """Left: kNN and linear accuracy per setting, one dot per seed and the mean ± std. Right: the
    kNN monitor's accuracy against epoch, one line per run, one colour per setting."""
    fig, (ax_acc, ax_curve) = plt.subplots(1, 2, figsize=(12, 4.5))
    settings = [row["setting"] for row in payload["table"]]
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(settings)}
    for offset, key, color, label in (
        (-0.15, "knn_acc", "tab:blue", "kNN"),
        (0.15, "linear_acc", "tab:orange", "linear"),
    ):
        for i, row in enumerate(payload["table"]):
            values = [100 * e[key] for e in payload["runs"] if e["setting"] == row["setting"] and key in e]
            ax_acc.scatter([i + offset] * len(values), values, color=color, s=14, alpha=0.6)
            if row[key] is not None:
                std = 100 * (row[key]["std"] or 0.0)
                ax_acc.errorbar(
                    i + offset,
                    100 * row[key]["mean"],
                    yerr=std,
                    fmt="_",
                    color=color,
                    capsize=4,
                    markersize=14,
                    label=label if i == 0 else None,
                )
    ax_acc.set_xticks(range(len(settings)), settings, rotation=25, ha="right")
    ax_acc.set(ylabel="test top-1 (%)", title="accuracy per setting (dots: seeds; bars: mean ± std)")
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize=8)
    labelled: set[str] = set()
    for e in payload["runs"]:
        if e["knn_curve"]:
            epochs, accs = zip(*e["knn_curve"], strict=True)
            label = None if e["setting"] in labelled else e["setting"]
            labelled.add(e["setting"])
            ax_curve.plot(
                epochs, [100 * a for a in accs], marker=".", color=colors[e["setting"]], label=label
            )
    ax_curve.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="kNN monitor during training")
    ax_curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    if labelled:
        ax_curve.legend(fontsize=8)
    for ax in (ax_acc, ax_curve):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"sweep on {payload['device']['name']} ({payload['device']['type']})")
    save_figure(fig, path)


def write_results(
    out: Path, head: dict[str, Any], runs: list[PlannedRun], failures: dict[int, str]
) -> dict[str, Any]:
    """Read every run directory back and rewrite results.json, .md and .png atomically."""
    entries = []
    for run in runs:
        state = run_state(run.run_dir)
        status = "failed" if run.index in failures else STATUS[state]
        # The planned settings: a finished run's config.json (a file a user can edit) is checked
        # against them before the run is evaluated or counted (sweep_checks.check_finished).
        config = to_dict(run.train_config.resolved())
        entry = {"index": run.index, "setting": run.setting, "seed": run.seed, "run_dir": str(run.run_dir)}
        entry.update(status=status, config=config, **collect_run(run.run_dir))
        entry["knn_k"] = knn_k(config, entry.get("knn_k"))
        if status == "failed":
            entry["error"] = failures[run.index]
        entries.append(entry)
    updated = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    payload = {**head, "updated": updated, "runs": entries}
    payload["table"] = aggregate(entries, list(head["grid"]["settings"]))
    out = Path(out)
    write_text_atomic(out / "results.json", json_text(payload, indent=2, default=str) + "\n")
    write_text_atomic(out / "results.md", markdown(payload))
    plot(payload, out / "results.png")
    return payload
