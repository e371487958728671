"""A Tiny-ImageNet-200 folder in the official layout, written by the tests: a few classes of
generated 64×64 JPEGs (one of them grayscale, as some real ones are)."""

import dataclasses
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from fastsigclr.data.datasets import DATASETS, DatasetInfo

WNIDS = ("n01443537", "n01629819", "n01641577")


def _jpeg(rng: np.random.Generator, gray: bool = False) -> bytes:
    # Smooth colour fields compress like photographs; pure noise would not.
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((64, 64), Image.BILINEAR)
    if gray:
        img = img.convert("L")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def tiny_files(per_class: int = 8, val_per_class: int = 2, seed: int = 0) -> dict[str, bytes]:
    """Relative path → bytes of every file of the small dataset."""
    rng = np.random.default_rng(seed)
    files = {"tiny-imagenet-200/wnids.txt": ("\n".join(WNIDS) + "\n").encode()}
    files["tiny-imagenet-200/words.txt"] = "".join(f"{w}\tclass {w}\n" for w in WNIDS).encode()
    for c, wnid in enumerate(WNIDS):
        for k in range(per_class):
            files[f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{k}.JPEG"] = _jpeg(
                rng, gray=c == 1 and k == 0
            )
        files[f"tiny-imagenet-200/train/{wnid}/{wnid}_boxes.txt"] = b""
    notes = []
    for k in range(val_per_class * len(WNIDS)):
        name = f"val_{k}.JPEG"
        files[f"tiny-imagenet-200/val/images/{name}"] = _jpeg(rng)
        notes.append(f"{name}\t{WNIDS[k % len(WNIDS)]}\t0\t0\t63\t63")
    files["tiny-imagenet-200/val/val_annotations.txt"] = ("\n".join(notes) + "\n").encode()
    return files


def small_info(per_class: int = 8, val_per_class: int = 2, md5: str | None = None) -> DatasetInfo:
    """The official entry with this fixture's counts (the layout rules are the same)."""
    return dataclasses.replace(
        DATASETS["tinyimagenet"],
        num_classes=len(WNIDS),
        train_count=per_class * len(WNIDS),
        test_count=val_per_class * len(WNIDS),
        md5=md5 or DATASETS["tinyimagenet"].md5,
    )


def write_tiny(data_dir: Path, **kw) -> Path:
    for rel, payload in tiny_files(**kw).items():
        path = Path(data_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return Path(data_dir) / "tiny-imagenet-200"


def write_tiny_zip(path: Path, **kw) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, payload in tiny_files(**kw).items():
            zf.writestr(rel, payload)
