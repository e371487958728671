"""What a sweep checks before it trains or counts a run: the data every run needs (once, before
the first), the one budget a sweep directory keeps (``sweep.json``), and that a finished run in a
planned folder is the run the grid plans there."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fastsigclr import checkpoint as ckpt
from fastsigclr.config import ConfigError, FastSigCLRError, flag, to_dict
from fastsigclr.data.order import check_batch
from fastsigclr.recipe import load_data
from fastsigclr.runconfig import read_config, uses_labels
from fastsigclr.rundir import RESUMABLE
from fastsigclr.sweep_report import PlannedRun, read_json


def _whole_paths(budget: dict[str, Any]) -> dict[str, Any]:
    """The budget with its folder (--data-dir) as a whole path: the same folder named from another
    working directory, or with ~, is the same budget."""
    value = budget.get("data_dir")
    if not isinstance(value, str) or not value:  # "": the dataset's default folder, as train reads it
        return budget
    return {**budget, "data_dir": str(Path(value).expanduser().absolute())}


def check_data(runs: list[PlannedRun]) -> None:
    """What the data must give every run, checked once before the first: the budget's limits and
    batch (each run failed alone on them, and the sweep directory kept that budget), labelled
    train and test images (each run trained in full, then failed at its evaluation), and labels to
    pre-train on for a setting that uses them."""
    first = runs[0].train_config.resolved()
    data = load_data(dataclasses.replace(first, progress=False), announce=False)
    check_batch(first.batch_size or 0, len(data.pretrain), "images to pre-train on", "use more images")
    if not data.has_knn:
        raise ConfigError(
            f"a sweep scores each run by kNN and a linear probe on labelled train and test images, and "
            f"{data.info.name} in {first.data_dir} has none (a flat folder, or no val/): give "
            f"DIR/train/<class>/ and DIR/val/<class>/, or train single runs with `fastsigclr train`"
        )
    labelled = sorted({run.setting for run in runs if uses_labels(run.train_config)})
    if labelled and not data.pretrain.labelled:
        rest = [s for s in dict.fromkeys(run.setting for run in runs) if s not in labelled]
        fix = f"pass --settings {','.join(rest)}" if rest else "choose settings without labels"
        raise ConfigError(
            f"the settings {', '.join(labelled)} contrast by class labels and the {data.info.name} images "
            f"they would pre-train on have none: {fix}"
        )


def check_budget(cfg: Any) -> None:
    """A sweep directory keeps one budget: its runs are only comparable at the same one."""
    path = Path(cfg.out) / "sweep.json"
    given = {**cfg.budget(), "linear_epochs": cfg.linear_epochs}
    current = _whole_paths(json.loads(json.dumps({k: v for k, v in given.items() if v is not None})))
    saved = read_json(path, "restore it, or use another --out")
    if saved is None:
        ckpt.write_text_atomic(path, ckpt.json_text(current, indent=2) + "\n")
        return
    # One written before paths were recorded whole (relative, or with a ~) is compared whole too;
    # the message quotes it as it was saved.
    whole = _whole_paths(saved)
    diff = [k for k in sorted({*whole, *current}) if whole.get(k) != current.get(k)]
    if diff:
        listed = "; ".join(
            f"{flag(k)} was {saved.get(k, 'unset')!r}, now {current.get(k, 'unset')!r}" for k in diff
        )
        raise ConfigError(f"{cfg.out} holds a sweep at another budget: {listed}; use another --out")


def check_finished(run: PlannedRun) -> None:
    """A finished run in the sweep's folder must be the one the grid plans there (another put in
    its place was evaluated and averaged with the rest): its settings, its epochs included."""
    fix = f"move it out of {run.run_dir.parent} and run the sweep again"
    saved = read_config(run.run_dir, f"cannot read the run {run.run_dir}", fix)
    try:  # as the trainer resumes it: a file older than an option (store_size) holds it unset
        saved = saved.resolved()
    except (ValueError, TypeError, FastSigCLRError) as err:
        raise FastSigCLRError(f"cannot read the run {run.run_dir} ({err}); {fix}") from None
    planned = run.train_config.resolved()
    differ = [
        f"{flag(name)} {getattr(saved, name)!r} (the sweep's: {getattr(planned, name)!r})"
        for name in to_dict(planned)
        if (name == "epochs" or name not in RESUMABLE) and getattr(saved, name) != getattr(planned, name)
    ]
    if differ:
        raise FastSigCLRError(
            f"{run.run_dir} holds a finished run with other settings than the sweep's {run.setting} seed "
            f"{run.seed}: {'; '.join(differ)}; {fix}"
        )


def finished_mismatch(run: PlannedRun) -> str | None:
    """Why a finished run is not the run the grid plans in its folder (``check_finished``'s
    error), or None when it is."""
    try:
        check_finished(run)
    except FastSigCLRError as err:
        return str(err)
    return None
