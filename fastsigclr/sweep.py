"""``fastsigclr sweep``: a grid of named settings × seeds at one budget, each run trained through
``fastsigclr.train.train`` in its own run directory, then evaluated on frozen features (kNN and a
linear probe, both on one extraction of the features), summarised in results.json / .md / .png.

Resumable: a run whose evaluation is recorded is skipped, a trained run is only evaluated, a run
with a checkpoint resumes through the trainer's ``--resume``, and a run that never reached its
first checkpoint starts again. The results are rewritten atomically after every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastsigclr import checkpoint as ckpt
from fastsigclr.config import (
    SEED_MAX,
    FastSigCLRError,
    build,
    check_fields,
    check_not_empty,
    option,
    option_from,
    to_dict,
)
from fastsigclr.eval import EvalConfig, score, split_features
from fastsigclr.recipe import compute_dtypes
from fastsigclr.runconfig import TrainConfig, check_trainable
from fastsigclr.runinfo import resolve_device, run_record
from fastsigclr.runlock import lock_dir
from fastsigclr.runmodel import load_run_model
from fastsigclr.sweep_checks import check_budget, check_data, check_finished, finished_mismatch
from fastsigclr.sweep_report import (
    EVAL_FILE,
    PlannedRun,
    collect_run,
    run_state,
    write_results,
)
from fastsigclr.train import train

# Each setting is a set of `fastsigclr train` options; the budget options apply to all of them.
# The ablations are those of SigCLR: the bias fixed (at its −10 initialisation, or at 0) instead
# of learnt, and a learnt temperature instead of the fixed t = 10.
SETTINGS: dict[str, dict[str, Any]] = {
    "sigclr": {"method": "sigclr"},
    "simclr": {"method": "simclr"},
    "supcon": {"method": "supcon"},
    "tcl": {"method": "tcl"},
    "sigclr-fixed-b-10": {"method": "sigclr", "logit_bias": -10.0, "learnable_logit_bias": False},
    "sigclr-fixed-b0": {"method": "sigclr", "logit_bias": 0.0, "learnable_logit_bias": False},
    "sigclr-learnable-t": {"method": "sigclr", "learnable_logit_scale": True},
}
# SweepConfig fields passed to every run when set (unset: `fastsigclr train`'s default or preset).
BUDGET = (
    "dataset",
    "data_dir",
    "download",
    "loader",
    "arch",
    "width",
    "proj_dims",
    "batch_size",
    "image_size",
    "store_size",
    "epochs",
    "lr",
    "warmup_epochs",
    "limit_train",
    "limit_test",
    "device",
    "precision",
    "knn_every",
    "max_broken",
)
_UNSET = "`fastsigclr train`'s default"
SWEEP_LOCK = "sweep.lock"
# What the sweep does to a run found in each state (fastsigclr.sweep_report.run_state), in its log.
ACTIONS = {"new": "trained", "started": "restarted", "checkpointed": "resumed", "trained": "evaluated"}


@dataclass(frozen=True)
class SweepConfig:
    settings: tuple[str, ...] = option(tuple(SETTINGS), "named settings to run", choices=tuple(SETTINGS))
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds of every setting", ge=0, le=SEED_MAX)
    out: str = option(
        "runs/sweep", "sweep directory: runs/<setting>-seed<N>/ and results.json, .md, .png", path=True
    )
    dataset: str | None = option_from(TrainConfig, "dataset", None, unset=_UNSET)
    data_dir: str | None = option_from(TrainConfig, "data_dir")
    download: bool | None = option_from(TrainConfig, "download", None, unset=_UNSET)
    loader: str | None = option_from(TrainConfig, "loader", None, unset=_UNSET)
    arch: str | None = option_from(TrainConfig, "arch")
    width: int | None = option_from(TrainConfig, "width", None, unset=_UNSET)
    proj_dims: tuple[int, ...] | None = option_from(TrainConfig, "proj_dims")
    batch_size: int | None = option_from(TrainConfig, "batch_size")
    image_size: int | None = option_from(TrainConfig, "image_size")
    store_size: int | None = option_from(TrainConfig, "store_size")
    epochs: int | None = option_from(TrainConfig, "epochs")
    lr: float | None = option_from(TrainConfig, "lr", None, unset=_UNSET)
    warmup_epochs: float | None = option_from(TrainConfig, "warmup_epochs", None, unset=_UNSET)
    limit_train: int | None = option_from(TrainConfig, "limit_train")
    limit_test: int | None = option_from(TrainConfig, "limit_test")
    device: str | None = option_from(TrainConfig, "device", None, unset=_UNSET)
    precision: str | None = option_from(TrainConfig, "precision", None, unset=_UNSET)
    knn_every: int | None = option_from(TrainConfig, "knn_every", None, unset=_UNSET)
    max_broken: float | None = option_from(TrainConfig, "max_broken", None, unset=_UNSET)
    linear_epochs: int | None = option_from(
        EvalConfig, "linear_epochs", None, unset="`fastsigclr eval`'s default"
    )
    progress: bool = option(False, "show the trainer's progress bars (off: a line per epoch, a log to keep)")

    def __post_init__(self) -> None:
        check_fields(self)
        check_not_empty(self, "settings", "seeds")

    def budget(self) -> dict[str, Any]:
        """The train options given for every run (unset ones are left to the trainer)."""
        return {k: getattr(self, k) for k in BUDGET if getattr(self, k) is not None}

    def eval_config(self, run_dir: Path, seed: int) -> EvalConfig:
        given = {} if self.linear_epochs is None else {"linear_epochs": self.linear_epochs}
        device = self.device or "auto"
        return build(EvalConfig, {"run": str(run_dir), "device": device, "seed": seed, **given})


def _planned(cfg: SweepConfig, index: int, setting: str, seed: int) -> PlannedRun:
    run_dir = Path(cfg.out) / "runs" / f"{setting}-seed{seed}"
    values = {**cfg.budget(), **SETTINGS[setting], "seed": seed, "out": str(run_dir)}
    values["progress"] = cfg.progress
    train_cfg = build(TrainConfig, values)
    check_trainable(train_cfg.resolved())  # its checks against the preset (a batch larger than the images)
    return PlannedRun(index, setting, seed, run_dir, train_cfg)


def plan(cfg: SweepConfig) -> list[PlannedRun]:
    """Every run of the grid, seed-major (after the first len(settings) runs, every setting has a
    result), each with its train config; invalid option combinations fail here, before any run."""
    grid = [(setting, seed) for seed in cfg.seeds for setting in cfg.settings]
    return [_planned(cfg, index, setting, seed) for index, (setting, seed) in enumerate(grid, 1)]


def finished_before(
    cfg: SweepConfig, runs: list[PlannedRun], log: Callable[[str], None] = print
) -> list[PlannedRun]:
    """Finished runs of the sweep directory outside this grid (an earlier call with more settings
    or seeds): the report keeps them, so a rerun of a subset never drops results. Only a folder
    named as the sweep names its runs (``sigclr-seed00`` is not seed 0's), holding the run the
    sweep would plan there (``check_finished``); another is named through ``log`` and left out."""
    planned = {run.run_dir.name for run in runs}
    found = []
    for run_dir in sorted((Path(cfg.out) / "runs").glob("*-seed*")):
        setting, _, seed = run_dir.name.rpartition("-seed")
        canonical = seed.isdigit() and str(int(seed)) == seed
        if (
            run_dir.name in planned
            or setting not in SETTINGS
            or not canonical
            or run_state(run_dir) != "done"
        ):
            continue
        run = _planned(cfg, len(runs) + len(found) + 1, setting, int(seed))
        if (why := finished_mismatch(run)) is not None:
            log(f"left out of the report: {why}")
            continue
        found.append(run)
    return found


def _evaluate(cfg: SweepConfig, run: PlannedRun) -> dict[str, Any]:
    """kNN and linear probe of the run's last checkpoint on one extraction of its features."""
    start = time.perf_counter()
    loaded = load_run_model(run.run_dir, cfg.device or "auto")
    train_split = split_features(loaded, "train")
    test_split = split_features(loaded, "test")
    eval_cfg = dataclasses.replace(
        cfg.eval_config(run.run_dir, run.seed).for_run(loaded["config"]), progress=False
    )
    classes = loaded["info"].num_classes
    result = {
        "epoch": loaded["trained"]["epoch"],
        "knn": score(eval_cfg, "knn", train_split, test_split, classes),
        "linear": score(eval_cfg, "linear", train_split, test_split, classes),
        "eval_config": to_dict(eval_cfg),
        "seconds": time.perf_counter() - start,
    }
    ckpt.write_text_atomic(run.run_dir / EVAL_FILE, ckpt.json_text(result, indent=2) + "\n")
    return result


def _execute(cfg: SweepConfig, run: PlannedRun, state: str, command: list[str] | None) -> str:
    """Train (fresh, resumed or restarted) and evaluate one run; returns what was done. A run
    folder without a checkpoint ("started") is left to the trainer, under the run's lock: it
    starts again a run that stopped in its first epoch, and refuses, removing nothing, a folder
    that is not such a run (files of someone else's, or finished epochs whose weights are gone)."""
    if state != "trained":
        train(
            dataclasses.replace(run.train_config, resume="yes" if state == "checkpointed" else "no"),
            command=command,
            again="the same sweep command continues it (and the runs after it)",
        )
    else:  # a resumed run is checked by the trainer; a finished one is only evaluated
        check_finished(run)
    try:
        _evaluate(cfg, run)
    except KeyboardInterrupt:  # the trainer says how to go on when it is interrupted; so does this
        print(
            f"fastsigclr: the evaluation of {run.run_dir} was interrupted: the run is trained; the same "
            f"sweep command evaluates it (and goes on with the runs after it)",
            file=sys.stderr,
        )
        raise
    return ACTIONS[state]


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _accuracies(record: dict[str, Any]) -> str:
    return f"kNN {100 * record['knn_acc']:.2f}%, linear {100 * record['linear_acc']:.2f}%"


def _check_done(runs: list[PlannedRun]) -> dict[int, str]:
    """The failures of the runs an earlier call evaluated that are not the runs the grid plans in
    their folders (``check_finished``), found before the first report counts them."""
    done = (run for run in runs if run_state(run.run_dir) == "done")
    return {run.index: why for run in done if (why := finished_mismatch(run)) is not None}


def run_sweep(
    cfg: SweepConfig, command: list[str] | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or continue) the grid; one line per run through ``log``; returns the results payload.
    The sweep directory is locked for the whole sweep (``sweep.lock``): a second sweep there would
    train the same runs and rewrite the same reports."""
    runs = plan(cfg)
    resolve_device(cfg.device or "auto")  # an unusable --device is refused before anything is made
    existed = os.path.lexists(cfg.out)
    out = ckpt.writable_folder(Path(cfg.out), keep=True)
    fd = lock_dir(out, name=SWEEP_LOCK, user="sweep")
    try:
        return _sweep(cfg, runs, command, log)
    except BaseException:
        # A sweep refused before anything was written (its data, its budget) leaves no folder, as a
        # refused train does; one that holds anything else (runs, sweep.json) stays whole.
        if not existed and os.listdir(out) == [SWEEP_LOCK]:
            with contextlib.suppress(OSError):
                (out / SWEEP_LOCK).unlink()
                out.rmdir()
        raise
    finally:
        os.close(fd)


def _head(cfg: SweepConfig, runs: list[PlannedRun], command: list[str] | None) -> dict[str, Any]:
    """What results.json says of the whole sweep: provenance, precision, its config and grid."""
    device = resolve_device(cfg.device or "auto")
    view_dtype, _ = compute_dtypes(runs[0].train_config, device)
    return {
        "kind": "sweep",
        **run_record(device, command),
        "precision": "bf16" if view_dtype == torch.bfloat16 else "fp32",
        "config": to_dict(cfg),
        "grid": {
            "settings": {name: SETTINGS[name] for name in cfg.settings},
            "seeds": list(cfg.seeds),
            "budget": cfg.budget(),
            "eval": {  # each run's probe is seeded with the run's seed
                k: v
                for k, v in to_dict(cfg.eval_config(Path(cfg.out), 0).for_run(runs[0].train_config)).items()
                if k.startswith(("knn", "linear"))
            },
        },
    }


def _sweep(
    cfg: SweepConfig, runs: list[PlannedRun], command: list[str] | None, log: Callable[[str], None]
) -> dict[str, Any]:
    head = _head(cfg, runs, command)
    if any(run_state(run.run_dir) not in ("done", "trained") for run in runs):  # some run trains
        check_data(runs)  # before sweep.json pins a budget the data cannot give
    check_budget(cfg)  # after every option is known to be valid: it writes the sweep's sweep.json
    earlier = finished_before(cfg, runs, log)
    if earlier:
        log(f"the report keeps {len(earlier)} finished run(s) of earlier calls outside this grid")
        grid = head["grid"]
        grid["settings"] = {**grid["settings"], **{r.setting: SETTINGS[r.setting] for r in earlier}}
        grid["seeds"] = sorted({*grid["seeds"], *(r.seed for r in earlier)})
    failures = _check_done(runs)
    report = runs + earlier
    write_results(Path(cfg.out), head, report, failures)
    durations: list[float] = []
    total = len(runs)
    for run in runs:
        where = f"[{run.index}/{total}] {run.setting} seed {run.seed}"
        state = run_state(run.run_dir)
        if state == "done":  # counted only if it is the grid's run (_check_done)
            said = failures.get(run.index)
            log(
                f"{where}: FAILED: {said}"
                if said
                else f"{where}: skipped, done before ({_accuracies(collect_run(run.run_dir))})"
            )
            continue
        start_note = {"checkpointed": "resuming from its checkpoint", "trained": "evaluating"}
        log(f"{where}: {start_note.get(state, 'training')} in {run.run_dir}")
        start = time.perf_counter()
        try:
            action = _execute(cfg, run, state, command)
        except FastSigCLRError as err:
            failures[run.index] = str(err)
            log(f"{where}: FAILED: {err}")
        else:
            durations.append(time.perf_counter() - start)
            left = sum(run_state(r.run_dir) != "done" for r in runs[run.index :])
            eta = _duration(left * sum(durations) / len(durations))
            log(
                f"{where}: {action}, {_accuracies(collect_run(run.run_dir))} in "
                f"{_duration(durations[-1])}; ETA {eta} for {left} run(s) left"
            )
        write_results(Path(cfg.out), head, report, failures)
    return write_results(Path(cfg.out), head, report, failures)
