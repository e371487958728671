"""Image folders written by the tests: a class-balanced subset of the shared CIFAR-10 JPEG pack as
train/<class>/ and val/<class>/ (the original JPEG bytes), and generated images in odd formats,
modes and sizes."""

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dir
from PIL import Image


def write_cifar_folder(root: Path, per_class: int = 8, val_per_class: int = 4, classes: int = 10) -> Path:
    """``root``/train/<class>/*.jpg and ``root``/val/<class>/*.jpg from the shared pack."""
    shared = shared_dir()
    if shared is None:
        pytest.skip("shared/ with the CIFAR-10 JPEG pack is not beside this checkout")
    pack = np.load(shared / "data" / "cifar10-jpeg" / "cifar10-jpeg-q75.npz")
    names = [str(c) for c in pack["classes"]]
    for split, stem, per in (("train", "train", per_class), ("val", "test", val_per_class)):
        jpeg, offsets, labels = pack[f"{stem}_jpeg"], pack[f"{stem}_offsets"], pack[f"{stem}_labels"]
        for c in range(classes):
            folder = root / split / names[c]
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == c)[:per]:
                (folder / f"{stem}_{i}.jpg").write_bytes(jpeg[offsets[i] : offsets[i + 1]].tobytes())
    return root


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))


def odd_images() -> dict[str, bytes]:
    """File name → bytes: every format and mode a folder may hold, of different sizes."""
    out = {}

    def save(name, im, fmt, **kw):
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()

    rgb = Image.fromarray(smooth(40, 70, 1))
    save("rgb.jpg", rgb, "JPEG", quality=90)
    save("gray.png", Image.fromarray(smooth(50, 36, 2)).convert("L"), "PNG")
    save("cmyk.jpg", Image.fromarray(smooth(33, 33, 3)).convert("CMYK"), "JPEG")
    save("palette.png", Image.fromarray(smooth(48, 64, 4)).convert("P"), "PNG")
    rgba = Image.fromarray(smooth(60, 45, 5)).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(45, dtype=np.uint8) * 5, (60, 1))))
    save("alpha.png", rgba, "PNG")
    save("photo.webp", Image.fromarray(smooth(64, 96, 6)), "WEBP", quality=90)
    save("bitmap.bmp", Image.fromarray(smooth(32, 80, 7)), "BMP")
    deep = (smooth(40, 40, 8)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    save("deep16.png", Image.fromarray(deep), "PNG")
    return out


def write_odd_folder(root: Path, classes: int = 2) -> Path:
    """``root``/train/<c>/ with every odd image (per class), and val/ with two each."""
    for c in range(classes):
        for split in ("train", "val"):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            items = list(odd_images().items())
            for name, payload in items if split == "train" else items[:2]:
                (folder / name).write_bytes(payload)
    return root
