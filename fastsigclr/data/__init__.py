"""Datasets (files, download, checks), the augmentation recipe and the loader backends."""

from fastsigclr.data.augment import AugmentSpec, ViewSpec
from fastsigclr.data.datasets import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    default_data_dir,
    load_split,
    prepare,
)
from fastsigclr.data.loaders import LOADERS

__all__ = [
    "DATASETS",
    "LOADERS",
    "AugmentSpec",
    "DatasetError",
    "DatasetInfo",
    "ViewSpec",
    "default_data_dir",
    "load_split",
    "prepare",
]
