"""The augmentation recipe as FFCV operations, compiled by numba.

FFCV brings decoding, ordering and batching, but no colour jitter with hue, grayscale,
solarisation or blur, and a crop whose draws cannot be seeded. Each step of the recipe is
therefore a numba function on one image with explicit parameters (``*_image``: tested against the
PyTorch reference of ``fastsigclr.data.augment`` for the same parameters), wrapped in an FFCV
``Operation`` that applies its columns of the parameter table to the batch in parallel.

Nothing is drawn here: every operation looks up its batch's rows of the run's ``AugmentPlan``
(by sample id, for the epoch under way) through ``EpochRows``, so FFCV applies exactly the
parameters the gpu and DALI loaders apply to the same sample in the same epoch. Images travel
through the pipeline as (B, V, S, S, 3) float32 after ``ViewCrops``: one decode per image, V views.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import replace

import numba
import numpy as np
import torch
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation

from fastsigclr.data.augment import GRAY_WEIGHTS, blur_window
from fastsigclr.data.plan import AugmentPlan, AugmentSpec, Col

WR, WG, WB = GRAY_WEIGHTS
SQRT3 = math.sqrt(3.0)


# ---- per-image kernels (numba) -------------------------------------------------------------------


@numba.njit(cache=True)
def crop_resize_image(src, y0, x0, ch, cw, flip, out):
    """Bilinear resized crop (pixel centres, clamped to the image) with flip: uint8 (H, W, 3) →
    out float32 (S, S, 3) in [0, 1]. Same sampling as augment.crop_resize."""
    h, w = src.shape[0], src.shape[1]
    s = out.shape[0]
    for i in range(s):
        sy = min(max(y0 + (i + 0.5) / s * ch - 0.5, 0.0), h - 1.0)
        ya = math.floor(sy)
        yb = min(ya + 1, h - 1)
        wy = sy - ya
        for j in range(s):
            o = (s - 1 - j + 0.5) / s if flip else (j + 0.5) / s
            sx = min(max(x0 + o * cw - 0.5, 0.0), w - 1.0)
            xa = math.floor(sx)
            xb = min(xa + 1, w - 1)
            wx = sx - xa
            for c in range(3):
                top = src[ya, xa, c] * (1 - wx) + src[ya, xb, c] * wx
                bottom = src[yb, xa, c] * (1 - wx) + src[yb, xb, c] * wx
                out[i, j, c] = (top * (1 - wy) + bottom * wy) / 255.0


@numba.njit(cache=True)
def _clip01(v):
    return min(max(v, 0.0), 1.0)


@numba.njit(cache=True)
def color_jitter_image(x, bright, contrast, sat, hue):
    """In place on float32 (S, S, 3) in [0, 1]: brightness → contrast about the gray mean →
    saturation → hue (rotation about the gray axis by 2π·hue), each clamped to [0, 1]."""
    s0, s1 = x.shape[0], x.shape[1]
    total = 0.0
    for i in range(s0):
        for j in range(s1):
            for c in range(3):
                x[i, j, c] = _clip01(x[i, j, c] * bright)
            total += WR * x[i, j, 0] + WG * x[i, j, 1] + WB * x[i, j, 2]
    mean = total / (s0 * s1)
    cos = math.cos(2 * math.pi * hue)
    sin = math.sin(2 * math.pi * hue)
    third = (1 - cos) / 3
    a, b, cc = cos + third, third - sin / SQRT3, third + sin / SQRT3
    for i in range(s0):
        for j in range(s1):
            r = _clip01(contrast * x[i, j, 0] + (1 - contrast) * mean)
            g = _clip01(contrast * x[i, j, 1] + (1 - contrast) * mean)
            bl = _clip01(contrast * x[i, j, 2] + (1 - contrast) * mean)
            gray = WR * r + WG * g + WB * bl
            r = _clip01(sat * r + (1 - sat) * gray)
            g = _clip01(sat * g + (1 - sat) * gray)
            bl = _clip01(sat * bl + (1 - sat) * gray)
            x[i, j, 0] = _clip01(a * r + b * g + cc * bl)
            x[i, j, 1] = _clip01(cc * r + a * g + b * bl)
            x[i, j, 2] = _clip01(b * r + cc * g + a * bl)


@numba.njit(cache=True)
def grayscale_image(x):
    """In place: every channel becomes the luma 0.299 R + 0.587 G + 0.114 B."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            gray = WR * x[i, j, 0] + WG * x[i, j, 1] + WB * x[i, j, 2]
            x[i, j, 0] = gray
            x[i, j, 1] = gray
            x[i, j, 2] = gray


@numba.njit(cache=True)
def _reflect(k, n):
    if k < 0:
        return -k
    if k >= n:
        return 2 * n - 2 - k
    return k


@numba.njit(cache=True)
def gaussian_blur_image(x, sigma, window):
    """In place: separable Gaussian blur (normalised taps, reflect padding); sigma ≤ 0: none."""
    if sigma <= 0:
        return
    r = window // 2
    taps = np.empty(window, dtype=np.float32)
    for k in range(window):
        taps[k] = math.exp(-((k - r) ** 2) / (2 * sigma * sigma))
    taps /= taps.sum()
    h, w = x.shape[0], x.shape[1]
    tmp = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            for c in range(3):
                acc = 0.0
                for k in range(window):
                    acc += taps[k] * x[i, _reflect(j + k - r, w), c]
                tmp[i, j, c] = acc
    for i in range(h):
        for j in range(w):
            for c in range(3):
                acc = 0.0
                for k in range(window):
                    acc += taps[k] * tmp[_reflect(i + k - r, h), j, c]
                x[i, j, c] = acc


@numba.njit(cache=True)
def solarize_image(x):
    """In place: values at or above 0.5 become 1 − value."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            for c in range(3):
                if x[i, j, c] >= 0.5:
                    x[i, j, c] = 1.0 - x[i, j, c]


@numba.njit(cache=True)
def normalize_image(x, mean, std):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            for c in range(3):
                x[i, j, c] = (x[i, j, c] - mean[c]) / std[c]


# ---- the plan's rows, looked up from compiled code ------------------------------------------------

# Compiled code cannot hold a Python object: each operation holds the key of its EpochRows and
# calls back into Python (numba.objmode) once per batch to fetch its rows.
_LIVE: weakref.WeakValueDictionary[int, EpochRows] = weakref.WeakValueDictionary()


class EpochRows:
    """A run's AugmentPlan and the epoch its FFCV loader is reading (set by ``FfcvLoader.epoch``)."""

    def __init__(self, plan: AugmentPlan, epoch: int = 0) -> None:
        self.plan, self.epoch = plan, epoch
        self.key = id(self)
        _LIVE[self.key] = self


def batch_rows(key: int, indices: np.ndarray) -> np.ndarray:
    """(b, V, len(Col)) float32: the plan's rows of these sample ids in the epoch under way."""
    rows = _LIVE[key]
    index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    return rows.plan.rows(rows.epoch, index).transpose(0, 1).contiguous().numpy()


@numba.njit
def plan_rows(key, indices):
    with numba.objmode(rows="float32[:, :, ::1]"):
        rows = batch_rows(key, indices)
    return rows


# ---- FFCV operations ------------------------------------------------------------------------------


class _ViewsOp(Operation):
    """An in-place operation on (B, V, S, S, 3) float32 views, applying its columns of the rows
    of ``rows`` (an EpochRows) for the batch's sample ids."""

    def __init__(self, spec: AugmentSpec, rows: EpochRows) -> None:
        super().__init__()
        self.spec = spec
        self.rows = rows  # kept alive here: the compiled code only holds its key

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=True), None


class ViewCrops(_ViewsOp):
    """uint8 (B, H, W, 3) → float32 (B, V, S, S, 3): each view's resized crop and flip."""

    def generate_code(self):
        n_views, key = len(self.spec.views), self.rows.key
        my_range = Compiler.get_iterator()

        def crops(images, dst, indices):
            rows = plan_rows(key, indices)
            for i in my_range(images.shape[0]):
                for v in range(n_views):
                    q = rows[i, v]
                    flip = q[Col.FLIP] > 0.5
                    crop_resize_image(images[i], q[Col.Y0], q[Col.X0], q[Col.H], q[Col.W], flip, dst[i, v])
            return dst[: images.shape[0]]

        crops.is_parallel = True
        crops.with_indices = True
        return crops

    def declare_state_and_memory(self, previous_state):
        shape = (len(self.spec.views), self.spec.size, self.spec.size, 3)
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("float32"))
        return state, AllocationQuery(shape, np.dtype("float32"))


class ColorJitter(_ViewsOp):
    """Brightness, contrast, saturation and hue factors (rows without jitter hold the identity,
    and are skipped)."""

    def generate_code(self):
        n_views, key = len(self.spec.views), self.rows.key
        my_range = Compiler.get_iterator()

        def jitter(images, _dst, indices):
            rows = plan_rows(key, indices)
            for i in my_range(images.shape[0]):
                for v in range(n_views):
                    q = rows[i, v]
                    bright, contrast, sat, hue = q[Col.BRIGHT], q[Col.CONTRAST], q[Col.SAT], q[Col.HUE]
                    if bright != 1 or contrast != 1 or sat != 1 or hue != 0:
                        color_jitter_image(images[i, v], bright, contrast, sat, hue)
            return images

        jitter.is_parallel = True
        jitter.with_indices = True
        return jitter


class _FlagOp(_ViewsOp):
    """Applies ``image_fn`` to the views whose ``column`` (a 0/1 flag of the table) is set."""

    column = Col.FLIP
    image_fn = None

    def generate_code(self):
        n_views, key, column, image_fn = len(self.spec.views), self.rows.key, self.column, type(self).image_fn
        my_range = Compiler.get_iterator()

        def apply_flag(images, _dst, indices):
            rows = plan_rows(key, indices)
            for i in my_range(images.shape[0]):
                for v in range(n_views):
                    if rows[i, v, column] > 0.5:
                        image_fn(images[i, v])
            return images

        apply_flag.is_parallel = True
        apply_flag.with_indices = True
        return apply_flag


class RandomGrayscale(_FlagOp):
    column, image_fn = Col.GRAY, grayscale_image


class RandomSolarize(_FlagOp):
    column, image_fn = Col.SOLAR, solarize_image


class GaussianBlur(_ViewsOp):
    """A Gaussian blur of the row's σ (none where σ is 0)."""

    def generate_code(self):
        n_views, key = len(self.spec.views), self.rows.key
        window = blur_window(self.spec.size)
        my_range = Compiler.get_iterator()

        def blur(images, _dst, indices):
            rows = plan_rows(key, indices)
            for i in my_range(images.shape[0]):
                for v in range(n_views):
                    gaussian_blur_image(images[i, v], rows[i, v, Col.BLUR], window)
            return images

        blur.is_parallel = True
        blur.with_indices = True
        return blur


class NormalizeViews(_ViewsOp):
    """(x − mean) / std per channel."""

    def generate_code(self):
        mean = np.array(self.spec.mean, dtype=np.float32)
        std = np.array(self.spec.std, dtype=np.float32)
        my_range = Compiler.get_iterator()

        def normalize(images, _dst):
            for i in my_range(images.shape[0]):
                for v in range(images.shape[1]):
                    normalize_image(images[i, v], mean, std)
            return images

        normalize.is_parallel = True
        return normalize


def view_operations(spec: AugmentSpec, rows: EpochRows) -> list[Operation]:
    """The recipe after decoding: crops, jitter, grayscale, (blur), solarisation, normalisation."""
    ops: list[Operation] = [ViewCrops(spec, rows), ColorJitter(spec, rows), RandomGrayscale(spec, rows)]
    if spec.uses_blur:
        ops.append(GaussianBlur(spec, rows))
    return [*ops, RandomSolarize(spec, rows), NormalizeViews(spec, rows)]
