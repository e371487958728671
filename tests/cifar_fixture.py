"""A small CIFAR-10 (or CIFAR-100) folder in the official python layout, written by the tests,
with the DatasetInfo that describes it (its counts, and the md5 of each file it wrote as the known
sums)."""

import dataclasses
import hashlib
import pickle
from pathlib import Path

import numpy as np

from fastsigclr.data.datasets import DATASETS, DatasetInfo


def write_cifar(
    data_dir: Path, per_class: int = 4, test_per_class: int = 2, seed: int = 0, name: str = "cifar10"
) -> DatasetInfo:
    """Images of every class of ``name`` (cifar10 or cifar100), each file's labels sorted by class
    (so the first images of the training split are all class 0, as Tiny-ImageNet's are)."""
    base = DATASETS[name]
    folder = Path(data_dir) / base.folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = {}
    for names, per in ((base.train_files, per_class), (base.test_files, test_per_class)):
        labels = np.repeat(np.arange(base.num_classes), per)
        for file, part in zip(names, np.array_split(labels, len(names)), strict=True):
            record = {
                b"batch_label": file.encode(),
                b"data": rng.integers(0, 256, (len(part), 3072), dtype=np.uint8),
                base.label_key.encode(): [int(x) for x in part],
                b"filenames": [f"{file}_{i}.png".encode() for i in range(len(part))],
            }
            if name == "cifar100":
                record[b"coarse_labels"] = [int(x) // 5 for x in part]
            files[file] = pickle.dumps(record, protocol=2)
    if name == "cifar100":
        files["meta"] = pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]}, protocol=2)
    else:
        files["batches.meta"] = pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2)
    for file, payload in files.items():
        (folder / file).write_bytes(payload)
    return dataclasses.replace(
        base,
        train_count=per_class * base.num_classes,
        test_count=test_per_class * base.num_classes,
        file_md5=tuple((file, hashlib.md5(payload).hexdigest()) for file, payload in files.items()),
    )
