"""Loader backends by name: each turns uint8 images + labels + an AugmentSpec into batches of
(views (V·B, 3, S, S) channels_last in the training dtype, labels (B,)), with the same
constructor and ``epoch(e)``/``len`` interface. DALI and FFCV are imported only when chosen; a
missing one is a clear error with the command that installs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastsigclr.config import option
from fastsigclr.data.dali_loader import DaliLoader
from fastsigclr.data.datasets import DATASETS, DatasetInfo, default_data_dir, load_split, prepare
from fastsigclr.data.ffcv_loader import FfcvLoader, write_beton
from fastsigclr.data.gpu_loader import GpuLoader

LOADERS = {
    "gpu": GpuLoader,
    "dali": DaliLoader,
    "ffcv": FfcvLoader,
}


def beton_path(info: DatasetInfo, data_dir: Path, limit: int | None = None) -> Path:
    """Where ``data write-ffcv`` puts a dataset's training split (or its first ``limit`` images)."""
    suffix = f"-first{limit}" if limit else ""
    return Path(data_dir) / "ffcv" / f"{info.name}-train{suffix}.beton"


def ensure_beton(
    info: DatasetInfo,
    data_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    limit: int | None = None,
    *,
    progress: bool = True,
) -> Path:
    """The .beton of these training images, written first if it does not exist (raw pixels for
    CIFAR, JPEG for Tiny-ImageNet)."""
    path = beton_path(info, data_dir, limit)
    if not path.is_file():
        if progress:
            print(f"writing the FFCV dataset {path} (once)")
        write_beton(path, images, labels, jpeg=info.kind == "tiny", progress=progress)
    return path


def loader_options(
    name: str,
    info: DatasetInfo,
    data_dir: Path,
    train: tuple[np.ndarray, np.ndarray],
    limit: int | None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Backend-specific constructor arguments: the JPEG files for DALI (Tiny-ImageNet), the
    .beton for FFCV."""
    if name == "dali" and info.kind == "tiny":
        from fastsigclr.data.tinyimagenet import split_files

        files, _ = split_files(info, Path(data_dir) / info.folder, "train")
        return {"files": files[:limit] if limit else files}
    if name == "ffcv":
        return {"beton": ensure_beton(info, data_dir, *train, limit, progress=progress)}
    return {}


@dataclass(frozen=True)
class WriteFfcvConfig:
    """Options of ``fastsigclr data write-ffcv``."""

    dataset: str = option("cifar10", "dataset", choices=tuple(DATASETS))
    data_dir: str | None = option(None, "dataset folder; unset: $FASTSIGCLR_DATA or ~/.cache/fastsigclr/data")
    limit: int | None = option(None, "write only the first N training images (as train --limit-train)")
    download: bool = option(True, "download the dataset when it is not in --data-dir")
    force: bool = option(False, "rewrite an existing .beton")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be ≥ 1, got {self.limit}")


def write_ffcv(cfg: WriteFfcvConfig) -> Path:
    info = DATASETS[cfg.dataset]
    data_dir = Path(cfg.data_dir).expanduser() if cfg.data_dir else default_data_dir()
    folder = prepare(info, data_dir, download_ok=cfg.download, progress=cfg.progress)
    images, labels = load_split(info, folder, "train", progress=cfg.progress)
    if cfg.limit:
        images, labels = images[: cfg.limit], labels[: cfg.limit]
    path = beton_path(info, data_dir, cfg.limit)
    if cfg.force:
        path.unlink(missing_ok=True)
    return ensure_beton(info, data_dir, images, labels, cfg.limit, progress=cfg.progress)
