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
