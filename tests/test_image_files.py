"""One image file (``fastsigclr.data.imagefile``): Pillow's decompression-bomb guard, its warning
kept out of a run's output and its refusal given a fix."""

import subprocess
import sys

SCRIPT = """
import sys
from PIL import Image
Image.new("RGB", (40, 40)).save(sys.argv[1] + "/warned.png")  # past MAX_IMAGE_PIXELS: a warning
Image.new("RGB", (50, 50)).save(sys.argv[1] + "/refused.png")  # past twice that: an error
Image.MAX_IMAGE_PIXELS = 1000  # what 89 megapixels are to Pillow's default
from fastsigclr.data.samples import decode_file, image_size
print(decode_file(sys.argv[1] + "/warned.png").shape)
for read in (decode_file, image_size):
    try:
        read(sys.argv[1] + "/refused.png")
    except ValueError as err:
        print(err)
"""


def test_a_large_image_is_read_without_pillows_warning_and_a_bomb_is_refused_with_a_fix(tmp_path):
    """A 10,000² photo printed Pillow's DecompressionBombWarning and its source line into the run's
    output; a 15,000² one was listed as broken with "could be decompression bomb DOS attack." and no
    fix. A process of its own: pytest records warnings whatever the filters say."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no DecompressionBombWarning
    lines = done.stdout.splitlines()
    assert lines[0] == "(40, 40, 3)"
    refusal = "Image size (2500 pixels) exceeds limit of 2000 pixels, a guard against decompression bombs: "
    assert lines[1:] == [refusal + "downscale it"] * 2


STRIP = """
import resource, sys
import numpy as np
from fastsigclr.data.imagefile import resize_center
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
strip = np.zeros((1, 2_000_000, 3), np.uint8)
strip[:, 999_999:1_000_001] = 200  # the centre pixels (the rest stays black)
print(resize_center(strip, 256).mean(axis=(0, 1)).round(1).tolist())
"""


def test_a_thin_strip_is_stored_without_resizing_it_whole():
    """A 1,000,000 × 1 image (3 KB as a PNG) had its shorter side resized to the stored size before
    the centre crop: 6.9 GB at 37², a MemoryError traceback (or the process killed) in the middle of
    loading, where `data verify` had passed it. Its centre square is resized alone: under a
    2 GB address-space cap (the whole strip at 256 would be 393 GB) the stored 256² image is its
    centre's colour."""
    done = subprocess.run(
        [sys.executable, "-c", STRIP, str(2 << 30)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "[200.0, 200.0, 200.0]", done.stdout


def test_an_empty_file_is_named_empty(tmp_path):
    """A zero-byte image was reported as Pillow's "cannot identify image file": it is empty."""
    import pytest

    from fastsigclr.data.imagefile import image_header

    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"^an empty file \(0 bytes\)$"):
        image_header(tmp_path / "empty.png")
