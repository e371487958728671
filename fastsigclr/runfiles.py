"""What a run directory holds, read and checked: its files' names, which state its files say it
is in (``run_state``), its training checkpoint (``load_checkpoint``: every key, of its type), its
summary, and the sessions its config.json records (``history``). ``rundir`` acts on them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastsigclr import checkpoint as ckpt
from fastsigclr.config import FastSigCLRError
from fastsigclr.filetype import json_loads, not_a_file
from fastsigclr.runconfig import read_config
from fastsigclr.runlog import read_records

CHECKPOINT = Path("checkpoints") / "last.pt"
# What a run writes, config.json first (``begin`` writes it first); an interrupted start (no
# checkpoint, no finished epoch) has these replaced.
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "tensorboard", "checkpoints")
# The run's folders and what it writes in them (the start of a name): nothing else is replaced.
RUN_FOLDERS = {"tensorboard": "events.out.tfevents.", "checkpoints": CHECKPOINT.name}
CHECKPOINT_KEYS = ("model", "criterion", "probe", "optimizer", "probe_optimizer", "rng", "epoch", "step")


def epoch_records(path: Path) -> int:
    """Finished epochs recorded in metrics.jsonl (a line cut short by a kill is skipped)."""
    return sum(record.get("kind") == "epoch" for record in read_records(path)) if path.is_file() else 0


def check_run_dir(run_dir: Path) -> None:
    """``--run`` of eval, export and embed must be a run directory: one line otherwise, naming
    the directory when a file inside a run was given (``--run R/config.json``)."""
    if (run_dir / "config.json").is_file():
        return
    for parent in list(run_dir.parents)[:2] if run_dir.exists() else ():  # R/config.json, R/checkpoints/x
        if (parent / "config.json").is_file():
            raise FastSigCLRError(
                f"--run {run_dir} is inside a run; pass the run's directory: --run {parent}"
            )
    if not run_dir.exists():
        raise FastSigCLRError(f"--run {run_dir} does not exist; pass --run DIR of a train run")
    raise FastSigCLRError(f"{run_dir} is not a run directory (no config.json); pass --run DIR of a train run")


def config_fault(path: Path) -> str | None:
    """Why ``path/config.json`` is not a run's settings as ``begin`` writes them (None: it is)."""
    try:
        read_config(path, "config.json", "")
    except FastSigCLRError as err:
        return str(err).removeprefix("config.json: ").removesuffix("; ")
    return None


def run_state(path: Path) -> str:
    """'checkpoint', 'orphaned epochs', 'interrupted start', 'not a run' or 'empty'."""
    if (path / CHECKPOINT).exists():
        return "checkpoint"
    # Epoch 1's record precedes its checkpoint: a kill between them leaves one record, no summary.
    epochs = epoch_records(path / "metrics.jsonl")
    if epochs > 1 or (epochs and (path / "summary.json").exists()):
        return "orphaned epochs"
    if any(os.path.lexists(path / name) for name in RUN_FILES):
        # ``begin`` writes config.json before anything else and never removes it: files of a run's
        # names without it are someone else's, and a new run must not replace them.
        return "interrupted start" if config_fault(path) is None else "not a run"
    return "empty"


def start_files(path: Path) -> list[Path]:
    """What replacing the interrupted start in ``path`` removes (``RUN_FILES[1:]`` and the files
    the run wrote in its folders), each folder after its files. Raises one line, before anything is
    removed, naming the first that fastsigclr did not write: a folder where it writes a file or a
    file where it makes a folder, a symbolic link, another name in its folders."""
    found: list[Path] = []
    for name in RUN_FILES[1:]:
        target = path / name
        if not os.path.lexists(target):
            continue
        folder = name in RUN_FOLDERS
        if target.is_symlink():
            raise ckpt.symlink_error(target)
        if target.is_dir() != folder or not (folder or target.is_file()):
            what = "a folder" if target.is_dir() else "a file" if folder else "not a regular file"
            raise _not_ours(path, target, f"is {what}, not the {name}{'/' if folder else ''} a run writes")
        for inside in sorted(target.iterdir()) if folder else ():
            if inside.is_symlink():
                raise ckpt.symlink_error(inside)
            if not (inside.name.startswith(RUN_FOLDERS[name]) and inside.is_file()):
                raise _not_ours(path, inside, "is not a file fastsigclr writes")
            found.append(inside)
        found.append(target)
    return found


def _not_ours(path: Path, target: Path, why: str) -> FastSigCLRError:
    return FastSigCLRError(
        f"{target} {why}: a new start in {path} would delete it; move it out of {path} and run again "
        f"(nothing was removed)"
    )


def wrong_types(state: dict[str, Any]) -> list[str]:
    """What in a checkpoint with every key is not of its type (a hand-made or foreign file)."""
    wrong = []
    for key in CHECKPOINT_KEYS:
        value = state[key]
        if key in ("epoch", "step"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                wrong.append(f"{key} is {value!r}, not a count")
        elif not isinstance(value, dict):
            wrong.append(f"{key} is a {type(value).__name__}, not a dict")
    position = state.get("position")  # a mid-epoch checkpoint's: where in the epoch, and its sums
    kinds = {"batch": int, "loss_steps": int, "loss_sum": (int, float), "probe_correct": (int, float)}
    ranks = position.get("world_size", 1) if isinstance(position, dict) else 1  # an int, where written
    if position is not None and not (
        isinstance(position, dict)
        and all(isinstance(position.get(k), t) for k, t in kinds.items())
        and isinstance(ranks, int)
    ):
        wrong.append(f"position is {position!r:.80}, not a dict of {', '.join(kinds)}")
    return wrong


def load_checkpoint(path: Path) -> dict[str, Any]:
    # On the CPU: load_state_dict copies weights and optimiser states onto their parameters' device,
    # and torch.set_rng_state takes only a CPU ByteTensor (map_location=device moved it to the GPU).
    state = ckpt.load(path / CHECKPOINT, map_location="cpu")
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    wrong = [] if missing else wrong_types(state)
    if missing or wrong:
        why = f"no {', '.join(missing)}" if missing else "; ".join(wrong)
        raise FastSigCLRError(
            f"{path / CHECKPOINT} is not a fastsigclr training checkpoint ({why}); restore it from a copy "
            f"of the run, or start a new run with another --out"
        )
    return state


def trained_checkpoint(path: Path) -> dict[str, Any]:
    """The last checkpoint of the run in ``path``, for eval, embed and export: a missing one says the
    run has not finished an epoch, a foreign or hand-made one is named as such; a checkpoints
    folder that is a file or a link is named, not taken for a run that has not finished an epoch."""
    folder = (path / CHECKPOINT).parent
    if (what := not_a_file(folder)) != "a folder" and os.path.lexists(folder):
        raise FastSigCLRError(
            f"{folder} is {what or 'a file'}, where the run keeps its checkpoints in a folder; restore "
            f"the run from a copy"
        )
    if not os.path.lexists(path / CHECKPOINT):
        raise FastSigCLRError(
            f"{path} has no checkpoint ({CHECKPOINT}): it has not finished an epoch; "
            "train it (or resume it) first"
        )
    return load_checkpoint(path)


def read_summary(path: Path) -> dict[str, Any] | None:
    try:
        summary = json_loads(ckpt.read_text(path / "summary.json"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def history(path: Path) -> list[dict[str, Any]]:
    """config.json's earlier sessions, oldest first, with the one that wrote it last: the date,
    command, commit, device and versions of each start and resume (kernel plans stay on top)."""
    try:
        saved = json_loads(ckpt.read_text(path / "config.json"))
    except (OSError, ValueError):
        return []
    if not isinstance(saved, dict):
        return []
    earlier = saved.get("history")
    last = {k: v for k, v in saved.items() if k not in ("config", "history", "kernel_plans")}
    return [*(earlier if isinstance(earlier, list) else []), last]
