"""Datasets (files, download, checks), the augmentation recipe and the loader backends."""

from fastsigclr.data.datasets import (
    DATASETS,
    DatasetError,
    DatasetInfo,
    default_data_dir,
    load_split,
    prepare,
)
from fastsigclr.data.loaders import LOADERS
from fastsigclr.data.plan import AugmentSpec, ViewSpec

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
