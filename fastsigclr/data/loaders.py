"""Loader backends by name (``LOADERS``: one ``base.LoaderEntry`` each): each turns uint8 images +
labels + an AugmentSpec into batches of (views (V·B, 3, S, S) channels_last in the training
dtype, labels (B,)), with the same constructor and ``epoch(e)``/``len`` interface. DALI and FFCV
are imported only when chosen; a missing one is a clear error with the command that installs it.
A new backend is one module (its ``LoaderBase`` subclass) and one entry below."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastsigclr.config import FastSigCLRError, check_fields, option
from fastsigclr.data import dali_loader, ffcv_loader
from fastsigclr.data.base import LoaderEntry, LoaderSource
from fastsigclr.data.dali_loader import DaliLoader
from fastsigclr.data.datasets import (
    DATASETS,
    DatasetInfo,
    data_dir_option,
    data_folder,
    dataset_option,
    load_split,
    prepare,
)
from fastsigclr.data.ffcv_loader import FfcvLoader, write_beton
from fastsigclr.data.gpu_loader import GpuLoader
from fastsigclr.data.subset import balanced_indices
from fastsigclr.runinfo import package_version


def ffcv_dir_option() -> Any:
    """The ``--ffcv-dir`` option of the commands that write a .beton."""
    return option(None, "folder for the .beton files of --loader ffcv; unset: <data-dir>/ffcv")


def beton_path(
    info: DatasetInfo, data_dir: Path, limit: int | None = None, ffcv_dir: str | Path | None = None
) -> Path:
    """Where ``data write-ffcv`` puts a dataset's training split (or the class-balanced subset
    of ``limit`` images): ``ffcv_dir``, else ``data_dir``/ffcv."""
    suffix = f"-balanced{limit}" if limit else ""
    folder = Path(ffcv_dir).expanduser() if ffcv_dir else Path(data_dir) / "ffcv"
    return folder / f"{info.name}-train{suffix}.beton"


def ensure_beton(
    info: DatasetInfo,
    data_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    limit: int | None = None,
    *,
    ffcv_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """The .beton of these training images, written first if it does not exist (raw pixels for
    CIFAR, JPEG for Tiny-ImageNet)."""
    path = beton_path(info, data_dir, limit, ffcv_dir)
    if not path.is_file():
        if progress:
            print(f"writing the FFCV dataset {path} (once)")
        try:
            write_beton(path, images, labels, jpeg=info.kind == "tiny", progress=progress)
        except OSError as err:
            raise FastSigCLRError(
                f"cannot write the FFCV dataset {path} ({err.strerror or err}): pass --ffcv-dir DIR, a "
                f"writable folder, to `fastsigclr train --loader ffcv` or `fastsigclr data write-ffcv`"
            ) from err
    return path


def loader_versions() -> dict[str, str | None]:
    """The version of each backend's package (None: not installed), by the name ``info`` shows."""
    return {e.package: package_version(e.package, e.distributions) for e in LOADERS.values() if e.package}


def loader_options(
    name: str,
    info: DatasetInfo,
    data_dir: Path,
    train: tuple[np.ndarray, np.ndarray],
    limit: int | None,
    *,
    ffcv_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Backend ``name``'s constructor arguments beyond the common ones (its entry's ``options``)."""
    return LOADERS[name].options(LoaderSource(info, Path(data_dir), train, limit, ffcv_dir, progress))


def _dali_files(src: LoaderSource) -> dict[str, Any]:
    """Tiny-ImageNet: the JPEG files themselves (the same balanced subset as ``src.train``)."""
    if src.info.kind != "tiny":
        return {}
    from fastsigclr.data.tinyimagenet import split_files

    files, labels = split_files(src.info, src.data_dir / src.info.folder, "train")
    return {"files": [files[i] for i in balanced_indices(labels, src.limit)] if src.limit else files}


def _beton(src: LoaderSource) -> dict[str, Any]:
    """The .beton of the training split (written first when missing)."""
    path = ensure_beton(
        src.info, src.data_dir, *src.train, src.limit, ffcv_dir=src.ffcv_dir, progress=src.progress
    )
    return {"beton": path}


def _dali_bench(images: np.ndarray, labels: np.ndarray, spec: Any, workers: int, tmp: Path) -> dict[str, Any]:
    return {"num_threads": workers}


def _ffcv_bench(images: np.ndarray, labels: np.ndarray, spec: Any, workers: int, tmp: Path) -> dict[str, Any]:
    beton = write_beton(tmp / f"bench-{spec.size}.beton", images, labels, progress=False)
    return {"beton": beton, "num_workers": max(1, workers)}


PIPELINE = ("GPU pipeline", "CPU pipeline")
LOADERS: dict[str, LoaderEntry] = {
    "gpu": LoaderEntry(GpuLoader, runs_on=("fused Triton kernel", "PyTorch reference on the CPU")),
    "dali": LoaderEntry(
        DaliLoader,
        runs_on=PIPELINE,
        package="dali",  # DALI ships one distribution per CUDA version
        distributions=("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
        install_hint=dali_loader.INSTALL_HINT,
        options=_dali_files,
        bench_options=_dali_bench,
    ),
    "ffcv": LoaderEntry(
        FfcvLoader,
        runs_on=PIPELINE,
        package="ffcv",
        distributions=("ffcv",),
        install_hint=ffcv_loader.INSTALL_HINT,
        options=_beton,
        prepare=_beton,  # rank 0 writes a missing .beton; the others then find it
        bench_options=_ffcv_bench,
    ),
}


@dataclass(frozen=True)
class WriteFfcvConfig:
    """Options of ``fastsigclr data write-ffcv``."""

    dataset: str = dataset_option()
    data_dir: str | None = data_dir_option()
    ffcv_dir: str | None = ffcv_dir_option()
    limit: int | None = option(
        None, "write only a class-balanced subset of N training images (as train --limit-train)", ge=1
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
    images, labels = load_split(info, folder, "train", progress=cfg.progress)
    if cfg.limit:
        keep = balanced_indices(labels, cfg.limit)
        images, labels = images[keep], labels[keep]
    path = beton_path(info, data_dir, cfg.limit, cfg.ffcv_dir)
    if cfg.force:
        path.unlink(missing_ok=True)
    return ensure_beton(
        info, data_dir, images, labels, cfg.limit, ffcv_dir=cfg.ffcv_dir, progress=cfg.progress
    )
