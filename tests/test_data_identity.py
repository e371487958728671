"""SampleIndex.identity, what a resumed run checks it trains on: the same for the same images
wherever the dataset lies, different when an image is added, removed, renamed or relabelled."""

import os
from pathlib import Path

import numpy as np

from fastsigclr.data.samples import SampleIndex


def index(files: list[str], labels: list[int], root: str = "/data/set") -> SampleIndex:
    paths = [Path(os.fsdecode(root.encode() + b"/" + f.encode("utf-8", "surrogateescape"))) for f in files]
    sizes = np.full((len(files), 2), 32)
    return SampleIndex("train", np.array(labels), sizes, lambda i: None, files=paths)


FILES = ["train/cat/1.jpg", "train/cat/2.jpg", "train/dog/1.jpg"]


def test_identity_follows_the_images_not_where_they_lie():
    base = index(FILES, [0, 0, 1]).identity()
    assert base["images"] == 3 and len(base["digest"]) == 16
    assert index(FILES, [0, 0, 1], root="/mnt/other copy/deeper").identity() == base  # moved
    assert index(FILES[:2], [0, 0]).identity()["images"] == 2  # removed
    renamed = ["train/cat/1.jpg", "train/cat/3.jpg", "train/dog/1.jpg"]
    assert index(renamed, [0, 0, 1]).identity() != base
    relabelled = ["train/cat/1.jpg", "train/dog/2.jpg", "train/dog/1.jpg"]  # moved to another class
    assert index(relabelled, [0, 1, 1]).identity() != base
    assert index(FILES, [0, 1, 1]).identity() != base  # the labels alone


def test_identity_of_names_that_are_not_utf8_and_of_arrays():
    """A Latin-1 name (its bytes are not UTF-8) made `train` raise UnicodeEncodeError."""
    latin = os.fsdecode(b"train/caf\xe9/1.jpg")
    one = index([latin, "train/tea/1.jpg"], [0, 1]).identity()
    assert one == index([latin, "train/tea/1.jpg"], [0, 1], root="/elsewhere").identity()
    assert one != index(["train/cafe/1.jpg", "train/tea/1.jpg"], [0, 1]).identity()
    images = np.zeros((4, 8, 8, 3), np.uint8)
    arrays = SampleIndex.from_array(images, np.array([0, 1, 0, 1])).identity()
    assert arrays["images"] == 4
    assert SampleIndex.from_array(images, np.array([0, 1, 1, 1])).identity() != arrays
