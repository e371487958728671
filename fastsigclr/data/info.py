"""What describes a dataset (``DatasetInfo``: where it comes from, its counts, statistics and its
reader) and the error every reader raises. The readers import this module, and ``datasets``
imports the readers: the flow is one-way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastsigclr.config import FastSigCLRError

# The per-channel statistics commonly quoted for ImageNet's train split (not measured here); the
# default of every photo dataset without its own.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FFCV_SUBFOLDER = "ffcv"  # where `data write-ffcv` keeps a dataset's FFCV file, in its --data-dir


class DatasetError(FastSigCLRError):
    """Missing, corrupt or unexpected dataset files; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset: its official source (empty for folders the user provides), counts, image size,
    statistics, and ``reader``, the class that reads its layout (``reader(info, folder)``, see
    ``samples.Reader``)."""

    name: str
    reader: Any
    url: str = ""
    md5: str = ""
    archive: str = ""
    folder: str = ""  # the extracted folder under --data-dir; "": --data-dir is the dataset
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    label_key: str = ""
    num_classes: int = 0  # 0: as many as the folder has
    train_count: int = 0  # 0: not fixed (a folder)
    test_count: int = 0
    pretrain_count: int = 0  # unlabeled images for pre-training (STL-10); 0: the train split
    image_size: int = 224  # the crop size its preset trains at (--image-size)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # (file, md5) of the official extracted files, as torchvision's CIFAR10/CIFAR100 list them
    # (Tiny-ImageNet publishes none); tests substitute the sums of the files they write.
    file_md5: tuple[tuple[str, str], ...] = ()
    classes: tuple[str, ...] = ()  # the class folders a folder preset keeps (ImageNet-100); (): all
    downloadable: bool = True  # False: the user provides the files (ImageNet, own folders)


def default_store_size(image_size: int) -> int:
    """--store-size when unset: 8/7 of --image-size (256 for 224-pixel views)."""
    return round(image_size * 8 / 7)
