"""The NVIDIA DALI backend: the same recipe, parameters and order as the gpu loader, run by DALI.

Order and augmentation parameters come from ``order.epoch_plan`` and enter the pipeline through
``external_source`` next to the images, so DALI applies exactly the crop boxes, flips and colour
factors the gpu loader would (on the CPU, bit-for-bit the same draws; tests compare the views).
The pipeline: JPEG decode (``mixed`` on a GPU) or raw uint8 pixels → ``resize`` of the crop box
(bilinear) → brightness, contrast about the gray mean, saturation, hue as a 3×3 rotation about
the gray axis (``coord_transform``), each clamped → grayscale → optional Gaussian blur →
solarisation → ``crop_mirror_normalize`` (flip, mean/std, HWC float). CUDA present: a GPU
pipeline on the current device; otherwise a CPU-only pipeline (``device_id=None``).

Memory and lifetime: every array fed to DALI is copied by DALI when it is fed (``no_copy=False``),
so the feed may drop or reuse it at once; every output is copied into a tensor that torch
allocated before the pipeline runs again, so nothing yielded aliases DALI's memory. Each epoch
builds its pipeline and shuts it down (its threads joined) when the epoch ends, when an
exception leaves it, when its iterator is closed or dropped, and at the latest when the next
epoch starts, never at some later garbage collection.

Files DALI cannot decode: their headers were read up front (the split's index), their data only
as the epoch reaches them. When a batch fails to decode, the files of that batch and of the next
``PREFETCH`` (those fed ahead of it) are decoded with Pillow, each that fails is listed on stderr and
counted against ``max_broken`` (with those the header pass left out), and the pipeline restarts
at that batch. From then on each such file's place in a batch is taken by the next good image of
the same batch, so every batch, on every rank, keeps the size and the augmentation parameters the
plan gave it, and a resumed run that meets the file again makes the same batches (as long as
Pillow fails where DALI does: both use libjpeg-turbo on the CPU; nvJPEG is not checked). With
several ranks each lists what its share meets; the trainer checks ``max_broken`` on their union.
"""

from __future__ import annotations

import itertools
import os
import sys
import weakref
from collections.abc import Collection, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fastsigclr.config import FastSigCLRError
from fastsigclr.data.augment import GRAY_WEIGHTS, blur_window, hue_coefficients
from fastsigclr.data.base import LoaderBase
from fastsigclr.data.broken import report_broken
from fastsigclr.data.info import DatasetError
from fastsigclr.data.plan import AugmentSpec, Col
from fastsigclr.data.samples import SampleIndex, decode_file, workers

INSTALL_HINT = "pip install 'fastsigclr[dali]'  (or: pip install nvidia-dali-cuda130)"
# DALI's prefetch_queue_depth: when batch k fails, batches up to k + 1 were fed (measured on the
# CPU pipeline); _find_broken checks k … k + PREFETCH, a window that holds them.
PREFETCH = 2


def _import_dali():
    try:
        import nvidia.dali as dali
        import nvidia.dali.fn as fn
        import nvidia.dali.math as dmath
        import nvidia.dali.types as types
    except ImportError as err:
        raise FastSigCLRError(
            f"--loader dali needs NVIDIA DALI, which is not installed: {INSTALL_HINT}"
        ) from err
    return dali, fn, dmath, types


def _hue_matrix(hue: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotations about the gray axis; coord_transform computes out = M · pixel."""
    a, b, c = (k.numpy() for k in hue_coefficients(torch.from_numpy(hue)))
    return np.stack(
        [np.stack([a, b, c], -1), np.stack([c, a, b], -1), np.stack([b, c, a], -1)], axis=1
    ).astype(np.float32)


def view_arguments(params: np.ndarray, blur: bool) -> list[np.ndarray]:
    """Per-sample arguments of one view, from its (b, len(Col)) parameter rows, as batches
    (the blur's two only when the recipe blurs)."""
    p = params.astype(np.float32)
    start = p[:, [Col.Y0, Col.X0]]
    end = start + p[:, [Col.H, Col.W]]
    args = [
        start,
        end,
        p[:, Col.FLIP].astype(np.int32),
        p[:, Col.BRIGHT],
        p[:, Col.CONTRAST],
        p[:, Col.SAT],
        _hue_matrix(p[:, Col.HUE]),
        p[:, Col.GRAY],
        p[:, Col.SOLAR],
    ]
    if blur:  # DALI needs σ > 0; the flag turns the blur off where the recipe says none
        args += [np.maximum(p[:, Col.BLUR], 0.1), (p[:, Col.BLUR] > 0).astype(np.float32)]
    return args


def n_arguments(spec: AugmentSpec) -> int:
    return 11 if spec.uses_blur else 9


def _view_graph(images, args, spec: AugmentSpec, fn, dmath, types, gpu: bool):
    start, end, flip, bright, contrast, sat, hue_m, gray, solar, *blur_args = args
    if gpu:  # arithmetic operands must live where the image does; argument inputs stay on the CPU
        bright, contrast, sat, gray, solar = (x.gpu() for x in (bright, contrast, sat, gray, solar))
    gray_row = np.array([GRAY_WEIGHTS], dtype=np.float32)
    gray_all = np.repeat(gray_row, 3, axis=0)
    x = fn.resize(
        images,
        size=(spec.size, spec.size),
        roi_start=start,
        roi_end=end,
        roi_relative=False,
        interp_type=types.INTERP_LINEAR,
        antialias=False,
        dtype=types.FLOAT,
    )
    x = x * (1.0 / 255.0)
    x = dmath.clamp(x * bright, 0.0, 1.0)
    mean = fn.reductions.mean(fn.coord_transform(x, M=gray_row))
    x = dmath.clamp(contrast * x + (1.0 - contrast) * mean, 0.0, 1.0)
    x = dmath.clamp(sat * x + (1.0 - sat) * fn.coord_transform(x, M=gray_all), 0.0, 1.0)
    x = dmath.clamp(fn.coord_transform(x, M=hue_m), 0.0, 1.0)
    x = gray * fn.coord_transform(x, M=gray_all) + (1.0 - gray) * x
    if blur_args:
        sigma, blur_on = blur_args
        blur_on = blur_on.gpu() if gpu else blur_on
        blurred = fn.gaussian_blur(x, sigma=sigma, window_size=blur_window(spec.size))
        x = blur_on * blurred + (1.0 - blur_on) * x
    x = x + solar * (x >= 0.5) * (1.0 - 2.0 * x)
    return fn.crop_mirror_normalize(
        x,
        mirror=flip,
        mean=list(spec.mean),
        std=list(spec.std),
        output_layout="HWC",
        dtype=types.FLOAT,
    )


class DaliLoader(LoaderBase):
    """DALI runs the recipe (see the module docstring; LoaderBase for the contract).

    A split with files (``SampleIndex.files``, or ``files`` given) is read and decoded by DALI
    (``mixed`` on a GPU), each image at its own size; otherwise the decoded uint8 pixels are fed."""

    def __init__(
        self,
        images: np.ndarray | SampleIndex,
        labels: np.ndarray | None,
        *args,
        files: Sequence[Path] | None = None,
        num_threads: int | None = None,
        max_broken: float = 0.0,
        keep_out: Collection[int] = (),
        **kwargs,
    ) -> None:
        self._dali = _import_dali()
        super().__init__(images, labels, *args, **kwargs)
        if files is not None and len(files) != len(self.samples):
            raise ValueError(f"{len(files)} JPEG files for {len(self.samples)} images")
        files = self.samples.files if files is None else files
        self.files = None if files is None else [Path(f) for f in files]
        self.images = None if self.files else self.samples.in_memory(progress=False).array()
        self.num_threads = num_threads or max(1, min(8, os.cpu_count() or 1))
        self.gpu = self.device.type == "cuda"
        self._running: weakref.ref | None = None  # the iterator of the epoch under way
        self.max_broken = max_broken
        self.found_broken: dict[int, str] = {}  # sample id → why its file did not decode (mid-run)
        self.by_pillow: set[int] = set()  # sample ids whose files reach DALI as Pillow's pixels
        if self.files:
            self._check_files()
        self._keep_out(keep_out)

    def _check_files(self) -> None:
        """What the header pass found that DALI reads otherwise than Pillow (``image_header``): a
        format it does not decode (a GIF named .jpg; mid-epoch its error names no file) and
        transparency, which it drops where Pillow composites on white. Those files reach DALI as
        Pillow's pixels (``_encoded``), so every loader, kNN and eval see the same image; said
        once, as they cost a Pillow decode per epoch each."""
        self.by_pillow = {i for i, note in self.samples.notes.items() if note}
        if self.by_pillow and self.rank == 0:
            i = min(self.by_pillow)
            print(
                f"note: {len(self.by_pillow)} images are decoded by Pillow as they are fed to DALI, which "
                f"does not decode their format or drops their transparency (e.g. {self.files[i]}: "
                f"{self.samples.notes[i]}); with many of them --loader gpu or ffcv is faster",
                file=sys.stderr,
            )

    def _encoded(self, i: int) -> np.ndarray:
        """Sample i's bytes as DALI decodes them: the file, or for one DALI reads otherwise than
        Pillow, Pillow's pixels as a binary PPM (no compression: a header and the RGB bytes, which
        DALI decodes exactly; tests compare the views). A file Pillow cannot decode goes as it is:
        DALI's failure on it is then handled as any broken file's."""
        if i in self.by_pillow:
            try:
                pixels = decode_file(self.files[i])
            except (OSError, ValueError):
                pass
            else:
                header = f"P6\n{pixels.shape[1]} {pixels.shape[0]}\n255\n".encode()
                return np.frombuffer(header + pixels.tobytes(), dtype=np.uint8)
        return np.fromfile(self.files[i], dtype=np.uint8)

    def _batch(self, index: torch.Tensor, params: torch.Tensor) -> list:
        """What is fed for one batch, one entry per external_source output: whole-batch arrays
        (the JPEG files, of different lengths, as a list of samples)."""
        idx = self._in_place_of_broken(index.numpy())
        images = [self._encoded(i) for i in idx] if self.files else self.images[idx]
        batch = [images, self.labels[idx]]
        for view_params in params.numpy():
            batch += [np.ascontiguousarray(a) for a in view_arguments(view_params, self.spec.uses_blur)]
        return batch

    def _in_place_of_broken(self, idx: np.ndarray) -> np.ndarray:
        """The batch's sample ids, each whose file did not decode replaced by the next good one of
        the batch (cyclically): the batch keeps its size and its views' parameters."""
        bad = np.array([int(i) in self.found_broken for i in idx], dtype=bool)
        if not bad.any():
            return idx
        good = np.flatnonzero(~bad)
        if len(good) == 0:  # only with --max-broken near 1: the split's first image that decodes
            first = next((i for i in range(len(self.samples)) if self._decodes(i)), None)
            if first is None:
                raise DatasetError(f"{self.samples.name}: no image of the split decodes")
            return np.full_like(idx, first)
        out = idx.copy()
        at = np.flatnonzero(bad)
        out[at] = idx[good[np.searchsorted(good, at) % len(good)]]
        return out

    def _decodes(self, i: int) -> bool:
        """Sample i is not known broken and Pillow decodes its file."""
        return i not in self.found_broken and self._why_not(i) is None

    def _why_not(self, i: int) -> str | None:
        """Why Pillow cannot decode sample i's file; None when it can."""
        try:
            decode_file(self.files[i])
        except (OSError, ValueError) as err:
            return str(err) or type(err).__name__
        return None

    def _find_broken(self, epoch: int, batch: int) -> bool:
        """Decode with Pillow the files of batch ``batch`` and of those fed ahead of it; list those
        that fail and leave them out from now on (a DatasetError past ``max_broken``). False when
        every one decodes (DALI failed where Pillow does not)."""
        window = itertools.islice(self.plan(epoch, start=batch), PREFETCH + 1)
        ids = sorted({int(i) for index, _ in window for i in index.numpy()} - self.found_broken.keys())
        with ThreadPoolExecutor(max_workers=workers()) as pool:
            found = {
                i: why for i, why in zip(ids, pool.map(self._why_not, ids), strict=True) if why is not None
            }
        if not found:
            return False
        listed = [(str(self.files[i]), why) for i, why in found.items()]
        already = len(self.samples.broken) + len(self.found_broken)
        total = len(self.samples) + len(self.samples.broken)
        # One rank sees its share of each epoch: with several, the trainer checks the limit on
        # the union of their finds (``left_out``), so every rank stops at one step, one message.
        report_broken(self.samples.name, listed, total, self.max_broken, already, limit=self.world_size == 1)
        self.found_broken.update(found)
        return True

    def left_out(self) -> Collection[int]:
        return self.found_broken.keys()

    def _keep_out(self, ids: Collection[int]) -> None:
        """Earlier sessions' left-out images (``keep_out``: the checkpoint's ``left_out``) stay
        out, unread: the batches stay a run's that never stopped (even where a file was repaired
        since), no pipeline restarts to meet them again, and ``--max-broken`` counts them with
        those met from now on. The gpu loader's ``keep_out`` is the same for its up-front decode."""
        if not ids or not self.files:  # only files are left out mid-run
            return
        for i in ids:
            self.found_broken.setdefault(int(i), "left out by an earlier session of this run")
        if self.rank == 0:
            one = len(ids) == 1
            print(
                f"note: the {len(ids)} image{'s' * (not one)} earlier sessions of this run could not decode "
                f"stay{'s' * one} left out (e.g. {self.files[min(ids)]})",
                file=sys.stderr,
            )

    def _pipeline(self, feed: Iterator[list], max_batch: int):
        dali, fn, dmath, types = self._dali
        spec, gpu, jpeg = self.spec, self.gpu, self.files is not None
        n_args = n_arguments(spec)
        n_outputs = 2 + n_args * len(spec.views)

        def source():
            return next(feed)  # StopIteration ends the epoch

        @dali.pipeline_def(
            batch_size=max_batch,
            num_threads=self.num_threads,
            device_id=torch.cuda.current_device() if gpu else None,
            prefetch_queue_depth=PREFETCH,
            exec_dynamic=True,
        )
        def pipeline():
            layouts = ["" if jpeg else "HWC"] + [""] * (n_outputs - 1)
            outs = fn.external_source(
                source=source, num_outputs=n_outputs, batch=True, layout=layouts, no_copy=False
            )
            images, labels = outs[0], outs[1]
            if jpeg:
                # adjust_orientation=False: the pixels as stored, as Pillow (every other loader, kNN,
                # eval) and the header sizes the crop boxes come from see them; DALI's default turns
                # an EXIF-rotated photo (a phone's) and a non-square one was then read out of bounds
                images = fn.decoders.image(
                    images, device="mixed" if gpu else "cpu", output_type=types.RGB, adjust_orientation=False
                )
            elif gpu:
                images = images.gpu()
            views = []
            for v in range(len(spec.views)):
                args = outs[2 + v * n_args : 2 + (v + 1) * n_args]
                views.append(_view_graph(images, args, spec, fn, dmath, types, gpu))
            return (*views, labels)

        pipe = pipeline()
        pipe.build()
        return pipe

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches (LoaderBase); starting it first ends an epoch still open."""
        self.close()
        running = self._epoch(epoch, start)
        self._running = weakref.ref(running)  # a weak reference: dropping the iterator still ends it
        return running

    def close(self) -> None:
        """Shut down the pipeline of an epoch whose consumer stopped early (``break``, an
        exception) and still holds its iterator; an epoch that ran out shut its own down."""
        running = self._running() if self._running is not None else None
        self._running = None
        if running is not None:
            running.close()

    def _epoch(self, epoch: int, start: int = 0) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
        stream = torch.cuda.current_stream(self.device) if self.gpu else None
        batch = start
        while True:  # once, and again from a batch where files were found that do not decode
            feed = (self._batch(index, params) for index, params in self.plan(epoch, start=batch))
            pipe = self._pipeline(feed, self.batch_size // self.world_size)
            try:
                while True:
                    try:
                        outputs = pipe.run(stream)  # on a GPU: outputs ordered on torch's stream
                    except StopIteration:
                        return
                    except RuntimeError as err:  # an image whose header read but whose data does not
                        if self.files is None or "decod" not in str(err).lower():
                            raise
                        if not self._find_broken(epoch, batch):
                            raise self._undecodable(err, epoch) from err
                        break
                    views, labels = self._copy_out(outputs, stream)
                    del outputs
                    batch += 1
                    yield views, labels
            finally:
                # DALI has no public shutdown: Pipeline.__del__ and DALI's atexit hook call this one.
                # It stops the executor and joins its threads now, not whenever the GC frees the pipe.
                pipe._shutdown()

    @staticmethod
    def _undecodable(err: RuntimeError, epoch: int) -> FastSigCLRError:
        """DALI failed on a batch whose files Pillow decodes: one line with DALI's reason."""
        lines = [line.strip() for line in str(err).splitlines() if "decod" in line.lower()]
        first = lines[0] if lines else type(err).__name__
        return FastSigCLRError(
            f"DALI could not decode an image of epoch {epoch + 1} that Pillow reads ({first[:200]}): "
            f"convert the folder's images to plain RGB JPEG or PNG, or train with --loader gpu"
        )

    def _copy_out(self, outputs, stream) -> tuple[torch.Tensor, torch.Tensor]:
        """The views (view-major, channels_last, ``dtype``) and labels, copied out of DALI's
        buffers into tensors torch allocated (on ``stream`` for a GPU pipeline), then moved to
        the device. DALI copies within one side only: its GPU outputs go into device memory, its
        CPU ones (the labels, always; every output of a CPU pipeline) into host memory."""
        from nvidia.dali.backend import TensorGPU
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        *views, labels = (o.as_tensor() for o in outputs)
        b, size = views[0].shape()[0], self.spec.size
        on_gpu = isinstance(views[0], TensorGPU)
        home, copy_stream = (self.device, stream) if on_gpu else (torch.device("cpu"), None)
        x = torch.empty((len(views) * b, size, size, 3), dtype=torch.float32, device=home)
        for v, view in enumerate(views):
            feed_ndarray(view, x[v * b : (v + 1) * b], cuda_stream=copy_stream)
        y = torch.empty(labels.shape(), dtype=to_torch_type[labels.dtype])
        feed_ndarray(labels, y)
        x = x.to(self.device).permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: channels_last
        y = y.to(self.device, non_blocking=True)
        return x.to(self.dtype).contiguous(memory_format=torch.channels_last), y.reshape(-1)
