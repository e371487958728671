"""The FFCV backend: a ``.beton`` written once per dataset, read by FFCV's loader, augmented by the
numba operations of ``ffcv_ops`` (decoded once per image, V views), moved with ``ToDevice``.

Order: FFCV's RANDOM order (seeded by seed + epoch) or QUASI_RANDOM; distributed runs use FFCV's
own sharding (each rank a disjoint share of the epoch). The augmentation parameters are the rows
of the run's AugmentPlan (by sample id and epoch, see ffcv_ops): a sample's views in an epoch are
the gpu/dali loaders' views of it; only the order (which batch it lands in) is FFCV's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import multiprocessing.queues
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastsigclr import checkpoint as ckpt
from fastsigclr.config import FastSigCLRError
from fastsigclr.data.base import LoaderBase
from fastsigclr.data.ffcv_watch import WorkerFailed, WorkerWatch
from fastsigclr.data.files import file_digest, own_partial
from fastsigclr.data.info import DatasetError
from fastsigclr.data.samples import SampleIndex, resize_center, resize_rule
from fastsigclr.filetype import json_loads

INSTALL_HINT = (
    "apt-get install -y --no-install-recommends libopencv-dev libturbojpeg0-dev pkg-config build-essential "
    "&& pip install 'fastsigclr[ffcv]'"
)
# 2 MiB pages: FFCV's default (8 MiB) makes a .beton of a small dataset mostly padding.
PAGE_SIZE = 1 << 21


def _import_ffcv():
    try:
        import ffcv  # noqa: F401
        from ffcv import fields, loader, transforms, writer
        from ffcv.fields import decoders

        from fastsigclr.data import ffcv_ops
    except ImportError as err:
        raise FastSigCLRError(f"--loader ffcv needs FFCV, which is not installed: {INSTALL_HINT}") from err
    return fields, decoders, loader, transforms, writer, ffcv_ops


class _Indexed:
    """(image, label) pairs for FFCV's writer, decoded on demand; stored at ``store_size``² as
    ``SampleIndex.resized`` says (``samples.resize_center``)."""

    def __init__(self, samples: SampleIndex, store_size: int | None) -> None:
        self.samples = samples
        self.store_size = samples.resized(store_size)
        # A worker's error, for the writer's one-line message (its traceback may go to a silenced stderr).
        self.error = multiprocessing.Array("c", 400)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        try:
            rgb = self.samples.decode(i)
            if self.store_size is not None:
                rgb = resize_center(rgb, self.store_size)
        except Exception as err:
            where = self.samples.files[i] if self.samples.files else f"image {i}"
            self.error.value = f"{where}: {type(err).__name__}: {err}".encode()[:399]
            raise
        return rgb, int(self.samples.labels[i])


def content_key(samples: SampleIndex, store_size: int | None, jpeg: bool) -> str:
    """What a .beton was written from: the labels, the sizes, how the images are stored, and the
    images: for a split read from files, each file's name (under the split's folder), size and
    modification time, a stat each (reading ImageNet's 140 GB at every start took minutes: the
    .beton is what spares that read); for images held as one array, a digest of its bytes
    (CIFAR-10's 150 MB: 0.12 s on one core). ``data write-ffcv --force`` rewrites it regardless."""
    store_size = samples.resized(store_size)  # None: kept as they are
    h = hashlib.blake2b(digest_size=20)
    rule = resize_rule(samples.sizes, store_size)
    h.update(f"n={len(samples)} store={store_size} jpeg={jpeg}{rule}\n".encode())
    h.update(np.ascontiguousarray(samples.labels).tobytes() + samples.sizes.tobytes())
    if samples.files:
        root = Path(os.path.commonpath([f.parent for f in samples.files]))
        for f in samples.files:
            try:
                st = f.stat()
            except OSError as err:
                raise DatasetError(f"{f} cannot be read ({err.strerror}); restore it or delete it") from None
            h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif samples.decoded:
        for i in range(0, len(samples), 4096):  # a block at a time: no copy of the whole split
            h.update(np.ascontiguousarray(samples.array()[i : i + 4096]).data)
    else:
        for i in range(len(samples)):
            h.update(np.ascontiguousarray(samples.decode(i)).data)
    return h.hexdigest()


def record_file(path: Path) -> Path:
    """The record beside the .beton at ``path`` of what it was written from: ``<name>.json``."""
    return path.with_name(f"{path.name}.json")


def written_from(path: Path) -> dict[str, Any] | str | None:
    """The record beside the .beton at ``path``: {"content_key": str, "size": its bytes, "tables":
    its ``tables_digest``, "digest": ``file_digest`` of all its bytes (each absent in an older
    fastsigclr's)}; None: none there; a string: why it cannot be read (damaged)."""
    try:
        record = json_loads(ckpt.read_text(record_file(path)))
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    except ValueError as err:
        return f"not JSON: {err}"
    if not isinstance(record, dict) or not isinstance(record.get("content_key"), str):
        return "no content_key in it"
    size = record.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool)):
        return f"its size is {size!r}, not a number of bytes"
    for name in ("tables", "digest"):
        if not isinstance(record.get(name, ""), str):
            return f"its {name} digest is {record[name]!r}, not a string"
    return record


def tables_digest(reader: Any) -> str:
    """A digest of what FFCV's ``reader`` read of a .beton before its pages: the header, the
    field descriptors, each image's metadata (its size, where its bytes lie, its label) and the
    allocation table. About 48 bytes an image (61 MB for ImageNet's 1.28 M, read at each start);
    a digest of the pixels too would read the whole file (over 100 GB) at every start."""
    h = hashlib.blake2b(digest_size=20)
    for part in (reader.header, reader.field_descriptors, reader.metadata, reader.alloc_table):
        h.update(part.tobytes())
    return h.hexdigest()


def beton_tables(beton: Path) -> str:
    """``tables_digest`` of ``beton``; raises what FFCV's reader raises on a damaged file."""
    from ffcv.reader import Reader

    return tables_digest(Reader(str(beton)))


def beton_images(beton: Path) -> int | str:
    """The number of images FFCV's header and tables of ``beton`` hold, or why FFCV cannot read
    them (a cut file lost its allocation table, written last; any other file is no .beton)."""
    from ffcv.reader import Reader

    try:
        reader = Reader(str(beton))
        images = int(reader.num_samples)
        # The reader takes a table cut short as a shorter one (np.fromfile without a count): the
        # table, written last, ends the file and holds one allocation per image (our one image field).
        end = int(reader.header["alloc_table_ptr"]) + reader.alloc_table.nbytes
    except Exception as err:  # an untrusted file: whatever its bytes make the reader raise
        return f"{type(err).__name__}: {err}"
    if len(reader.alloc_table) != images or end != beton.stat().st_size:
        return f"its allocation table holds {len(reader.alloc_table)} entries for {images} images"
    return images


def _stop_writer(writer: Any, before: set[Any], err: BaseException) -> None:
    """End what FFCV's writer started when its write is interrupted (Ctrl-C) or fails: its worker
    processes (not daemons: the interpreter's exit would wait for them), its queues' feeder
    threads (blocked on pipes no worker reads any more: the exit would join them forever) and its
    shared-memory block of metadata."""
    tb = err.__traceback__
    while tb is not None:  # the writer's queues are locals of its frames
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, multiprocessing.queues.Queue):
                value.cancel_join_thread()
        tb = tb.tb_next
    workers = [p for p in multiprocessing.active_children() if p not in before]
    for p in workers:
        p.terminate()
    for p in workers:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    block = getattr(writer, "metadata_sm", None)
    if block is not None:
        with contextlib.suppress(OSError, BufferError):  # BufferError: a view of it still exported
            block.close()
        with contextlib.suppress(OSError):  # unlinked even where it could not be closed
            block.unlink()


def write_beton(
    path: Path,
    images: np.ndarray | SampleIndex,
    labels: np.ndarray | None = None,
    *,
    store_size: int | None = None,
    jpeg: bool = False,
    jpeg_quality: int = 95,
    num_workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a split (or uint8 (N, H, W, 3) images and labels) to ``path`` (raw pixels, or JPEG
    when ``jpeg``; at ``store_size``² as ``SampleIndex.resized`` says), through a temporary file renamed
    into place: a half-written .beton never remains. Every image must decode (``data_samples``
    leaves out those that do not)."""
    fields, _, _, _, writer, _ = _import_ffcv()
    samples = images if isinstance(images, SampleIndex) else SampleIndex.from_array(images, labels)
    samples.resized(store_size)  # images of mixed sizes need a store_size: a ValueError before any write
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = own_partial(path)  # another run may be writing the same .beton now
    image_field = fields.RGBImageField(write_mode="jpg" if jpeg else "raw", jpeg_quality=jpeg_quality)
    w = writer.DatasetWriter(
        str(tmp),
        {"image": image_field, "label": fields.IntField()},
        page_size=PAGE_SIZE,
        num_workers=num_workers or min(8, os.cpu_count() or 1),
    )
    before = set(multiprocessing.active_children())
    indexed = _Indexed(samples, store_size)
    watch = WorkerWatch()  # FFCV would wait forever for a worker that died
    try:
        # FFCV's writer draws its own tqdm bar; without progress, silence it.
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        try:
            with quiet, watch:
                w.from_indexed_dataset(indexed)
        except BaseException as err:
            watch.stop()  # no wake-up can land in the cleanup
            _stop_writer(w, before, err)
            if isinstance(err, WorkerFailed):
                if isinstance(err.__context__, KeyboardInterrupt):  # it landed on a user's Ctrl-C
                    raise err.__context__ from None
                raise watch.error(path, indexed.error.value.decode(errors="replace")) from None
            raise
        if watch.failed is not None:  # a worker failed as the write ended: the file is not trusted
            raise watch.error(path, indexed.error.value.decode(errors="replace"))
        record_file(path).unlink(missing_ok=True)  # the old record goes before the old file does
        size, tables, digest = tmp.stat().st_size, beton_tables(tmp), file_digest(tmp, progress)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    key = content_key(samples, store_size, jpeg)
    # Its size and tables: a .beton cut short since (a full disk, a partial copy), or whose tables
    # were damaged (images read from the wrong bytes, wrong labels), is not taken for this data; its
    # digest: one whose pixels changed (a bad disk or copy) is not either (``loaders.ensure_beton``).
    record = {"content_key": key, "size": size, "tables": tables, "digest": digest}
    ckpt.write_text_atomic(record_file(path), json.dumps(record) + "\n")
    return path


# FFCV's reader of a cut file: a truncated .beton lost its allocation table (written last), e.g.
# "negative dimensions are not allowed".
_CUT = (ValueError, OSError, IndexError, EOFError)


def _damaged(beton: Path, err: Exception) -> FastSigCLRError:
    return FastSigCLRError(
        f"{beton} is truncated or damaged ({type(err).__name__}: {err}); delete it and run again "
        f"(it is written anew), or rerun `fastsigclr data write-ffcv --force`"
    )


def _beton_sizes(beton: Path) -> np.ndarray:
    """(N, 2) heights and widths of the images stored in ``beton``, or one line when it is cut."""
    from ffcv.reader import Reader

    try:
        reader = Reader(str(beton))
    except _CUT as err:
        raise _damaged(beton, err) from None
    meta = reader.metadata[f"f{reader.field_names.index('image')}"]  # fields are unnamed: f0, f1
    return np.stack([meta["height"], meta["width"]], -1).astype(np.int64)


def _open_loader(loader: Any, beton: Path, **options: Any) -> Any:
    """FFCV's Loader of ``beton``, or one line when the file is cut short or damaged."""
    try:
        return loader.Loader(str(beton), **options)
    except _CUT as err:
        raise _damaged(beton, err) from None


class FfcvLoader(LoaderBase):
    """FFCV reads, decodes and orders; the numba operations of ffcv_ops augment (LoaderBase has
    the contract). beton: the dataset written by ``write_beton`` (``fastsigclr data write-ffcv``);
    ``images`` and ``labels`` are only checked against it."""

    order_by_ranks = True  # one rank: a permutation of seed + epoch; several: DistributedSampler's

    def __init__(
        self,
        images: np.ndarray | SampleIndex,
        labels: np.ndarray | None,
        *args,
        beton: Path | None = None,
        order: str = "random",
        num_workers: int | None = None,
        **kwargs,
    ) -> None:
        _, decoders, loader, transforms, _, ops = _import_ffcv()
        if beton is None or not Path(beton).is_file():
            raise FastSigCLRError(
                f"no FFCV dataset at {beton}; write it with `fastsigclr data write-ffcv --dataset NAME`"
            )
        self._beton_sizes = _beton_sizes(Path(beton))
        super().__init__(images, labels, *args, **kwargs)
        if order not in ("random", "quasi_random"):
            raise ValueError(f"order must be 'random' or 'quasi_random', got {order!r}")
        if order == "quasi_random" and self.world_size > 1:
            raise ValueError("FFCV's quasi-random order is not available in distributed runs; use 'random'")
        spec, device, world_size, seed = self.spec, self.device, self.world_size, self.seed
        self.n_views = len(spec.views)
        self.epoch_rows = ops.EpochRows(self.augment_plan)
        pipelines = {
            "image": [
                decoders.SimpleRGBImageDecoder(),
                *ops.view_operations(spec, self.epoch_rows),
                transforms.ToTensor(),
                transforms.ToDevice(device, non_blocking=True),
            ],
            "label": [
                decoders.IntDecoder(),
                transforms.ToTensor(),
                transforms.Squeeze(),
                transforms.ToDevice(device, non_blocking=True),
            ],
        }
        option = loader.OrderOption.RANDOM if order == "random" else loader.OrderOption.QUASI_RANDOM
        self.loader = _open_loader(
            loader,
            Path(beton),
            batch_size=self.batch_size // world_size,
            num_workers=num_workers or min(8, os.cpu_count() or 1),
            order=option,
            os_cache=True,
            distributed=world_size > 1,
            seed=seed,
            drop_last=self.drop_last,
            pipelines=pipelines,
            batches_ahead=2,
        )
        if self.loader.reader.num_samples != len(self.samples):
            raise FastSigCLRError(
                f"{beton} holds {self.loader.reader.num_samples} images, the dataset {len(self.samples)}: "
                f"it was written for other data; write it again with `fastsigclr data write-ffcv`"
            )

    def image_sizes(self) -> np.ndarray:
        """The sizes of the images in the .beton (mixed-size folders are stored at one size)."""
        if len(self._beton_sizes) != len(self.samples):
            raise FastSigCLRError(
                f"the .beton holds {len(self._beton_sizes)} images, the dataset {len(self.samples)}: it was "
                f"written for other data; write it again with `fastsigclr data write-ffcv --force`"
            )
        return self._beton_sizes

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """FFCV's order has no entry point inside an epoch: a resumed epoch reads (and drops)
        its first ``start`` batches."""
        self.loader.next_epoch = epoch  # FFCV's order is seeded by seed + epoch
        self.epoch_rows.epoch = epoch  # set before FFCV's threads start on the epoch
        for i, (views, labels) in enumerate(self.loader):
            if i < start:
                continue
            b = views.shape[0]
            # (B, V, S, S, 3) → view-major (V·B, S, S, 3), viewed as NCHW: channels_last.
            x = views.transpose(0, 1).reshape(self.n_views * b, *views.shape[2:]).permute(0, 3, 1, 2)
            out = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
            # FFCV reuses its batch buffers a few batches later: nothing yielded may alias them.
            if out.untyped_storage().data_ptr() == views.untyped_storage().data_ptr():
                out = out.clone(memory_format=torch.channels_last)
            yield out, labels.reshape(-1).long().clone()
