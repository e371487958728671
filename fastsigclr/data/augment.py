"""The pure-PyTorch reference of the augmentation recipe (docs/design.md §8): it applies the rows
of the parameter table (``plan.Col``) and is both the CPU path and the oracle of the fused Triton
kernel.

Per view: random resized crop (bilinear, per-sample box), horizontal flip, colour jitter with
probability p (brightness → contrast → saturation → hue, in that fixed order, each clamped to
[0, 1]; hue rotates colours about the gray axis of the RGB cube), grayscale, optional Gaussian blur,
solarisation, then normalisation with the dataset mean/std. Output: (V·B, 3, S, S) channels_last.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastsigclr.data.plan import AugmentSpec, Col

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


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
    sy = p[:, Col.Y0, None] + o[None, :] * p[:, Col.H, None] - 0.5  # (B, S)
    ox = torch.where(p[:, Col.FLIP, None] > 0.5, o.flip(0)[None, :], o[None, :])
    sx = p[:, Col.X0, None] + ox * p[:, Col.W, None] - 0.5
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
    x = (x * p[:, Col.BRIGHT].view(view)).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2)).view(view)
    c = p[:, Col.CONTRAST].view(view)
    x = (c * x + (1 - c) * mean).clamp(0, 1)
    s = p[:, Col.SAT].view(view)
    x = (s * x + (1 - s) * _gray(x)[..., None]).clamp(0, 1)
    x = hue_rotation(x, p[:, Col.HUE]).clamp(0, 1)
    gray = _gray(x)[..., None].expand_as(x)
    return torch.where(p[:, Col.GRAY].view(view) > 0.5, gray, x)


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
    solar = p[:, Col.SOLAR].view(-1, 1, 1, 1) > 0.5
    x = torch.where(solar & (x >= 0.5), 1 - x, x)
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype)
    return (x - mean) / std


def augment_reference(
    images: torch.Tensor, params: torch.Tensor, spec: AugmentSpec, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, H, W, 3) images and (V, B, len(Col)) params → (V·B, 3, S, S) channels_last views."""
    views = []
    for p in params:
        x = color_ops(crop_resize(images, p, spec.size), p)
        if spec.uses_blur:
            x = gaussian_blur(x, p[:, Col.BLUR])
        views.append(finish(x, p, spec))
    out = torch.cat(views).permute(0, 3, 1, 2)  # NHWC memory viewed as NCHW: channels_last
    return out.to(dtype).contiguous(memory_format=torch.channels_last)
