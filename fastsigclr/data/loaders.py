"""Loader backends by name (``LOADERS``: one ``base.LoaderEntry`` each): each turns a split
(``samples.SampleIndex``, or uint8 images + labels) and an AugmentSpec into batches of (views
(V·B, 3, S, S) channels_last in the training dtype, labels (B,)), with the same constructor and
``epoch(e)``/``len`` interface. The gpu loader decodes the split into memory; DALI reads and
decodes its files; FFCV reads a .beton written from it. DALI and FFCV are imported only when
chosen; a missing one is a clear error with the command that installs it. A new backend is one
module (its ``LoaderBase`` subclass) and one entry below."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastsigclr.config import FastSigCLRError, check_fields, option
from fastsigclr.data import dali_loader, ffcv_loader
from fastsigclr.data.base import LoaderEntry, LoaderSource
from fastsigclr.data.broken import max_broken_option, report_broken
from fastsigclr.data.dali_loader import DaliLoader
from fastsigclr.data.datasets import (
    DATASETS,
    DatasetInfo,
    data_dir_option,
    data_folder,
    dataset_option,
    prepare,
)
from fastsigclr.data.ffcv_loader import FfcvLoader, content_key, write_beton, written_from
from fastsigclr.data.gpu_loader import GpuLoader
from fastsigclr.data.info import FFCV_SUBFOLDER, default_store_size
from fastsigclr.data.samples import SampleIndex
from fastsigclr.data.splits import open_splits
from fastsigclr.runinfo import package_version


def ffcv_dir_option() -> Any:
    """The ``--ffcv-dir`` option of the commands that write a .beton."""
    return option(None, "folder for the .beton files of --loader ffcv; unset: <data-dir>/ffcv", path=True)


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
    folder = Path(ffcv_dir).expanduser() if ffcv_dir else Path(data_dir) / FFCV_SUBFOLDER
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
    are reported and the write stops (a .beton must not hold holes). One whose record says it was
    written from other data (images or labels changed, added or removed since: ``content_key``) is
    written again; one with no record (an older fastsigclr's, or copied without it) is used."""
    recorded = written_from(path) if path.is_file() else None
    if path.is_file() and recorded is None:
        print(
            f"fastsigclr: {path} has no record of the data it was written from ({path.name}.json: an "
            f"older fastsigclr wrote it, or it was copied without it): using it as it is; `fastsigclr "
            f"data write-ffcv --force` writes it again from the data",
            file=sys.stderr,
        )
    elif recorded != content_key(samples, store_size, jpeg):
        if recorded is not None:
            note = "was written from other data (the split's images or labels changed since)"
            print(f"fastsigclr: {path} {note}: writing it again", file=sys.stderr)
        elif progress:
            print(f"writing the FFCV dataset {path} (once)")
        if not samples.decoded:
            fix = "repair or delete the files listed above: an FFCV dataset holds every image"
            report_broken(samples.name, samples.undecodable(progress=progress), len(samples), 0.0, fix=fix)
        try:
            write_beton(path, samples, store_size=store_size, jpeg=jpeg, progress=progress)
        except OSError as err:
            raise FastSigCLRError(
                f"cannot write the FFCV dataset {path} ({err.strerror or err}): pass --ffcv-dir DIR, a "
                f"writable folder, to `fastsigclr train --loader ffcv` or `fastsigclr data write-ffcv`"
            ) from err
    return path


def loader_versions() -> dict[str, str | None]:
    """The version of each backend's package (None: not installed), by the name ``info`` shows."""
    return {e.package: package_version(e.package, e.distributions) for e in LOADERS.values() if e.package}


def loader_options(name: str, src: LoaderSource) -> dict[str, Any]:
    """Backend ``name``'s constructor arguments beyond the common ones (its entry's ``options``)."""
    return LOADERS[name].options(src)


def _store(samples: SampleIndex, store_size: int | None) -> int | None:
    """The side images are stored at (``SampleIndex.resized``), None: as they are."""
    return samples.resized(store_size)


def _gpu_options(src: LoaderSource) -> dict[str, Any]:
    """The storage size of mixed-size images, the memory budget, the undecodable-file threshold."""
    store = _store(src.samples, src.store_size)
    return {"store_size": store, "budget": src.budget, "max_broken": src.max_broken, "progress": src.progress}


def _dali_options(src: LoaderSource) -> dict[str, Any]:
    """The undecodable-file threshold: DALI meets a file's data only as it decodes it."""
    return {"max_broken": src.max_broken}


def _beton_path(src: LoaderSource) -> dict[str, Any]:
    """The .beton of the pre-training split, as rank 0's ``_beton`` left it (checked once there:
    its content key reads every file's metadata, and the other ranks wait at a barrier)."""
    store = _store(src.samples, src.store_size)
    return {"beton": beton_path(src.info, src.data_dir, src.limit, src.ffcv_dir, store)}


def _beton(src: LoaderSource) -> dict[str, Any]:
    """The .beton of the pre-training split (written first when missing or stale)."""
    store = _store(src.samples, src.store_size)
    path = beton_path(src.info, src.data_dir, src.limit, src.ffcv_dir, store)
    jpeg = src.samples.files is not None
    return {"beton": ensure_beton(path, src.samples, store_size=store, jpeg=jpeg, progress=src.progress)}


def _gpu_bench(samples: SampleIndex, spec: Any, workers: int, tmp: Path, store: int | None) -> dict[str, Any]:
    return {"store_size": store}


def _dali_bench(
    samples: SampleIndex, spec: Any, workers: int, tmp: Path, store: int | None
) -> dict[str, Any]:
    return {"num_threads": workers}


def _ffcv_bench(
    samples: SampleIndex, spec: Any, workers: int, tmp: Path, store: int | None
) -> dict[str, Any]:
    path = tmp / f"bench-{'folder' if store else 'uint8'}-{spec.size}.beton"
    beton = write_beton(path, samples, store_size=store, jpeg=store is not None, progress=False)
    return {"beton": beton, "num_workers": max(1, workers)}


PIPELINE = ("GPU pipeline", "CPU pipeline")
LOADERS: dict[str, LoaderEntry] = {
    "gpu": LoaderEntry(
        GpuLoader,
        runs_on=("fused Triton kernel", "PyTorch reference on the CPU"),
        options=_gpu_options,
        bench_options=_gpu_bench,
    ),
    "dali": LoaderEntry(
        DaliLoader,
        runs_on=PIPELINE,
        package="dali",  # DALI ships one distribution per CUDA version
        distributions=("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
        install_hint=dali_loader.INSTALL_HINT,
        options=_dali_options,
        bench_options=_dali_bench,  # the split's files, when it has some, are read by DALI itself
    ),
    "ffcv": LoaderEntry(
        FfcvLoader,
        runs_on=PIPELINE,
        package="ffcv",
        distributions=("ffcv",),
        install_hint=ffcv_loader.INSTALL_HINT,
        options=_beton_path,
        prepare=_beton,  # rank 0 checks the .beton and writes it when missing or stale; all then read it
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
    store_size: int | None = option(
        None,
        "images are stored at this size² (shorter side, centre crop), unless all share one size no "
        "larger: train --store-size; unset: train's default at the dataset's crop (256 for 224)",
        ge=8,
    )
    max_broken: float = max_broken_option()
    download: bool = option(True, "download the dataset when it is not in --data-dir")
    force: bool = option(False, "rewrite an existing .beton")
    progress: bool = option(True, "show progress bars")

    def __post_init__(self) -> None:
        check_fields(self)


def stored_note(stored: int) -> str:
    """What ``data write-ffcv`` says of a .beton whose images are stored at ``stored``²: the
    --store-size (and the --image-size whose default it is) at which a run reads it."""
    crops = [s for s in range(8, stored + 1) if default_store_size(s) == stored]
    unset = f" (the default at --image-size {crops[-1]})" if crops else ""
    return (
        f"its images are stored at {stored}²: train --loader ffcv reads it with --store-size {stored}" + unset
    )


def write_ffcv(cfg: WriteFfcvConfig) -> tuple[Path, int | None]:
    """The .beton ``train --loader ffcv`` reads for ``cfg``'s data, written when missing or stale
    (``--force``: always), and the side its images are stored at (None: as they are)."""
    info = DATASETS[cfg.dataset]
    data_dir = data_folder(cfg.data_dir)
    folder = prepare(info, data_dir, download_ok=cfg.download, progress=cfg.progress)
    store_size = cfg.store_size or default_store_size(info.image_size)
    # The files a run with this --max-broken leaves out, and the labelled splits' storage size (both
    # resized when one is: DataSplits), so that the run finds this .beton as its own.
    splits = open_splits(
        info, folder, limit_train=cfg.limit, store_size=store_size, max_broken=cfg.max_broken,
        limit_option="--limit",
    )  # fmt: skip
    samples = splits.pretrain
    src = LoaderSource(
        info, data_dir, samples, cfg.limit, cfg.ffcv_dir, cfg.progress, store_size=store_size,
        max_broken=cfg.max_broken,
    )  # fmt: skip
    stored = _store(samples, store_size)
    path = beton_path(info, data_dir, cfg.limit, cfg.ffcv_dir, stored)
    if cfg.force:
        path.unlink(missing_ok=True)
    return _beton(src)["beton"], stored
