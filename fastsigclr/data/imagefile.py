"""One image file: its header (size, and what only some decoders read) without decoding it, its
pixels as uint8 RGB whatever its mode, and the centre crop images are stored at. Pillow reads
them all; an error is a ValueError or OSError with the reason, which the splits list as a broken
file (``broken.report_broken``)."""

from __future__ import annotations

import functools
import os
import stat
import warnings
from pathlib import Path

import numpy as np

# Pillow refuses an image past 2 × its MAX_IMAGE_PIXELS (178,956,970 pixels) as a possible
# decompression bomb: a file of a few KB that decodes to gigabytes, per decoding thread. That guard
# stands (every file is untrusted); its warning between 89 and 179 megapixels is not repeated.


@functools.cache
def _pillow():
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    return Image


def _refusal(err: Exception) -> ValueError:
    """A ValueError for Pillow's refusal of a file, with the fix where there is one."""
    if isinstance(err, _pillow().DecompressionBombError):
        size = str(err).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
        return ValueError(f"{size}, a guard against decompression bombs: downscale it")
    return ValueError(str(err))


def decode_file(path: Path) -> np.ndarray:
    """The image at ``path`` as uint8 (H, W, 3) RGB; OSError/ValueError when it cannot be read."""
    from PIL import UnidentifiedImageError

    Image = _pillow()
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as err:
        raise _refusal(err) from err


def to_rgb(im) -> np.ndarray:
    """A Pillow image of any mode as uint8 (H, W, 3) RGB."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale: the high byte
        gray = (np.asarray(im, dtype=np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


# What DALI's image decoder reads, by Pillow's format names (MPO: a phone's JPEG with a preview).
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP", "PPM", "JPEG2000"})


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding it."""
    return image_header(path)[:2]


def image_header(path: Path) -> tuple[int, int, str]:
    """(height, width, note) from the file's header, without decoding it; the note names what
    only some decoders take as Pillow does: "format GIF" (one DALI does not decode) or
    "transparency" (which Pillow composites on white and DALI drops), else "". A name that is not
    a regular file (a link to nothing: FileNotFoundError; a pipe, which Pillow would wait on) is
    refused."""
    from PIL import UnidentifiedImageError

    Image = _pillow()
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file (a pipe, socket or device)")
    if info.st_size == 0:  # Pillow says "cannot identify image file"
        raise ValueError("an empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            w, h = im.size
            # what to_rgb composites on white (an RGB or L colour key it drops, as DALI does)
            alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            note = f"format {im.format}" if im.format not in DALI_FORMATS else "transparency" if alpha else ""
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as err:
        raise _refusal(err) from err
    return h, w, note


# Past this many times size² pixels (an aspect ratio past 8:1) the whole image is not resized
# before its centre is cropped: a 1,000,000 × 1 strip of 3 KB became 37 × 37,000,000 (6.9 GB) for a
# 37² crop, and would have taken 200 GB at 256². Its centre square is resized alone (Pillow's box),
# which differs from resize-then-crop by the rounding of the resized size: images within the ratio
# keep the result they always had.
WHOLE_RESIZE_LIMIT = 8


def _centre_square_only(h, w, size: int):
    """Whether ``resize_center`` resizes the centre square of an h × w image alone (its whole image
    resized would pass WHOLE_RESIZE_LIMIT times size²); with the shape it would resize to
    otherwise. Arrays of h and w give one answer per image."""
    scale = size / np.minimum(h, w)
    nh, nw = np.maximum(size, np.rint(h * scale)), np.maximum(size, np.rint(w * scale))
    return nh * nw > WHOLE_RESIZE_LIMIT * size * size, nh, nw


def resize_rule(sizes: np.ndarray, size: int | None) -> str:
    """What the keys of stored splits (the decoded-array cache, a .beton's record) add for images
    of these (h, w) ``sizes`` stored at ``size``²: "" where every image is resized whole as it
    always was, so caches written before the centre-square rule stay valid; else the rule, so a
    split with an image past WHOLE_RESIZE_LIMIT is stored again rather than mixing old and new
    pixels across a resume."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if size is None or not len(sizes):
        return ""
    centre, _, _ = _centre_square_only(sizes[:, 0], sizes[:, 1], size)
    return f" centre-square>{WHOLE_RESIZE_LIMIT}" if centre.any() else ""


def resize_center(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shorter side resized to ``size`` (bilinear, antialiased), then the centre ``size``² crop."""
    from PIL import Image

    h, w = rgb.shape[:2]
    centre, nh, nw = _centre_square_only(h, w, size)
    nh, nw = int(nh), int(nw)
    if centre:
        side = min(h, w)
        top, left = (h - side) / 2, (w - side) / 2
        box = (left, top, left + side, top + side)
        return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)
    im = Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
