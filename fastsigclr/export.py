"""Use a trained encoder elsewhere: ``fastsigclr export`` writes its weights as safetensors with
what is needed to rebuild it (``load_backbone`` does), ``fastsigclr embed`` writes the features of
a dataset split as .npy.

An exported file holds the backbone's tensors under ``backbone.`` (with ``--projector`` also the
projector's under ``projector.``) and string metadata: the format tag, the architecture (arch,
width, feature size, projector sizes), the input recipe (image size, channel
mean and std of the 0..1 pixels) and where it came from (dataset, method, epoch).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastsigclr import checkpoint as ckpt
from fastsigclr.config import FastSigCLRError, option, option_from
from fastsigclr.data import DATASETS
from fastsigclr.data.datasets import data_dir_option
from fastsigclr.data.info import default_store_size
from fastsigclr.eval import split_features
from fastsigclr.filetype import NPY_MAGIC, json_loads, not_a_file, replaces_only, starts_with
from fastsigclr.models import ResNet, projector
from fastsigclr.runconfig import RESTORE_CONFIG, TrainConfig, read_config
from fastsigclr.runfiles import CHECKPOINT, RUN_FILES, check_run_dir, trained_checkpoint
from fastsigclr.runinfo import device_option
from fastsigclr.runlock import LOCK
from fastsigclr.runmodel import load_run_model
from fastsigclr.runweights import check_fits, check_record

FORMAT = "fastsigclr-encoder-v1"
LABELS = ".labels.npy"  # embed's labels of FILE.npy: FILE.labels.npy
FILES = ".files.json"  # and the files of its rows: FILE.files.json (splits read from files)
INSTALL_HINT = "pip install safetensors (a dependency of fastsigclr)"


def _safetensors():
    """The safetensors package (with its torch functions), or an error that says how to install it."""
    try:
        import safetensors
        import safetensors.torch
    except ImportError:
        raise FastSigCLRError(f"safetensors is not installed; {INSTALL_HINT}") from None
    return safetensors


def _run_checkpoint(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The run's resolved config and last checkpoint, or an error that says what is missing."""
    check_run_dir(run_dir)
    state = trained_checkpoint(run_dir)
    cfg = read_config(run_dir, f"cannot read the run {run_dir}", RESTORE_CONFIG)
    # The weights must be the run's model and config.json the run's settings (the file's metadata,
    # normalisation included, is read from it): another run's checkpoint copied in, or an edited
    # config.json, is one line here, as in eval and embed.
    check_record(cfg, state, str(run_dir / CHECKPOINT))
    check_fits(cfg, state["model"], str(run_dir / CHECKPOINT))
    return cfg, state


@dataclass(frozen=True)
class ExportConfig:
    run: str | None = option(None, "run directory written by `fastsigclr train` (required)", path=True)
    out: str | None = option(None, "file to write, e.g. encoder.safetensors (required)", path=True)
    projector: bool = option(False, "also export the projector g")

    def __post_init__(self) -> None:
        if not self.run or not self.out:
            raise ValueError("--run DIR and --out FILE.safetensors are both required")


def export(cfg: ExportConfig) -> dict[str, str]:
    """Write the run's backbone (and projector) weights with their metadata; returns the metadata."""
    st = _safetensors()
    run_dir = Path(cfg.run or "")
    train_cfg, state = _run_checkpoint(run_dir)
    parts = ("backbone", "projector") if cfg.projector else ("backbone",)
    tensors = _unique_tensors({k: v for k, v in state["model"].items() if k.split(".", 1)[0] in parts})
    broken = next((k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()), None)
    if broken is not None:  # a diverged run (the trainer stops at a non-finite loss) or a damaged file
        raise FastSigCLRError(
            f"{run_dir / CHECKPOINT} holds non-finite weights ({broken} has NaN or inf): the run diverged "
            f"or the file was damaged; restore an earlier checkpoint from a copy, or train again"
        )
    info, point = DATASETS[train_cfg.dataset], ckpt.trained(state)
    image_size = train_cfg.image_size or info.image_size
    meta = {
        "format": FORMAT,
        "arch": str(train_cfg.arch),
        "width": str(train_cfg.width),
        "out_dim": str(state["model"]["projector.0.weight"].shape[1]),  # the projector's input
        "proj_dims": json.dumps(list(train_cfg.proj_dims or ())),
        "has_projector": str(cfg.projector),
        "image_size": str(image_size),
        # what eval and embed feed: images resized (shorter side) and centre-cropped to this side,
        # unless all share one size no larger (data.samples.SampleIndex.resized)
        "store_size": str(train_cfg.store_size or default_store_size(image_size)),
        "mean": json.dumps(list(info.mean)),
        "std": json.dumps(list(info.std)),
        "dataset": train_cfg.dataset,
        "method": train_cfg.method,
        **{key: str(point[key]) for key in ("epoch", "step", "epoch_batches")},
        "trained": point["label"],
    }
    out, data = Path(cfg.out or ""), st.torch.save(tensors, metadata=meta)
    _check_out(out, "encoder.safetensors", run_dir, ENCODER)
    ckpt.write_atomic(out, lambda f: f.write(data), fix="choose a writable --out")
    return meta


def _is_encoder(path: Path) -> bool:
    try:
        read_metadata(path)
    except FastSigCLRError:
        return False
    return True


# What each output may replace (filetype.replaces_only): its own kind of file, never another's.
ENCODER = (_is_encoder, "an encoder `fastsigclr export` wrote")
NPY = (lambda path: starts_with(path, NPY_MAGIC), "a .npy file")
# embed's rows begin as _files_json writes them (read by their first bytes: a list of 2 M files is 67 MB)
ROW_FILES = (lambda path: starts_with(path, b'{\n"data_dir": '), "a list of embed's rows")


def _check_out(
    path: Path,
    example: str,
    run_dir: Path,
    kind: tuple[Callable[[Path], bool], str],
    named: str | None = None,
) -> None:
    """--out must be a new or replaceable regular file outside the run's own files, in a writable
    folder (checked before the features or weights are computed); a file there must be of its
    ``kind`` (an encoder, a .npy, ...), which alone it replaces. ``named``: how to name ``path``
    when it is not --out itself (embed's labels file). A symbolic link is refused, not followed
    nor replaced: writing atomically would put a file in place of the link and leave the file it
    names as it was, and writing through it could replace a file the user did not name."""
    what = not_a_file(path)
    if what is not None and named is not None:
        raise FastSigCLRError(f"{named} is {what}: remove it or choose another --out")
    if what == "a folder":
        raise FastSigCLRError(f"--out {path} is a folder; name a file in it, e.g. {path / example}")
    if what == "a symbolic link":
        raise FastSigCLRError(
            f"--out {path} is a symbolic link (to {os.readlink(path)}), which fastsigclr never replaces "
            f"nor writes through; name the file itself as --out, or remove the link"
        )
    if what is not None:
        raise FastSigCLRError(
            f"--out {path} is {what}, not a regular file, and fastsigclr replaces only regular files; "
            f"choose another --out"
        )
    ckpt.writable_folder(path.parent, "--out", f"the folder of --out {path}")
    try:
        inside = path.resolve().relative_to(run_dir.resolve()).parts
    except ValueError:
        inside = ()
    if inside and inside[0] in (*RUN_FILES, LOCK):
        raise FastSigCLRError(
            f"--out {path} is the run's own {Path(*inside)}; name another file, e.g. {run_dir / example}"
        )
    if (why := replaces_only(path, *kind)) is not None:
        fix = "delete it first, or choose another --out"
        raise FastSigCLRError(f"--out {path} {why}; {fix}" if named is None else f"{named} {why}; {fix}")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a file written by ``fastsigclr export`` (an error for any other file)."""
    st = _safetensors()
    path = Path(path)
    if not path.is_file():
        raise FastSigCLRError(f"no exported encoder at {path}; write one with `fastsigclr export`")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for foreign files
        raise FastSigCLRError(f"{path} is not a safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise FastSigCLRError(
            f"{path} was not written by `fastsigclr export` (format {meta.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    return meta


def _unique_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """Each tensor once, under its first name: a module registered under two names (a ResNet
    block's ``last_bn`` is its last batch norm) gives two keys for one tensor, and safetensors
    stores no tensor twice."""
    seen: set[tuple] = set()
    unique = {}
    for key, value in state.items():
        identity = (value.data_ptr(), value.shape, value.stride())
        if identity not in seen:
            seen.add(identity)
            unique[key] = value.detach().cpu().contiguous()
    return unique


def _check_described(path: str | Path, part: str, build: Callable[[], nn.Module]) -> None:
    """The module ``build`` makes from the exported file's metadata, built on the meta device and
    compared, name for name and shape for shape, with the file's ``part`` tensors (read from its
    header) before any memory is taken: an edited ``"width": "100000"`` allocated a 360 GB ResNet
    before any comparison, and an unreadable field ended in a traceback."""
    try:
        with torch.device("meta"):
            described = build()
    except (KeyError, ValueError, TypeError, OverflowError, RuntimeError) as err:
        raise FastSigCLRError(
            f"{path}: its metadata does not describe a {part} ({type(err).__name__}: {err}): the file "
            f"was edited by hand; export the run again"
        ) from None
    own, prefix = described.state_dict(keep_vars=True), f"{part}."
    with _safetensors().safe_open(str(path), framework="pt") as f:
        names = [k for k in f.keys() if k.startswith(prefix)]  # noqa: SIM118 (safe_open is not iterable)
        stored = {k[len(prefix) :]: tuple(f.get_slice(k).get_shape()) for k in names}
    shapes = [
        f"{k} is {v}, not {tuple(own[k].shape)}" for k, v in stored.items() if k in own and v != own[k].shape
    ]
    if shapes:  # load_state_dict would raise its multi-line RuntimeError
        raise FastSigCLRError(
            f"{path}: its {part} tensors do not fit the {type(described).__name__} its metadata describes "
            f"({'; '.join(shapes[:2])}): the file was edited or assembled by hand; export the run again"
        )
    # The names left out at export must be second names of tensors the file holds (a block's
    # last_bn is its last batch norm: one tensor, two names; safetensors stores it once).
    held = {id(own[k]) for k in stored if k in own}
    missing = [k for k in own if k not in stored and id(own[k]) not in held]
    unexpected = [k for k in stored if k not in own]
    if missing or unexpected:
        raise FastSigCLRError(
            f"{path}: its {part} tensors do not fit a {type(described).__name__} built from its metadata "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); export the run again"
        )


def _device(map_location: str | torch.device) -> torch.device:
    """``map_location`` as a device this machine has, else one line naming the fix."""
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as err:
        raise FastSigCLRError(
            f"map_location {map_location!r} is not a device ({err}); pass 'cpu' or 'cuda'"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FastSigCLRError(f"map_location {map_location!r}: this machine has no CUDA device; pass 'cpu'")
    return device


def _load_part(
    path: str | Path, part: str, build: Callable[[], nn.Module], map_location: str | torch.device
) -> nn.Module:
    """The ``part`` of the exported file ``path`` in the module ``build`` makes from its metadata,
    in eval mode on ``map_location``, once ``_check_described`` found that it fits and its tensors
    are of the module's dtypes and finite (what export writes: it refuses non-finite weights)."""
    device = _device(map_location)
    _check_described(path, part, build)
    module, prefix = build(), f"{part}."
    tensors = _safetensors().torch.load_file(str(path), device="cpu")
    tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    own = module.state_dict()
    for name, value in tensors.items():
        if value.dtype != own[name].dtype or (value.is_floating_point() and not value.isfinite().all()):
            what = "NaN or inf" if value.dtype == own[name].dtype else f"{value.dtype}, not {own[name].dtype}"
            raise FastSigCLRError(
                f"{path}: its {part} tensor {name} holds {what}, which `fastsigclr export` never writes: "
                f"the file is damaged or was edited; export the run again"
            )
    module.load_state_dict(tensors, strict=False)
    return module.to(device).eval()


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu") -> ResNet:
    """Rebuild an exported backbone, in eval mode: ``(B, 3, S, S)`` images, normalised with the
    file's ``mean`` and ``std`` (``read_metadata``), → ``(B, out_dim)`` features."""
    meta = read_metadata(path)
    return _load_part(path, "backbone", lambda: ResNet(meta["arch"], int(meta["width"])), map_location)


def load_projector(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Sequential:
    """Rebuild an exported projector (written with ``--projector``), in eval mode."""
    meta = read_metadata(path)
    if meta.get("has_projector") != "True":
        raise FastSigCLRError(f"{path} holds no projector; export it again with --projector")

    def build() -> nn.Module:
        return projector(int(meta["out_dim"]), tuple(json_loads(meta["proj_dims"])))

    return _load_part(path, "projector", build, map_location)


@dataclass(frozen=True)
class EmbedConfig:
    run: str | None = option(None, "run directory written by `fastsigclr train` (required)", path=True)
    data_dir: str | None = data_dir_option("the run's --data-dir")
    split: str = option(
        "test", "dataset split to embed (as the run used it: its --limit-*)", ("train", "test")
    )
    out: str | None = option(
        None, "features file FILE.npy; labels go to FILE.labels.npy (required)", path=True
    )
    device: str = device_option()
    max_broken: float | None = option_from(TrainConfig, "max_broken", None, unset="the run's --max-broken")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        if not self.run or not self.out:
            raise ValueError("--run DIR and --out FILE.npy are both required")
        if not self.out.endswith(".npy"):
            raise ValueError(f"--out must name a .npy file (labels go beside it), got {self.out!r}")
        if self.out.endswith(LABELS):  # it would replace the labels of FILE.npy with features
            stem = self.out[: -len(LABELS)]
            raise ValueError(
                f"--out {self.out} is where embed writes the labels of --out {stem}.npy: name a features "
                f"file not ending in {LABELS}, e.g. --out {stem}.features.npy"
            )


def labels_path(out: str | Path, suffix: str = LABELS) -> Path:
    """Where ``embed`` writes the labels of the features file ``out`` (FILE.npy → FILE.labels.npy),
    or with ``suffix`` FILES the files of its rows (FILE.files.json)."""
    out = Path(out)
    return out.with_name(out.name[: -len(".npy")] + suffix)


def _check_outs(out: Path, run_dir: Path) -> None:
    """embed's --out and the labels and files beside it (``_check_out``)."""
    _check_out(out, "features.npy", run_dir, NPY)
    for suffix, what, kind in ((LABELS, "labels", NPY), (FILES, "files", ROW_FILES)):
        path = labels_path(out, suffix)
        _check_out(
            path, "features.npy", run_dir, kind, f"{path}, where embed writes the {what} of --out {out},"
        )


def _files_json(files: list[str], data_dir: str) -> Callable[[Any], Any]:
    """A writer of FILE.files.json: the data folder and each row's file relative to it (a moved
    copy of the folder still names them), as JSON (names with newlines or not in UTF-8 survive)."""
    rows = [os.path.relpath(f, data_dir) for f in files]
    text = json.dumps({"data_dir": data_dir, "files": rows}, indent=0) + "\n"
    return lambda f: f.write(text.encode())


def embed(cfg: EmbedConfig) -> dict[str, Any]:
    """Backbone features (N, F) float32 of the un-augmented images of a split and their labels (N,)
    int64, written as two .npy files, and for a split read from files the file of each row
    (FILE.files.json); returns their paths and shape."""
    run_dir = Path(cfg.run or "")
    _run_checkpoint(run_dir)  # the clear errors first, before the data is read
    out = Path(cfg.out or "")
    _check_outs(out, run_dir)
    loaded = load_run_model(
        run_dir, cfg.device, cfg.data_dir, (cfg.split,), labelled=False, max_broken=cfg.max_broken
    )
    feats, labels = split_features(loaded, cfg.split, progress=cfg.progress)
    arrays = {out: feats.cpu().numpy(), labels_path(out): labels.cpu().numpy()}
    files = loaded["data"].row_files(loaded["sources"][cfg.split])
    if files is not None and len(files) != len(feats):
        raise RuntimeError(f"embed: {len(files)} files for {len(feats)} rows of features")
    _check_outs(out, run_dir)  # again: the features took a while
    # One write for all: an interrupt leaves the old files or the new ones, never new features
    # beside the labels of another split or run.
    writes = {path: functools.partial(np.save, arr=array) for path, array in arrays.items()}
    if files is not None:
        writes[labels_path(out, FILES)] = _files_json(files, loaded["data_dir"])
    ckpt.write_atomic_files(writes, fix="choose a writable --out")
    if files is None:  # an earlier embed's rows (of another split or dataset) would now mislead
        labels_path(out, FILES).unlink(missing_ok=True)
    return {
        "features": str(out),
        "labels": str(labels_path(out)),
        "files": str(labels_path(out, FILES)) if files is not None else None,
        "shape": tuple(feats.shape),
        "trained": loaded["trained"]["label"],  # which checkpoint: the run may still be training
    }
