"""Fused two-view augmentation: uint8 dataset rows in, normalised channels_last views out.

One program per sample: it gathers its source image straight from the dataset (no batch copy),
and for each view does the bilinear resized crop with flip, colour jitter, grayscale, solarisation
and normalisation in registers, writing the view once. The pure-PyTorch reference is
``fastsigclr.data.augment.augment_reference``. The caller names the parameter table's
columns (``columns``: the data package's plan owns the table; kernels sit below it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launches
from .tiles import CompileCase

# The parameters the kernel reads, each a column of the (V, B, N_PARAMS) table: the launcher's
# ``columns`` maps every name to its index, and the kernel takes them as COL_<NAME> constexprs.
COLUMNS = ("y0", "x0", "h", "w", "flip", "bright", "contrast", "sat", "hue", "gray", "solar")
TWO_PI = tl.constexpr(6.283185307179586)
INV_SQRT3 = tl.constexpr(0.5773502691896258)


@triton.jit
def _gray(r, g, b):
    return 0.299 * r + 0.587 * g + 0.114 * b


@triton.jit
def _tap(src, yi, xi, W, valid):
    base = src + (yi * W + xi) * 3
    r = tl.load(base + 0, mask=valid, other=0).to(tl.float32)
    g = tl.load(base + 1, mask=valid, other=0).to(tl.float32)
    b = tl.load(base + 2, mask=valid, other=0).to(tl.float32)
    return r, g, b


@triton.jit
def _two_view_kernel(
    SRC,  # (N, H, W, 3) uint8 dataset, contiguous
    IDX,  # (B,) int64 rows of SRC that make up the batch
    PARAMS,  # (V, B, N_PARAMS) float32, columns COL_*
    OUT,  # (V·B, S, S, 3): channels_last memory of (V·B, 3, S, S)
    H,
    W,
    B,
    mean0,
    mean1,
    mean2,
    inv_std0,
    inv_std1,
    inv_std2,
    S: tl.constexpr,
    BLOCK: tl.constexpr,  # next power of two ≥ S·S: the whole view in one program
    N_VIEWS: tl.constexpr,
    N_PARAMS: tl.constexpr,
    FINISH: tl.constexpr,  # solarise + normalise here (False when a blur must come first)
    # the columns of PARAMS (COLUMNS)
    COL_Y0: tl.constexpr, COL_X0: tl.constexpr, COL_H: tl.constexpr, COL_W: tl.constexpr,
    COL_FLIP: tl.constexpr, COL_BRIGHT: tl.constexpr, COL_CONTRAST: tl.constexpr, COL_SAT: tl.constexpr,
    COL_HUE: tl.constexpr, COL_GRAY: tl.constexpr, COL_SOLAR: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    row = tl.load(IDX + pid).to(tl.int64)
    src = SRC + row * H * W * 3
    offs = tl.arange(0, BLOCK)
    valid = offs < S * S
    oy = offs // S
    ox = offs % S
    hmax = (H - 1).to(tl.float32)
    wmax = (W - 1).to(tl.float32)
    for v in tl.static_range(N_VIEWS):
        p = PARAMS + (v * B + pid) * N_PARAMS
        flip = tl.load(p + COL_FLIP)
        oxf = tl.where(flip > 0.5, S - 1 - ox, ox)
        sy = tl.load(p + COL_Y0) + (oy.to(tl.float32) + 0.5) / S * tl.load(p + COL_H) - 0.5
        sx = tl.load(p + COL_X0) + (oxf.to(tl.float32) + 0.5) / S * tl.load(p + COL_W) - 0.5
        sy = tl.minimum(tl.maximum(sy, 0.0), hmax)
        sx = tl.minimum(tl.maximum(sx, 0.0), wmax)
        fy = tl.floor(sy)
        fx = tl.floor(sx)
        wy = sy - fy
        wx = sx - fx
        y0 = fy.to(tl.int32)
        x0 = fx.to(tl.int32)
        y1 = tl.minimum(y0 + 1, H - 1)
        x1 = tl.minimum(x0 + 1, W - 1)
        r00, g00, b00 = _tap(src, y0, x0, W, valid)
        r01, g01, b01 = _tap(src, y0, x1, W, valid)
        r10, g10, b10 = _tap(src, y1, x0, W, valid)
        r11, g11, b11 = _tap(src, y1, x1, W, valid)
        r = ((r00 * (1 - wx) + r01 * wx) * (1 - wy) + (r10 * (1 - wx) + r11 * wx) * wy) / 255.0
        g = ((g00 * (1 - wx) + g01 * wx) * (1 - wy) + (g10 * (1 - wx) + g11 * wx) * wy) / 255.0
        b = ((b00 * (1 - wx) + b01 * wx) * (1 - wy) + (b10 * (1 - wx) + b11 * wx) * wy) / 255.0

        bright = tl.load(p + COL_BRIGHT)
        r = tl.minimum(tl.maximum(r * bright, 0.0), 1.0)
        g = tl.minimum(tl.maximum(g * bright, 0.0), 1.0)
        b = tl.minimum(tl.maximum(b * bright, 0.0), 1.0)
        contrast = tl.load(p + COL_CONTRAST)
        mean = tl.sum(tl.where(valid, _gray(r, g, b), 0.0), axis=0) / (S * S)
        r = tl.minimum(tl.maximum(contrast * r + (1 - contrast) * mean, 0.0), 1.0)
        g = tl.minimum(tl.maximum(contrast * g + (1 - contrast) * mean, 0.0), 1.0)
        b = tl.minimum(tl.maximum(contrast * b + (1 - contrast) * mean, 0.0), 1.0)
        sat = tl.load(p + COL_SAT)
        gray = _gray(r, g, b)
        r = tl.minimum(tl.maximum(sat * r + (1 - sat) * gray, 0.0), 1.0)
        g = tl.minimum(tl.maximum(sat * g + (1 - sat) * gray, 0.0), 1.0)
        b = tl.minimum(tl.maximum(sat * b + (1 - sat) * gray, 0.0), 1.0)
        # Hue: rotation by 2π·hue about the gray axis (1, 1, 1)/√3, as hue_coefficients().
        angle = TWO_PI * tl.load(p + COL_HUE)
        cos = tl.cos(angle)
        sin = tl.sin(angle)
        third = (1 - cos) / 3
        ka = cos + third
        kb = third - sin * INV_SQRT3
        kc = third + sin * INV_SQRT3
        r, g, b = ka * r + kb * g + kc * b, kc * r + ka * g + kb * b, kb * r + kc * g + ka * b
        r = tl.minimum(tl.maximum(r, 0.0), 1.0)
        g = tl.minimum(tl.maximum(g, 0.0), 1.0)
        b = tl.minimum(tl.maximum(b, 0.0), 1.0)
        to_gray = tl.load(p + COL_GRAY) > 0.5
        gray = _gray(r, g, b)
        r = tl.where(to_gray, gray, r)
        g = tl.where(to_gray, gray, g)
        b = tl.where(to_gray, gray, b)
        if FINISH:
            solar = tl.load(p + COL_SOLAR) > 0.5
            r = (tl.where(solar, tl.where(r >= 0.5, 1 - r, r), r) - mean0) * inv_std0
            g = (tl.where(solar, tl.where(g >= 0.5, 1 - g, g), g) - mean1) * inv_std1
            b = (tl.where(solar, tl.where(b >= 0.5, 1 - b, b), b) - mean2) * inv_std2
        out = OUT + ((v * B + pid) * (S * S) + offs.to(tl.int64)) * 3
        tl.store(out + 0, r.to(OUT.dtype.element_ty), mask=valid)
        tl.store(out + 1, g.to(OUT.dtype.element_ty), mask=valid)
        tl.store(out + 2, b.to(OUT.dtype.element_ty), mask=valid)


def two_view_augment(
    dataset: torch.Tensor,
    index: torch.Tensor,
    params: torch.Tensor,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    dtype: torch.dtype,
    *,
    columns: dict[str, int],
    finish: bool = True,
) -> torch.Tensor:
    """Augment ``dataset[index]`` into V views: returns (V·B, 3, S, S) channels_last in ``dtype``.

    dataset: (N, H, W, 3) uint8 contiguous; index: (B,) integer; params: (V, B, N_PARAMS) float32
    whose column ``columns[name]`` holds each parameter of COLUMNS. finish=False skips
    solarisation and normalisation (for a blur applied in between).
    """
    missing = [name for name in COLUMNS if not 0 <= columns.get(name, -1) < params.shape[-1]]
    if missing:
        raise ValueError(f"columns must give each of {', '.join(missing)} a column of params")
    if dataset.dtype != torch.uint8 or dataset.dim() != 4 or dataset.shape[-1] != 3:
        raise ValueError(f"dataset must be uint8 (N, H, W, 3), got {dataset.dtype} {tuple(dataset.shape)}")
    dataset = dataset.contiguous()
    n_views, batch, n_params = params.shape
    _, h, w, _ = dataset.shape
    out = torch.empty((n_views * batch, size, size, 3), dtype=dtype, device=dataset.device)
    if batch == 0:
        return out.permute(0, 3, 1, 2)
    block = triton.next_power_of_2(size * size)
    args = (dataset, index.to(torch.int64).contiguous(), params.to(torch.float32).contiguous(), out)
    args += (h, w, batch, *mean, *(1.0 / s for s in std))
    consts = dict(S=size, BLOCK=block, N_VIEWS=n_views, N_PARAMS=n_params, FINISH=finish)
    consts.update(_column_constexprs(columns))
    if launches.recording():  # kernels/launches.py: triton's default stages
        launches.record("augment", args, consts, [(_warps(block), launches.DEFAULT_CONFIG[1])])
    if not launches.record_only():
        _two_view_kernel[(batch,)](*args, **consts, num_warps=_warps(block))
    return out.permute(0, 3, 1, 2)


def _column_constexprs(columns: dict[str, int]) -> dict[str, int]:
    return {f"COL_{name.upper()}": int(columns[name]) for name in COLUMNS}


def _warps(block: int) -> int:
    return 4 if block <= 1024 else 8


def compile_cases(quick: bool = False) -> list[CompileCase]:
    """The launches ``tools/compile_kernels.py`` compiles: bf16/fp32 out, 32² with the finishing
    ops in the kernel, 64² without (a blur comes first), at the launcher's warps and triton's
    default 3 stages. ``quick`` changes nothing: four cases compile in seconds."""
    cases = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for size, finish in ((32, True), (64, False)):
            args = (torch.uint8, torch.int64, torch.float32, dtype, size, size, 512, *([0.5] * 6))
            block = triton.next_power_of_2(size * size)
            consts = dict(S=size, BLOCK=block, N_VIEWS=2, N_PARAMS=len(COLUMNS) + 1, FINISH=finish)
            consts.update(_column_constexprs({name: i for i, name in enumerate(COLUMNS)}))
            meta = dict(kernel="augment", variant=f"{size}x{size} finish={finish}", dtype=name)
            cases.append(CompileCase(_two_view_kernel, args, consts, _warps(block), 3, meta))
    return cases
