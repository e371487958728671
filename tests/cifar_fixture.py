"""A small CIFAR-10 folder in the official python layout, written by the tests, with the
DatasetInfo that describes it (its counts, and the md5 of each file it wrote as the known sums)."""

import dataclasses
import hashlib
import pickle
from pathlib import Path

import numpy as np

from fastsigclr.data.datasets import DATASETS, DatasetInfo


def write_cifar(data_dir: Path, per_class: int = 4, test_per_class: int = 2, seed: int = 0) -> DatasetInfo:
    """Images of 10 classes, each file's labels sorted by class (so the first images of the
    training split are all class 0, as Tiny-ImageNet's are)."""
    base = DATASETS["cifar10"]
    folder = Path(data_dir) / base.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {}
    for names, per in ((base.train_files, per_class), (base.test_files, test_per_class)):
        labels = np.repeat(np.arange(base.num_classes), per)
        for name, part in zip(names, np.array_split(labels, len(names)), strict=True):
            record = {
                b"batch_label": name.encode(),
                b"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8),
                b"labels": [int(x) for x in part],
                b"filenames": [f"{name}_{i}.png".encode() for i in range(len(part))],
            }
            files[name] = pickle.dumps(record, protocol=2)
    files["batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return dataclasses.replace(
        base,
        train_count=per_class * base.num_classes,
        test_count=test_per_class * base.num_classes,
        file_md5=tuple((name, hashlib.md5(payload).hexdigest()) for name, payload in files.items()),
    )
