"""What a split of image files is stored at (``SampleIndex.resized``): images that share one size
no larger than --store-size² as they are, every other split at --store-size² (shorter side resized,
centre crop), and the two labelled splits of the kNN monitor at one resolution."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastsigclr.cli import main
from fastsigclr.data import DATASETS, ffcv_loader
from fastsigclr.data.base import LoaderSource
from fastsigclr.data.ffcv_loader import content_key
from fastsigclr.data.loaders import _store, loader_options
from fastsigclr.data.samples import decode_file
from fastsigclr.recipe import load_data
from fastsigclr.runconfig import TrainConfig


def _write(root: Path, split: str, sizes: list[tuple[int, int]], per_class: int = 3) -> None:
    """``per_class`` PNGs of each (w, h) in ``sizes`` in classes a and b of ``split``."""
    rng = np.random.default_rng(len(sizes) + per_class)
    for c in ("a", "b"):
        folder = root / split / c
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            w, h = sizes[k % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{k}.png")


def _data(folder: Path, store_size: int):
    cfg = TrainConfig(dataset="folder", data_dir=str(folder), progress=False, store_size=store_size)
    return load_data(cfg.resolved(), announce=False)


def test_images_of_one_size_larger_than_the_store_size_are_resized(tmp_path):
    """Photos of one camera were kept whole (4000×3000: 22 GB for 16 of them, the memory budget
    counted at full size) and embedded at full size beside a split resized to --store-size."""
    _write(tmp_path, "train", [(64, 48)])
    _write(tmp_path, "val", [(64, 48)])
    data = _data(tmp_path, store_size=18)
    for split in ("train", "test"):
        index = data.index(split)
        assert index.resized(18) == 18 and index.nbytes(18) == len(index) * 18 * 18 * 3
        images, _ = data.arrays(split)
        assert images.shape == (6, 18, 18, 3)
    assert _store(data.pretrain, 18) == 18
    # FFCV: a .beton written at another store size is not taken for this one (the key held None).
    assert content_key(data.pretrain, 18, jpeg=False) != content_key(data.pretrain, 24, jpeg=False)


def test_images_of_one_size_that_fits_are_kept_as_they_are(tmp_path):
    _write(tmp_path, "train", [(32, 32)])
    _write(tmp_path, "val", [(32, 32)])
    data = _data(tmp_path, store_size=37)
    images, _ = data.arrays("train")
    assert data.pretrain.resized(37) is None and _store(data.pretrain, 37) is None
    assert images.shape == (6, 32, 32, 3)
    assert np.array_equal(images[0], decode_file(data.pretrain.files[0]))  # the pixels, untouched


def test_the_labelled_splits_are_stored_at_one_size(tmp_path):
    """train/ of one size that fits, val/ of mixed sizes: both at --store-size², as kNN embeds
    the bank and the queries alike (each kept, and each streamed)."""
    _write(tmp_path, "train", [(16, 16)])
    _write(tmp_path, "val", [(16, 16), (30, 20)])
    for keep_bytes in (None, 0):
        data = _data(tmp_path, store_size=18)
        data.keep_bytes = keep_bytes
        shapes = {
            np.concatenate([b for b, _ in data.batches(split, batch=4)]).shape for split in ("train", "test")
        }
        assert shapes == {(6, 18, 18, 3)}, keep_bytes
    # Both of one size: kept as they are.
    _write(tmp_path / "same", "train", [(16, 16)])
    _write(tmp_path / "same", "val", [(16, 16)])
    data = _data(tmp_path / "same", store_size=18)
    assert data.arrays("train")[0].shape == data.arrays("test")[0].shape == (6, 16, 16, 3)


def test_write_ffcv_writes_the_beton_a_run_reads(tmp_path, capsys):
    """`data write-ffcv` stores as a run does (its val/ of mixed sizes makes both splits resized)
    and says at which --store-size a run finds it: its default, 256, wrote a file that a run at
    another --image-size never read."""
    pytest.importorskip("ffcv")
    _write(tmp_path, "train", [(16, 16)], per_class=8)
    _write(tmp_path, "val", [(16, 16), (30, 20)])
    argv = ["data", "write-ffcv", "--dataset", "folder", "--data-dir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--store-size", "18"]) == 0
    said = capsys.readouterr().out
    want = "its images are stored at 18²: train --loader ffcv reads it with --store-size 18 (the default"
    assert f"{want} at --image-size 16)" in said, said
    beton = tmp_path / "ffcv" / "folder-train-18px.beton"
    written = beton.stat().st_mtime_ns
    cfg = TrainConfig(dataset="folder", data_dir=str(tmp_path), image_size=16, progress=False).resolved()
    data = load_data(cfg, announce=False)
    src = LoaderSource(
        DATASETS["folder"], tmp_path, data.pretrain, None, None, False, store_size=cfg.store_size
    )
    assert loader_options("ffcv", src)["beton"] == beton and beton.stat().st_mtime_ns == written
    assert main(argv) == 0  # the default: 16² would fit 256² as they are, but val/ is mixed
    assert "stored at 256²" in capsys.readouterr().out


def test_images_held_as_one_array_are_as_they_are_and_a_resized_cache_has_its_own_name(tmp_path):
    """An array (CIFAR's) is what in_memory returns whatever the size: resized said 27 where the
    gpu loader fed 32² and FFCV wrote 27². A file split's decoded cache at a storage size is its
    own file, so the one at the files' own size (which `data verify` checks) is not replaced."""
    from fastsigclr.data.samples import SampleIndex, file_index

    array = SampleIndex.from_array(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4))
    assert array.resized(27) is None and array.stored_hw(27) == (32, 32)
    _write(tmp_path, "train", [(32, 32)])
    files = sorted((tmp_path / "train").rglob("*.png"))
    index = file_index("x", files, np.arange(len(files)) % 2)
    index.cache_dir, index.cache_name = tmp_path / "cache", "train"
    assert index.in_memory(18, progress=False).array().shape == (6, 18, 18, 3)
    assert index.in_memory(None, progress=False).array().shape == (6, 32, 32, 3)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == ["train-18px-images.npy", "train-18px-meta.json", "train-images.npy", "train-meta.json"]


def test_the_centre_square_rule_keys_only_the_splits_it_changes(tmp_path, monkeypatch):
    """Images past 8:1 are stored by their centre square alone (imagefile.resize_center), other
    pixels than the whole-image resize older versions stored. A split holding one gets another
    cache key and .beton record, so a resumed run never mixes the two; every other split keeps
    its key, so caches and .betons written before stay valid."""
    from fastsigclr.data import cache
    from fastsigclr.data.imagefile import _centre_square_only, resize_center, resize_rule
    from fastsigclr.data.samples import file_index

    rng = np.random.default_rng(0)
    for h, w, size in [*rng.integers(1, 400, (300, 3)).tolist(), (16, 128, 16), (16, 129, 16), (7, 3, 5)]:
        scale = size / min(h, w)  # the whole-image rule the centre square leaves as it was
        shape = max(size, round(h * scale)), max(size, round(w * scale))
        centre, nh, nw = _centre_square_only(h, w, size)
        assert (int(nh), int(nw)) == shape and bool(centre) == (shape[0] * shape[1] > 8 * size * size)
    assert not _centre_square_only(16, 128, 16)[0] and _centre_square_only(16, 129, 16)[0]
    strip = np.full((10, 200, 3), 9, np.uint8)
    strip[:, 95:105] = 200
    assert (resize_center(strip, 10) == 200).all()  # its centre square, not the whole strip's middle
    assert resize_rule(np.array([[32, 32], [10, 80]]), 16) == resize_rule(np.zeros((0, 2)), 16) == ""
    assert resize_rule(np.array([[32, 32], [10, 81]]), 16) == " centre-square>8"
    assert resize_rule(np.array([[32, 32], [10, 810]]), None) == ""

    _write(tmp_path, "train", [(24, 24)], per_class=2)
    Image.fromarray(strip).save(tmp_path / "train" / "a" / "strip.png")
    files = sorted((tmp_path / "train").rglob("*.png"))
    index = file_index("x", files, np.zeros(len(files), np.int64))
    index.cache_dir = tmp_path / "cache"
    old_key = cache.fingerprint(index.files, 10)  # what a version before the rule keyed it by
    stale = np.zeros((len(files), 10, 10, 3), np.uint8)
    cache.save(index.cache_dir, "images-10px", old_key, stale, np.arange(len(files)))
    decoded = index.in_memory(10, progress=False).array()
    assert (decoded[files.index(tmp_path / "train" / "a" / "strip.png")] == 200).all()  # decoded again
    same = file_index("x", [f for f in files if f.name != "strip.png"], np.zeros(len(files) - 1))
    assert cache.fingerprint(same.files, 10, resize_rule(same.sizes, 10)) == cache.fingerprint(same.files, 10)
    keys = content_key(index, 10, False), content_key(same, 10, False)
    monkeypatch.setattr(ffcv_loader, "resize_rule", lambda sizes, size: "")  # as before the rule
    assert content_key(index, 10, False) != keys[0] and content_key(same, 10, False) == keys[1]
