"""The augmentation plan (docs/design.md §8): the recipe (one spec), the parameter table every
backend applies, and the one sampler that draws it.

The table has one row per (view, image) and the named columns of ``Col``. ``sample_params``
draws n rows in a fixed number of vectorised operations whatever n and the number of views:
one tensor of uniforms (all views, all columns, every crop attempt), then arithmetic on it.
``AugmentPlan`` draws a whole epoch's table at once, on the CPU, from (seed, epoch), indexed by
sample id: the same views for a seed whatever the device, the rank count, the resume point or
the backend (torch reference, Triton kernel, DALI, FFCV, the PIL baseline), which only apply it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
import torch


class Col(IntEnum):
    """Columns of the parameter table (V, N, len(Col)) float32; "off" is the value that leaves
    the image unchanged."""

    Y0 = 0  # crop box top row, in source pixels
    X0 = 1  # crop box left column
    H = 2  # crop box height (≥ 1 pixel)
    W = 3  # crop box width
    FLIP = 4  # 1: mirror left–right; off 0
    BRIGHT = 5  # brightness factor; off 1
    CONTRAST = 6  # contrast factor about the gray mean; off 1
    SAT = 7  # saturation factor; off 1
    HUE = 8  # rotation about the gray axis, in turns; off 0
    GRAY = 9  # 1: grayscale; off 0
    SOLAR = 10  # 1: solarise; off 0
    BLUR = 11  # Gaussian blur σ in output pixels; off 0


@dataclass(frozen=True)
class ViewSpec:
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0


@dataclass(frozen=True)
class AugmentSpec:
    """The recipe every loader backend implements; ``views`` has one entry per view."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    views: tuple[ViewSpec, ...] = field(default=(ViewSpec(), ViewSpec()))

    @classmethod
    def simclr(cls, size: int, mean, std, *, n_views: int = 2, blur: bool | None = None) -> AugmentSpec:
        """Asymmetric views: blur p 1.0 / 0.1 (off at 32² unless asked), solarisation p 0.0 / 0.2.
        A third view (TCL's self-supervised setting) takes a different, weak transform: crop
        (scale 0.2–1) and flip only; further views repeat the first three."""
        use_blur = size > 32 if blur is None else blur
        first = ViewSpec(blur_p=1.0 if use_blur else 0.0)
        second = ViewSpec(blur_p=0.1 if use_blur else 0.0, solarize_p=0.2)
        weak = ViewSpec(crop_scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0)
        views = tuple((first, second, weak)[v % 3] for v in range(n_views))
        return cls(size=size, mean=tuple(mean), std=tuple(std), views=views)

    @property
    def uses_blur(self) -> bool:
        return any(v.blur_p > 0 for v in self.views)


def seed_for(seed: int, epoch: int, stream: int = 0) -> int:
    """The one seed hash: a generator seed from (seed, epoch, stream); stream 0 orders an
    epoch, stream 1 draws its augmentation table."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


# Crop attempts per row, as torchvision's RandomResizedCrop: with scale (0.08, 1) and ratio
# (3/4, 4/3) one attempt fails with probability 0.143 on a square image (2M-draw simulation), so
# all ten fail with probability 3e-9 and the fallback box almost never replaces the law.
CROP_TRIES = 10
# The uniforms of one row: areas and log-ratios of every attempt, the box's y0 and x0, one value
# per column from FLIP on, and one gate per random decision (a jitter draws its four factors
# under one gate).
_VALUES = tuple(c for c in Col if c >= Col.FLIP)
_GATES = ("flip", "jitter", "gray", "solar", "blur")
_GATE_OF = {Col.FLIP: "flip", Col.GRAY: "gray", Col.SOLAR: "solar", Col.BLUR: "blur"}
_U_VALUES = 2 * CROP_TRIES + 2
_U_GATES = _U_VALUES + len(_VALUES)
N_UNIFORMS = _U_GATES + len(_GATES)
_GATE_INDEX = [_GATES.index(_GATE_OF.get(c, "jitter")) for c in _VALUES]


def _column_law(view: ViewSpec, col: Col) -> tuple[float, float, float, float]:
    """(probability, low, high, off) of a column from FLIP on: with the probability, uniform in
    [low, high]; otherwise off."""
    spread = {Col.BRIGHT: view.brightness, Col.CONTRAST: view.contrast, Col.SAT: view.saturation}
    if col in spread:
        return view.jitter_p, max(0.0, 1 - spread[col]), 1 + spread[col], 1.0
    if col == Col.HUE:
        return view.jitter_p, -view.hue, view.hue, 0.0
    if col == Col.BLUR:
        return view.blur_p, *view.blur_sigma, 0.0
    prob = {Col.FLIP: view.flip_p, Col.GRAY: view.gray_p, Col.SOLAR: view.solarize_p}[col]
    return prob, 1.0, 1.0, 0.0


def _fallback_box(view: ViewSpec, h: int, w: int) -> tuple[int, int]:
    """torchvision's box when every attempt fails: the whole image cropped to the ratio bounds."""
    lo, hi = view.crop_ratio
    if w / h < lo:
        return round(w / lo), w
    if w / h > hi:
        return h, round(h * hi)
    return h, w


def _fallback_boxes(spec: AugmentSpec, hw: torch.Tensor) -> torch.Tensor:
    """(V, n, 2) fallback boxes of images of per-sample sizes ``hw`` (n, 2) float64, computed as
    ``_fallback_box`` does (float64, rounded half to even like Python's round)."""
    h, w = hw[:, 0], hw[:, 1]
    boxes = []
    for view in spec.views:
        lo, hi = view.crop_ratio
        height = torch.where(w / h > hi, h, torch.where(w / h < lo, torch.round(w / lo), h))
        width = torch.where(w / h > hi, torch.round(h * hi), w)
        boxes.append(torch.stack([height, width], -1))
    return torch.stack(boxes).float()


def _constants(spec: AugmentSpec, h: int, w: int, device) -> dict[str, torch.Tensor]:
    """Per-view constants, (V, 1, k) for broadcasting against (V, n, k), in one tensor op."""
    rows = []
    for view in spec.views:
        law = [_column_law(view, c) for c in _VALUES]
        log_ratio = (math.log(view.crop_ratio[0]), math.log(view.crop_ratio[1]))
        rows.append([*view.crop_scale, *log_ratio, *_fallback_box(view, h, w), *(x for q in law for x in q)])
    table = torch.tensor(rows, dtype=torch.float32, device=device)[:, None, :]
    k = len(_VALUES)
    law = table[..., 6:].unflatten(-1, (k, 4))
    return {
        "scale": table[..., 0:2],
        "log_ratio": table[..., 2:4],
        "fallback": table[..., 4:6],
        "prob": law[..., 0],
        "low": law[..., 1],
        "high": law[..., 2],
        "off": law[..., 3],
    }


def _crop_boxes(u: torch.Tensor, k: dict[str, torch.Tensor], h, w) -> torch.Tensor:
    """(V, n, 4) boxes (y0, x0, height, width): the first of CROP_TRIES attempts that fits,
    placed uniformly; rows where none fits take the centred fallback box. ``h``, ``w``: ints,
    or float32 (1, n, 1) per-sample sizes."""
    t = CROP_TRIES
    scale, log_ratio = k["scale"], k["log_ratio"]
    area = (h * w) * (scale[..., :1] + u[..., :t] * (scale[..., 1:] - scale[..., :1]))
    ratio = torch.exp(log_ratio[..., :1] + u[..., t : 2 * t] * (log_ratio[..., 1:] - log_ratio[..., :1]))
    ch, cw = torch.sqrt(area / ratio).round(), torch.sqrt(area * ratio).round()  # (V, n, t) each
    fits = (ch >= 1) & (cw >= 1) & (ch <= h) & (cw <= w)
    first = fits.to(torch.uint8).argmax(-1, keepdim=True)  # the first attempt that fits (0: none)
    found = fits.any(-1, keepdim=True)
    size = torch.cat([ch.gather(-1, first), cw.gather(-1, first)], -1)  # (V, n, 2)
    size = torch.where(found, size, k["fallback"])
    if isinstance(h, torch.Tensor):
        room = torch.cat([h, w], -1) - size
    else:
        room = torch.tensor([h, w], dtype=size.dtype, device=size.device) - size
    corner = torch.where(found, torch.floor(u[..., 2 * t : 2 * t + 2] * (room + 1)), torch.floor(room / 2))
    return torch.cat([corner, size], -1)


def sample_params(spec: AugmentSpec, n: int, h, w, gen: torch.Generator) -> torch.Tensor:
    """(V, n, len(Col)) float32 rows for n images of h×w, on the generator's device: the same
    ~40 tensor operations whatever n and the number of views. ``h`` and ``w`` are ints (one
    size) or (n,) integer tensors (an image folder's sizes; a few more operations); for equal
    sizes both give the same rows."""
    device = gen.device
    if isinstance(h, torch.Tensor):
        hw = torch.stack([h, w], -1).to(torch.float64)
        k = _constants(spec, 1, 1, device)
        k["fallback"] = _fallback_boxes(spec, hw).to(device)
        h, w = (x.float().to(device)[None, :, None] for x in (hw[:, 0], hw[:, 1]))
    else:
        k = _constants(spec, h, w, device)
    u = torch.rand((len(spec.views), n, N_UNIFORMS), generator=gen, device=device)
    gates = u[..., _U_GATES:][..., _GATE_INDEX]
    values = k["low"] + u[..., _U_VALUES:_U_GATES] * (k["high"] - k["low"])
    values = torch.where(gates < k["prob"], values, k["off"])
    return torch.cat([_crop_boxes(u, k, h, w), values], -1)


class AugmentPlan:
    """Every epoch's parameter table of one run: (V, n, len(Col)) on the CPU, row i the views of
    sample i, drawn from (seed, epoch) alone; the last epoch's table is kept (thread-safe: FFCV's
    worker threads look rows up concurrently). ``image_hw``: (h, w) of every image, or an (n, 2)
    array of each image's size (crop boxes are in each image's pixels)."""

    def __init__(self, spec: AugmentSpec, n: int, image_hw, seed: int) -> None:
        sizes = np.asarray(image_hw, dtype=np.int64)
        if sizes.ndim == 2 and len(np.unique(sizes, axis=0)) == 1:
            sizes = sizes[0]  # one size: the fixed-size draw, the same rows as before
        if sizes.ndim == 2 and len(sizes) != n:
            raise ValueError(f"{len(sizes)} image sizes for {n} images")
        self.spec, self.n, self.seed = spec, n, seed
        self.image_hw = tuple(int(x) for x in sizes) if sizes.ndim == 1 else torch.from_numpy(sizes)
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._table = torch.empty(0)

    def table(self, epoch: int) -> torch.Tensor:
        with self._lock:
            if self._epoch != epoch:
                gen = torch.Generator().manual_seed(seed_for(self.seed, epoch, 1))
                hw = self.image_hw
                h, w = (hw[:, 0], hw[:, 1]) if isinstance(hw, torch.Tensor) else hw
                self._table = sample_params(self.spec, self.n, h, w, gen)
                self._epoch = epoch
            return self._table

    def rows(self, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """(V, len(index), len(Col)): the rows of these sample ids."""
        return self.table(epoch)[:, index]
