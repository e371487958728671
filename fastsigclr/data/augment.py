"""The two-view augmentation recipe (docs/design.md §8) as one spec, its parameter sampler, and the
pure-PyTorch reference that is both the CPU path and the oracle of the fused Triton kernel.

Per view: random resized crop (bilinear, per-sample box), horizontal flip, colour jitter with
probability p (brightness → contrast → saturation → hue, in that fixed order, each clamped to
[0, 1]; hue rotates colours about the gray axis of the RGB cube), grayscale, optional Gaussian blur,
solarisation, then normalisation with the dataset mean/std. Output: (V·B, 3, S, S) channels_last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# Column layout of the per-sample parameter table shared with the kernel.
P_Y0, P_X0, P_H, P_W, P_FLIP, P_BRIGHT, P_CONTRAST, P_SAT, P_HUE, P_GRAY, P_SOLAR, P_BLUR = range(12)
N_PARAMS = 12
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


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


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (hi - lo) + lo


def _crop_boxes(n: int, h: int, w: int, view: ViewSpec, gen: torch.Generator, device) -> torch.Tensor:
    """(n, 4) boxes (y0, x0, height, width) in pixels: RandomResizedCrop's rule, vectorised.

    Ten candidates per sample; the first that fits is used; samples with none take the whole image
    cropped to the ratio bounds (torchvision's fallback)."""
    tries = 10
    area = h * w * _uniform(n * tries, *view.crop_scale, gen, device).view(n, tries)
    log_lo, log_hi = math.log(view.crop_ratio[0]), math.log(view.crop_ratio[1])
    ratio = torch.exp(_uniform(n * tries, log_lo, log_hi, gen, device)).view(n, tries)
    cw = torch.sqrt(area * ratio).round()
    ch = torch.sqrt(area / ratio).round()
    ok = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0], -1, dtype=torch.long))
    pick = first.clamp_min(0)[:, None]
    cw = cw.gather(1, pick)[:, 0]
    ch = ch.gather(1, pick)[:, 0]
    in_ratio = w / h
    if in_ratio < view.crop_ratio[0]:
        fb_w, fb_h = w, round(w / view.crop_ratio[0])
    elif in_ratio > view.crop_ratio[1]:
        fb_w, fb_h = round(h * view.crop_ratio[1]), h
    else:
        fb_w, fb_h = w, h
    fallback = first < 0
    cw = torch.where(fallback, torch.full_like(cw, float(fb_w)), cw)
    ch = torch.where(fallback, torch.full_like(ch, float(fb_h)), ch)
    y0 = torch.floor(torch.rand(n, generator=gen, device=device) * (h - ch + 1))
    x0 = torch.floor(torch.rand(n, generator=gen, device=device) * (w - cw + 1))
    y0 = torch.where(fallback, ((h - ch) / 2).floor(), y0)
    x0 = torch.where(fallback, ((w - cw) / 2).floor(), x0)
    return torch.stack([y0, x0, ch, cw], dim=1)


def sample_params(spec: AugmentSpec, n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """(V, n, N_PARAMS) float32 parameters on the generator's device, one row per sample and view."""
    device = gen.device
    out = []
    for view in spec.views:
        p = torch.zeros(n, N_PARAMS, device=device)
        p[:, P_Y0 : P_W + 1] = _crop_boxes(n, h, w, view, gen, device)
        p[:, P_FLIP] = (torch.rand(n, generator=gen, device=device) < view.flip_p).float()
        jitter = torch.rand(n, generator=gen, device=device) < view.jitter_p
        factors = [
            _uniform(n, max(0.0, 1 - view.brightness), 1 + view.brightness, gen, device),
            _uniform(n, max(0.0, 1 - view.contrast), 1 + view.contrast, gen, device),
            _uniform(n, max(0.0, 1 - view.saturation), 1 + view.saturation, gen, device),
        ]
        for col, f in zip((P_BRIGHT, P_CONTRAST, P_SAT), factors, strict=True):
            p[:, col] = torch.where(jitter, f, torch.ones_like(f))
        hue = _uniform(n, -view.hue, view.hue, gen, device)
        p[:, P_HUE] = torch.where(jitter, hue, torch.zeros_like(hue))
        p[:, P_GRAY] = (torch.rand(n, generator=gen, device=device) < view.gray_p).float()
        p[:, P_SOLAR] = (torch.rand(n, generator=gen, device=device) < view.solarize_p).float()
        sigma = _uniform(n, *view.blur_sigma, gen, device)
        blur = torch.rand(n, generator=gen, device=device) < view.blur_p
        p[:, P_BLUR] = torch.where(blur, sigma, torch.zeros_like(sigma))
        out.append(p)
    return torch.stack(out)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-1)
    return GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b


def hue_coefficients(hue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A, B, C) of the rotation by 2π·hue about the gray axis (1, 1, 1)/√3 (Rodrigues):
    r' = A·r + B·g + C·b, g' = C·r + A·g + B·b, b' = B·r + C·g + A·b. Exactly the identity at 0."""
    cos = torch.cos(2 * math.pi * hue)
    sin = torch.sin(2 * math.pi * hue)
    third = (1 - cos) / 3
    return cos + third, third - sin / math.sqrt(3), third + sin / math.sqrt(3)


def hue_rotation(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Rotate colours about the gray axis by 2π·hue; x (B, ..., 3), hue (B,)."""
    shape = (-1,) + (1,) * (x.dim() - 2)
    a, b, c = (k.view(shape) for k in hue_coefficients(hue))
    r, g, bl = x.unbind(-1)
    return torch.stack([a * r + b * g + c * bl, c * r + a * g + b * bl, b * r + c * g + a * bl], dim=-1)


def crop_resize(images: torch.Tensor, p: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resized crop with flip: uint8 (B, H, W, 3) → float (B, S, S, 3) in [0, 1].

    Output pixel centres map into the box (align_corners=False), clamped to the image."""
    b, h, w, _ = images.shape
    o = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size
    sy = p[:, P_Y0, None] + o[None, :] * p[:, P_H, None] - 0.5  # (B, S)
    ox = torch.where(p[:, P_FLIP, None] > 0.5, o.flip(0)[None, :], o[None, :])
    sx = p[:, P_X0, None] + ox * p[:, P_W, None] - 0.5
    sy = sy.clamp(0, h - 1)
    sx = sx.clamp(0, w - 1)
    y0 = sy.floor().long()
    x0 = sx.floor().long()
    y1 = (y0 + 1).clamp_max(h - 1)
    x1 = (x0 + 1).clamp_max(w - 1)
    wy = (sy - y0)[:, :, None, None]
    wx = (sx - x0)[:, None, :, None]
    bi = torch.arange(b, device=images.device)[:, None, None]
    img = images.float()

    def tap(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return img[bi, yy[:, :, None], xx[:, None, :]]  # (B, S, S, 3)

    top = tap(y0, x0) * (1 - wx) + tap(y0, x1) * wx
    bottom = tap(y1, x0) * (1 - wx) + tap(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy) / 255.0


def color_ops(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Jitter (fixed order), grayscale; x (B, S, S, 3) in [0, 1]."""
    view = (-1, 1, 1, 1)
    x = (x * p[:, P_BRIGHT].view(view)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2)).view(view)
    c = p[:, P_CONTRAST].view(view)
    x = (c * x + (1 - c) * mean).clamp(0, 1)
    s = p[:, P_SAT].view(view)
    x = (s * x + (1 - s) * _gray(x)[..., None]).clamp(0, 1)
    x = hue_rotation(x, p[:, P_HUE]).clamp(0, 1)
    gray = _gray(x)[..., None].expand_as(x)
    return torch.where(p[:, P_GRAY].view(view) > 0.5, gray, x)


def blur_window(size: int) -> int:
    """Gaussian blur window for an S×S image: about 10% of it, odd, at least 3 (SimCLR's rule)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample separable Gaussian blur (reflect padding); sigma 0 leaves a sample unchanged.

    x (B, S, S, 3); kernel size ≈ 10% of the image (odd), as SimCLR's recipe."""
    b, s, _, c = x.shape
    k = blur_window(s)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    sig = sigma.clamp_min(1e-6)[:, None]
    kern = torch.exp(-(r[None, :] ** 2) / (2 * sig**2))
    kern = kern / kern.sum(1, keepdim=True)
    kern = torch.where(sigma[:, None] > 0, kern, (r == 0).to(x.dtype)[None, :])
    img = x.permute(0, 3, 1, 2).reshape(1, b * c, s, s)
    weight = kern.repeat_interleave(c, 0)
    img = F.conv2d(F.pad(img, (k // 2, k // 2, 0, 0), mode="reflect"), weight[:, None, None, :], groups=b * c)
    img = F.conv2d(F.pad(img, (0, 0, k // 2, k // 2), mode="reflect"), weight[:, None, :, None], groups=b * c)
    return img.reshape(b, c, s, s).permute(0, 2, 3, 1)


def finish(x: torch.Tensor, p: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """Solarise and normalise: (B, S, S, 3) in [0, 1] → normalised, same layout."""
    solar = p[:, P_SOLAR].view(-1, 1, 1, 1) > 0.5
    x = torch.where(solar & (x >= 0.5), 1 - x, x)
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype)
    return (x - mean) / std


def augment_reference(
    images: torch.Tensor, params: torch.Tensor, spec: AugmentSpec, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, H, W, 3) images and (V, B, N_PARAMS) params → (V·B, 3, S, S) channels_last views."""
    views = []
    for p in params:
        x = color_ops(crop_resize(images, p, spec.size), p)
        if spec.uses_blur:
            x = gaussian_blur(x, p[:, P_BLUR])
        views.append(finish(x, p, spec))
    out = torch.cat(views).permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: channels_last
    return out.to(dtype).contiguous(memory_format=torch.channels_last)
