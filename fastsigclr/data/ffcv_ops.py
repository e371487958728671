"""The augmentation recipe as FFCV operations, compiled by numba.

FFCV brings decoding, ordering and batching, but no colour jitter with hue, grayscale,
solarisation or blur, and a crop whose draws cannot be seeded. Each step of the recipe is
therefore a numba function on one image with explicit parameters (``*_image``: tested against the
PyTorch reference of ``fastsigclr.data.augment`` for the same parameters), wrapped in an FFCV
``Operation`` that draws the parameters for its batch and runs the images in parallel.

Images travel through the pipeline as (B, V, S, S, 3) float32 after ``ViewCrops``: one decode
per image, V views. Each operation seeds numba's generator from (seed, its own salt, the batch's
sample indices) before drawing, so the draws are reproducible for a seed and change with the
batch (FFCV's random order changes every epoch); the draws are serial, the image work parallel.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numba
import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation

from fastsigclr.data.augment import GRAY_WEIGHTS, AugmentSpec, blur_window

WR, WG, WB = GRAY_WEIGHTS
SQRT3 = math.sqrt(3.0)


# ---- per-image kernels (numba) -------------------------------------------------------------------


@numba.njit(cache=True)
def sample_crop(h, w, scale_lo, scale_hi, ratio_lo, ratio_hi):
    """RandomResizedCrop's box (y0, x0, height, width): ten tries, then the centred fallback."""
    log_lo, log_hi = math.log(ratio_lo), math.log(ratio_hi)
    for _ in range(10):
        area = h * w * np.random.uniform(scale_lo, scale_hi)
        ratio = math.exp(np.random.uniform(log_lo, log_hi))
        cw = round(math.sqrt(area * ratio))
        ch = round(math.sqrt(area / ratio))
        if 1 <= cw <= w and 1 <= ch <= h:
            y0 = math.floor(np.random.random() * (h - ch + 1))
            x0 = math.floor(np.random.random() * (w - cw + 1))
            return y0, x0, ch, cw
    in_ratio = w / h
    if in_ratio < ratio_lo:
        cw, ch = w, round(w / ratio_lo)
    elif in_ratio > ratio_hi:
        cw, ch = round(h * ratio_hi), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


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


@numba.njit(cache=True)
def seed_batch(seed, salt, indices):
    """Seed numba's generator from (seed, salt, the batch's sample indices)."""
    h = (seed * 1_000_003 + salt * 7_919) % 2_305_843_009_213_693_951
    for idx in indices:
        h = (h * 1_000_003 + idx + 1) % 2_305_843_009_213_693_951
    np.random.seed(h % 4_294_967_295)


# The draws live in their own (serial) functions, one scalar at a time: inside FFCV's parallel
# code numba would turn np.random.random(shape) into a parallel loop whose threads each use
# their own generator, and the same seed would stop giving the same draws (seen: two loaders
# with one seed disagreed on their views).
@numba.njit(cache=True)
def uniform_draws(seed, salt, indices, n, k):
    """(len(indices), n, k) uniforms in [0, 1), seeded by seed_batch."""
    seed_batch(seed, salt, indices)
    out = np.empty((len(indices), n, k))
    for i in range(len(indices)):
        for v in range(n):
            for j in range(k):
                out[i, v, j] = np.random.random()
    return out


@numba.njit(cache=True)
def crop_draws(seed, salt, indices, h, w, boxes, flip_p):
    """Per image and view: (y0, x0, height, width, flip) from each view's crop settings."""
    seed_batch(seed, salt, indices)
    n_views = boxes.shape[0]
    out = np.empty((len(indices), n_views, 5))
    for i in range(len(indices)):
        for v in range(n_views):
            y0, x0, ch, cw = sample_crop(h, w, boxes[v, 0], boxes[v, 1], boxes[v, 2], boxes[v, 3])
            out[i, v, 0], out[i, v, 1], out[i, v, 2], out[i, v, 3] = y0, x0, ch, cw
            out[i, v, 4] = 1.0 if np.random.random() < flip_p[v] else 0.0
    return out


# ---- FFCV operations ------------------------------------------------------------------------------


class _ViewsOp(Operation):
    """An in-place operation on (B, V, S, S, 3) float32 views, with per-view settings."""

    salt = 0

    def __init__(self, spec: AugmentSpec, seed: int) -> None:
        super().__init__()
        self.spec = spec
        self.seed = seed

    def declare_state_and_memory(self, previous_state):
        return replace(previous_state, jit_mode=True), None


class ViewCrops(_ViewsOp):
    """uint8 (B, H, W, 3) → float32 (B, V, S, S, 3): each view's random resized crop and flip."""

    salt = 1

    def generate_code(self):
        views = self.spec.views
        boxes = np.array([[*v.crop_scale, *v.crop_ratio] for v in views], dtype=np.float64)
        flip_p = np.array([v.flip_p for v in views])
        n_views, seed, salt = len(views), self.seed, self.salt
        my_range = Compiler.get_iterator()

        def crops(images, dst, indices):
            b, h, w = images.shape[0], images.shape[1], images.shape[2]
            box = crop_draws(seed, salt, indices, h, w, boxes, flip_p)
            for i in my_range(b):
                for v in range(n_views):
                    y0, x0, ch, cw, flip = (
                        box[i, v, 0],
                        box[i, v, 1],
                        box[i, v, 2],
                        box[i, v, 3],
                        box[i, v, 4],
                    )
                    crop_resize_image(images[i], y0, x0, ch, cw, flip > 0.5, dst[i, v])
            return dst[:b]

        crops.is_parallel = True
        crops.with_indices = True
        return crops

    def declare_state_and_memory(self, previous_state):
        shape = (len(self.spec.views), self.spec.size, self.spec.size, 3)
        state = replace(previous_state, jit_mode=True, shape=shape, dtype=np.dtype("float32"))
        return state, AllocationQuery(shape, np.dtype("float32"))


class ColorJitter(_ViewsOp):
    """With each view's probability: brightness, contrast, saturation and hue factors."""

    salt = 2

    def generate_code(self):
        views = self.spec.views
        p = np.array([v.jitter_p for v in views])
        lo = np.array(
            [
                [max(0.0, 1 - v.brightness), max(0.0, 1 - v.contrast), max(0.0, 1 - v.saturation)]
                for v in views
            ]
        )
        hi = np.array([[1 + v.brightness, 1 + v.contrast, 1 + v.saturation] for v in views])
        hue = np.array([v.hue for v in views])
        n_views, seed, salt = len(views), self.seed, self.salt
        my_range = Compiler.get_iterator()

        def jitter(images, _dst, indices):
            b = images.shape[0]
            f = uniform_draws(seed, salt, indices, n_views, 5)
            for i in my_range(b):
                for v in range(n_views):
                    if f[i, v, 4] < p[v]:
                        bright = lo[v, 0] + f[i, v, 0] * (hi[v, 0] - lo[v, 0])
                        contrast = lo[v, 1] + f[i, v, 1] * (hi[v, 1] - lo[v, 1])
                        sat = lo[v, 2] + f[i, v, 2] * (hi[v, 2] - lo[v, 2])
                        h = (2 * f[i, v, 3] - 1) * hue[v]
                        color_jitter_image(images[i, v], bright, contrast, sat, h)
            return images

        jitter.is_parallel = True
        jitter.with_indices = True
        return jitter


class _PerViewFlagOp(_ViewsOp):
    """Applies ``image_fn`` to a view with that view's probability, the ViewSpec field ``prob``."""

    prob = ""
    image_fn = None

    def generate_code(self):
        p = np.array([getattr(v, self.prob) for v in self.spec.views])
        n_views, seed, salt, image_fn = len(p), self.seed, self.salt, type(self).image_fn
        my_range = Compiler.get_iterator()

        def apply_flag(images, _dst, indices):
            b = images.shape[0]
            draw = uniform_draws(seed, salt, indices, n_views, 1)
            for i in my_range(b):
                for v in range(n_views):
                    if draw[i, v, 0] < p[v]:
                        image_fn(images[i, v])
            return images

        apply_flag.is_parallel = True
        apply_flag.with_indices = True
        return apply_flag


class RandomGrayscale(_PerViewFlagOp):
    salt, prob, image_fn = 3, "gray_p", grayscale_image


class RandomSolarize(_PerViewFlagOp):
    salt, prob, image_fn = 4, "solarize_p", solarize_image


class GaussianBlur(_ViewsOp):
    """With each view's probability, a blur of σ uniform in the view's range."""

    salt = 5

    def generate_code(self):
        views = self.spec.views
        p = np.array([v.blur_p for v in views])
        sig = np.array([v.blur_sigma for v in views], dtype=np.float64)
        window = blur_window(self.spec.size)
        n_views, seed, salt = len(views), self.seed, self.salt
        my_range = Compiler.get_iterator()

        def blur(images, _dst, indices):
            b = images.shape[0]
            f = uniform_draws(seed, salt, indices, n_views, 2)
            for i in my_range(b):
                for v in range(n_views):
                    if f[i, v, 0] < p[v]:
                        sigma = sig[v, 0] + f[i, v, 1] * (sig[v, 1] - sig[v, 0])
                        gaussian_blur_image(images[i, v], sigma, window)
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


def view_operations(spec: AugmentSpec, seed: int) -> list[Operation]:
    """The recipe after decoding: crops, jitter, grayscale, (blur), solarisation, normalisation."""
    ops: list[Operation] = [ViewCrops(spec, seed), ColorJitter(spec, seed), RandomGrayscale(spec, seed)]
    if spec.uses_blur:
        ops.append(GaussianBlur(spec, seed))
    return [*ops, RandomSolarize(spec, seed), NormalizeViews(spec, seed)]
