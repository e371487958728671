"""A trained run read back for evaluation: its backbone from the last checkpoint, its splits
from where it read them (or --data-dir), and its settings; what ``eval``, ``embed``, ``export``
and a sweep's evaluation take."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from fastsigclr import checkpoint as ckpt
from fastsigclr.config import FastSigCLRError
from fastsigclr.data import DATASETS
from fastsigclr.data.datasets import data_folder
from fastsigclr.data.folder import FolderReader, unread_val
from fastsigclr.data.info import DatasetInfo
from fastsigclr.data.splits import LimitError
from fastsigclr.recipe import build_model, compute_dtypes, data_identity, load_data
from fastsigclr.runconfig import RESTORE_CONFIG, read_config
from fastsigclr.runfiles import CHECKPOINT, trained_checkpoint
from fastsigclr.runinfo import resolve_device
from fastsigclr.runweights import check_fits, check_record, load_weights


def _missing_split(name: str, where: Path, missing: list[str], labelled: bool) -> FastSigCLRError:
    if not labelled:  # embed: only a test split can be missing (no val/ folder)
        return FastSigCLRError(
            f"{name} in {where} has no test images (no val/ folder): embed the images it was "
            f"pre-trained on with --split train"
        )
    other = unread_val(where) if "test" in missing else None
    rename = f"; {other}/ was found and is not read: rename it val/" if other else ""
    return FastSigCLRError(
        f"{name} in {where} has no labelled {' and '.join(missing)} images (a flat folder, or no "
        f"val/): eval reads DIR/train/<class>/ and DIR/val/<class>/ (embed, the --split it embeds){rename}"
    )


def _check_data_dir(info: DatasetInfo, where: Path, named: str) -> None:
    """One line when the run's data is not in ``where`` (``named``: which folder that is)."""
    if (where / info.folder).is_dir() or (info.archive and (where / info.archive).is_file()):
        return
    if not info.folder:  # the dataset is the folder itself (--dataset folder)
        raise FastSigCLRError(
            f"{where} ({named}) is not a folder any more: pass --data-dir DIR, the folder that now "
            f"holds the run's images"
        )
    archive = f" (or {info.archive})" if info.archive else ""
    raise FastSigCLRError(
        f"{info.name} is not in {where} ({named}): pass --data-dir DIR, the folder that now holds "
        f"{info.folder}/{archive}"
    )


def _note_other_data(data: Any, cfg: Any, state: dict[str, Any], where: Path) -> None:
    """A note when the images read here are not those the checkpoint records the run trained on
    (other files, labels or sizes): a folder changed since, or another --data-dir. The kNN bank and
    the probe then train on these; a moved copy of the same images says nothing."""
    saved = state.get("data")
    if not isinstance(saved, dict) or data.pretrain is None:  # before the record; the images not read
        return
    now = data_identity(data, cfg)
    if all(saved.get(key) == now[key] for key in ("images", "digest")):
        return
    print(
        f"note: {data.info.name} in {where} holds other training images than the run trained on "
        f"({saved.get('images')!r:.20} images then, {now['images']} now, or other files, labels or "
        f"sizes): the kNN bank and the linear probe's training set are these",
        file=sys.stderr,
    )


def load_run_model(
    run_dir: Path,
    device_name: str = "auto",
    data_dir: str | None = None,
    splits: tuple[str, ...] = ("train", "test"),
    labelled: bool = True,
    max_broken: float | None = None,
) -> dict[str, Any]:
    """A run's backbone (last checkpoint), its ``splits`` (read from ``data_dir`` when given,
    else where the run read it: ``data.batches(sources[split])``) and settings, for evaluation;
    ``labelled``: they must have labels (eval), else images without a class come with label -1
    (embed); ``max_broken``: the share of undecodable images to skip, else the run's."""
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
    if max_broken is not None:
        overrides["max_broken"] = max_broken
    cfg = read_config(run_dir, f"cannot read the run {run_dir}", RESTORE_CONFIG, overrides)
    info = DATASETS[cfg.dataset]
    state, saved_at = trained_checkpoint(Path(run_dir)), str(Path(run_dir) / CHECKPOINT)
    check_record(cfg, state, saved_at)  # an edited config.json before the data it names is looked for
    check_fits(cfg, state["model"], saved_at)  # on the meta device: an edited width takes no memory
    where = data_folder(cfg.data_dir)
    _check_data_dir(info, where, "--data-dir" if data_dir else "where the run read it")
    device = resolve_device(device_name)
    if info.reader is FolderReader and "test" in splits and not FolderReader.has_test(where / info.folder):
        raise _missing_split(info.name, where, ["test"], labelled)  # before train/'s headers are read
    try:
        data = load_data(dataclasses.replace(cfg, download=False, progress=False), False, splits)
    except LimitError as err:  # the run's --limit-train/--limit-test past this data: not the run's
        raise FastSigCLRError(
            f"the run's {err.problem} in {where}: this is not the data the run read; pass "
            f"--data-dir DIR, the folder that holds it"
        ) from None
    _note_other_data(data, cfg, state, where)
    # Without labels (a flat folder), the train split is the images pre-training read.
    source = {
        name: "pretrain" if name == "train" and data.train is None and not labelled else name
        for name in splits
    }
    missing = [
        name
        for name in splits
        if (index := getattr(data, source[name])) is None or (labelled and not index.labelled)
    ]
    if missing:
        raise _missing_split(data.info.name, where, missing, labelled)
    info = data.info
    model, _, _ = build_model(cfg, info, device)
    load_weights(model, state["model"], saved_at)
    _, autocast_dtype = compute_dtypes(cfg, device)
    return {
        "backbone": model.backbone,
        "info": info,
        "data": data,  # DataSplits: data.batches(sources[name]) reads a split, held or streamed
        "sources": source,
        "device": device,
        "trained": ckpt.trained(state),
        "autocast": autocast_dtype,
        "config": cfg,  # the run's settings (TrainConfig)
        "data_dir": str(where.absolute()),  # where the images were read: the run's, or --data-dir
    }
