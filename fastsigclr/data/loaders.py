"""Loader backends by name: each turns a split (``samples.SampleIndex``, or uint8 images +
labels) and an AugmentSpec into batches of (views (V·B, 3, S, S) channels_last in the training
dtype, labels (B,)), with the same constructor and ``epoch(e)``/``len`` interface. The gpu loader
decodes the split into memory; DALI reads and decodes its files; FFCV reads a .beton written
from it. DALI and FFCV are imported only when chosen; a missing one is a clear error with the
command that installs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastsigclr.config import FastSigCLRError, check_fields, option
from fastsigclr.data.dali_loader import DaliLoader
from fastsigclr.data.datasets import (
    DATASETS,
    DatasetInfo,
    data_dir_option,
    data_folder,
    dataset_option,
    prepare,
)
from fastsigclr.data.ffcv_loader import FfcvLoader, write_beton
from fastsigclr.data.gpu_loader import GpuLoader
from fastsigclr.data.samples import SampleIndex, report_broken
from fastsigclr.data.splits import open_splits

LOADERS = {
    "gpu": GpuLoader,
    "dali": DaliLoader,
    "ffcv": FfcvLoader,
}


def ffcv_dir_option() -> Any:
    """The ``--ffcv-dir`` option of the commands that write a .beton."""
    return option(None, "folder for the .beton files of --loader ffcv; unset: <data-dir>/ffcv")


def beton_path(
    info: DatasetInfo,
    data_dir: Path,
    limit: int | None = None,
    ffcv_dir: str | Path | None = None,
    store_size: int | None = None,
) -> Path:
    """Where ``data write-ffcv`` puts a dataset's pre-training split (or the class-balanced
    subset of ``limit`` images; a folder's images stored at ``store_size``²): ``ffcv_dir``, else
    ``data_dir``/ffcv."""
    suffix = (f"-balanced{limit}" if limit else "") + (f"-{store_size}px" if store_size else "")
    folder = Path(ffcv_dir).expanduser() if ffcv_dir else Path(data_dir) / "ffcv"
    return folder / f"{info.name}-train{suffix}.beton"


def ensure_beton(
    path: Path,
    samples: SampleIndex,
    *,
    store_size: int | None = None,
    jpeg: bool = False,
    progress: bool = True,
) -> Path:
    """The .beton of this split at ``path``, written first if it does not exist (raw pixels, or
    JPEG for splits read from image files). Every image is decoded once first: those that fail
    are reported and the write stops (a .beton must not hold holes)."""
    if not path.is_file():
        if progress:
            print(f"writing the FFCV dataset {path} (once)")
        if not samples.decoded:
            report_broken(samples.name, samples.undecodable(progress=progress), len(samples), 0.0)
        try:
            write_beton(path, samples, store_size=store_size, jpeg=jpeg, progress=progress)
        except OSError as err:
            raise FastSigCLRError(
                f"cannot write the FFCV dataset {path} ({err.strerror or err}): pass --ffcv-dir DIR, a "
                f"writable folder, to `fastsigclr train --loader ffcv` or `fastsigclr data write-ffcv`"
            ) from err
    return path


def loader_options(
    name: str,
    info: DatasetInfo,
    data_dir: Path,
    samples: SampleIndex,
    limit: int | None,
    *,
    ffcv_dir: str | Path | None = None,
    store_size: int | None = None,
    budget: int | None = None,
    max_broken: float = 0.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Backend-specific constructor arguments: the gpu loader's memory budget and storage size,
    the .beton for FFCV (DALI reads the split's files)."""
    mixed = samples.uniform_size is None
    if name == "gpu":
        size = store_size if mixed else None
        return {"store_size": size, "budget": budget, "max_broken": max_broken, "progress": progress}
    if name == "ffcv":
        size = store_size if mixed else None
        path = beton_path(info, data_dir, limit, ffcv_dir, size)
        jpeg = samples.files is not None
        return {"beton": ensure_beton(path, samples, store_size=size, jpeg=jpeg, progress=progress)}
    return {}


@dataclass(frozen=True)
class WriteFfcvConfig:
    """Options of ``fastsigclr data write-ffcv``."""

    dataset: str = dataset_option()
    data_dir: str | None = data_dir_option()
    ffcv_dir: str | None = ffcv_dir_option()
    limit: int | None = option(
        None, "write only a class-balanced subset of N training images (as train --limit-train)", ge=1
    )
    store_size: int | None = option(
        None, "images of mixed sizes are stored at this size² (shorter side, centre crop); unset: 256", ge=8
    )
    download: bool = option(True, "download the dataset when it is not in --data-dir")
    force: bool = option(False, "rewrite an existing .beton")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self) -> None:
        check_fields(self)


def write_ffcv(cfg: WriteFfcvConfig) -> Path:
    info = DATASETS[cfg.dataset]
    data_dir = data_folder(cfg.data_dir)
    folder = prepare(info, data_dir, download_ok=cfg.download, progress=cfg.progress)
    splits = open_splits(info, folder, limit_train=cfg.limit)
    samples = splits.pretrain
    size = (cfg.store_size or 256) if samples.uniform_size is None else None
    path = beton_path(info, data_dir, cfg.limit, cfg.ffcv_dir, size)
    if cfg.force:
        path.unlink(missing_ok=True)
    return ensure_beton(path, samples, store_size=size, jpeg=samples.files is not None, progress=cfg.progress)
