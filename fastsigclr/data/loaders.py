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
from fastsigclr.data.ffcv_loader import (
    FfcvLoader,
    beton_images,
    beton_tables,
    content_key,
    record_file,
    write_beton,
    written_from,
)
from fastsigclr.data.files import file_digest
from fastsigclr.data.gpu_loader import GpuLoader
from fastsigclr.data.info import FFCV_SUBFOLDER, default_store_size
from fastsigclr.data.samples import SampleIndex
from fastsigclr.data.splits import open_splits
from fastsigclr.filetype import not_a_file
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


def _own_files(path: Path) -> None:
    """Refuse a .beton path (or its record's) that is not a regular file: a folder cannot be
    written over, and a link would be read as the data (or written through) whatever it names."""
    for p in (path, record_file(path)):
        kind = not_a_file(p)
        if kind:
            raise FastSigCLRError(
                f"{p} is {kind}, not a file fastsigclr wrote: move it away (the FFCV dataset is written "
                f"in its place), or pass --ffcv-dir DIR, another folder"
            )


# A .beton up to this size has all its bytes checked against its record's digest at each start
# (``file_digest``: about 1.2 s a GiB on one core; CIFAR-10's 161 MB, 0.18 s); a larger one (ImageNet's
# JPEGs, over 100 GB) by `fastsigclr data write-ffcv`, which checks every byte of the one it keeps.
CHECK_AT_START = 1 << 30


def _why_write(
    path: Path, samples: SampleIndex, store_size: int | None, jpeg: bool, whole: bool, progress: bool
) -> str | None:
    """Why the .beton at ``path`` is to be written ("": there is none; None: it is this split's,
    kept). One whose size, tables or (``whole``, or up to ``CHECK_AT_START``) bytes are not its
    record's, or (an older record's, none) that FFCV cannot read, is cut or damaged; one without a
    record is used, with a note."""
    if not path.exists():
        return ""
    recorded = written_from(path)
    if isinstance(recorded, str):
        return f"has a damaged record of the data it was written from ({path.name}.json: {recorded})"
    size = path.stat().st_size
    if recorded is not None and recorded.get("size") is not None:
        if recorded["size"] != size:
            return f"is truncated or damaged ({size} bytes, {recorded['size']} as written)"
        if recorded.get("tables") is not None and (why := _tables_differ(path, recorded["tables"])):
            return why
    else:
        images = beton_images(path)
        if isinstance(images, str):
            return f"is truncated or damaged ({images})"
        if images != len(samples):
            return f"holds {images} images, the split {len(samples)}"
    if recorded is None:
        print(
            f"fastsigclr: {path} has no record of the data it was written from ({path.name}.json: an "
            f"older fastsigclr wrote it, or it was copied without it): using it as it is; `fastsigclr "
            f"data write-ffcv --force` writes it again from the data",
            file=sys.stderr,
        )
        return None
    if recorded["content_key"] != content_key(samples, store_size, jpeg):
        return "was written from other data (the split's images or labels changed since)"
    digest = recorded.get("digest")  # last: a .beton written again anyway is not read first
    if digest is not None and (whole or size <= CHECK_AT_START) and file_digest(path, progress) != digest:
        return "is damaged (its bytes are not those written: a disk or copy error changed its images)"
    return None


def _tables_differ(path: Path, written: str) -> str | None:
    """Why the .beton at ``path``, of the size written, is not as written: its header or tables
    (``tables_digest``) differ from the record's or cannot be read. Its pixels are not read."""
    try:
        now = beton_tables(path)
    except Exception as err:  # an untrusted file: whatever its bytes make FFCV's reader raise
        return f"is truncated or damaged ({type(err).__name__}: {err})"
    if now != written:
        return "is damaged (its header or tables, which say where each image lies and its label, changed)"
    return None


def ensure_beton(
    path: Path,
    samples: SampleIndex,
    *,
    store_size: int | None = None,
    jpeg: bool = False,
    progress: bool = True,
    force: bool = False,
    whole: bool = False,
) -> tuple[Path, bool]:
    """The .beton of this split at ``path`` and whether it was written now: when it does not
    exist, is cut or damaged, or ``force`` (raw pixels, or JPEG for splits read from image files).
    Every image is decoded once first: those that fail are reported and the write stops (a .beton
    must not hold holes; the old file is replaced only by a whole new one). One whose record says
    it was written from other data (images or labels changed, added or removed since:
    ``content_key``) is written again; one with no record (an older fastsigclr's, or copied
    without it) is used when FFCV reads it. ``whole``: check every byte of a large one too
    (``CHECK_AT_START``)."""
    _own_files(path)
    forced = force and path.exists()
    why = "" if forced else _why_write(path, samples, store_size, jpeg, whole, progress)
    if why is None:
        return path, False
    if why:
        print(f"fastsigclr: {path} {why}: writing it again", file=sys.stderr)
    elif progress:
        print(f"writing the FFCV dataset {path} " + ("again (--force)" if forced else "(once)"))
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
    return path, True


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
    """The storage size of mixed-size images, the memory budget, the undecodable-file threshold, the
    images earlier sessions could not decode."""
    store = _store(src.samples, src.store_size)
    return {"store_size": store, "budget": src.budget, "max_broken": src.max_broken, "progress": src.progress,
            "keep_out": src.undecoded}  # fmt: skip


def _dali_options(src: LoaderSource) -> dict[str, Any]:
    """The undecodable-file threshold (DALI meets a file's data only as it decodes it), the images
    earlier sessions left out as they trained."""
    return {"max_broken": src.max_broken, "keep_out": src.left_out}


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
    return {"beton": ensure_beton(path, src.samples, store_size=store, jpeg=jpeg, progress=src.progress)[0]}


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


def write_ffcv(cfg: WriteFfcvConfig) -> tuple[Path, int | None, bool]:
    """The .beton ``train --loader ffcv`` reads for ``cfg``'s data, written when missing, stale,
    cut or damaged (``--force``: always), the side its images are stored at (None: as they are)
    and whether it was written now (False: the one there was kept)."""
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
    stored = _store(samples, store_size)
    path = beton_path(info, data_dir, cfg.limit, cfg.ffcv_dir, stored)
    jpeg = samples.files is not None  # as a run's _beton writes it
    path, written = ensure_beton(
        path, samples, store_size=stored, jpeg=jpeg, progress=cfg.progress, force=cfg.force, whole=True
    )
    return path, stored, written


def written_line(path: Path, written: bool) -> str:
    """What ``data write-ffcv`` says of the .beton it wrote, or kept (this data's already)."""
    size = f"{path.stat().st_size / 2**20:.1f} MiB"
    if written:
        return f"wrote {path} ({size})"
    return f"kept {path} ({size}), the one there, as written; --force writes it again"
