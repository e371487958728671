"""The STL-10 and ImageNet presets on small files written in their official layouts: STL-10's
binary archive (column-major images, 1-based labels, unlabeled split for pre-training) and
ImageNet's train/<wnid>/, val/<wnid>/ folders."""

import dataclasses
import io
import json
import tarfile

import numpy as np
import pytest
from folder_fixture import odd_images

from fastsigclr.cli import main
from fastsigclr.data import DATASETS
from fastsigclr.data.datasets import md5sum, prepare
from fastsigclr.data.info import DatasetError
from fastsigclr.data.stl10 import Stl10Reader
from fastsigclr.runconfig import PRESETS, TrainConfig

COUNTS = {"unlabeled": 16, "train": 10, "test": 10}


def stl10_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """HWC uint8 images and 0-based labels of each split."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in COUNTS.items():
        out[f"{split}_X"] = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        if split != "unlabeled":
            out[f"{split}_y"] = np.arange(n) % 10
    return out


def write_stl10_archive(path, arrays) -> None:
    """stl10_binary/*.bin as the official archive holds them: each image channel by channel,
    each channel column-major; labels 1..10 as bytes."""
    files = {}
    for key, value in arrays.items():
        if key.endswith("_X"):
            files[f"{key}.bin"] = np.ascontiguousarray(value.transpose(0, 3, 2, 1)).tobytes()
        else:
            files[f"{key}.bin"] = (value + 1).astype(np.uint8).tobytes()
    files["class_names.txt"] = "\n".join(f"class{i}" for i in range(10)).encode() + b"\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"stl10_binary/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


@pytest.fixture
def small_stl10(tmp_path, monkeypatch):
    arrays = stl10_arrays()
    archive = tmp_path / "data" / "stl10_binary.tar.gz"
    archive.parent.mkdir()
    write_stl10_archive(archive, arrays)
    info = dataclasses.replace(
        DATASETS["stl10"],
        md5=md5sum(archive),
        pretrain_count=COUNTS["unlabeled"],
        train_count=COUNTS["train"],
        test_count=COUNTS["test"],
    )
    monkeypatch.setitem(DATASETS, "stl10", info)
    return tmp_path / "data", info, arrays


def test_stl10_reads_its_binary_layout(small_stl10):
    data_dir, info, arrays = small_stl10
    folder = prepare(info, data_dir, download_ok=False, progress=False)  # verified and extracted
    reader = Stl10Reader(info, folder)
    pretrain, train, test = (reader.index(s) for s in ("pretrain", "train", "test"))
    assert (len(pretrain), len(train), len(test)) == (16, 10, 10)
    assert not pretrain.labelled and train.labelled and train.labels.tolist() == list(np.arange(10) % 10)
    assert np.array_equal(pretrain.decode(3), arrays["unlabeled_X"][3])  # the column-major transpose
    assert np.array_equal(test.in_memory(progress=False).array(), arrays["test_X"])
    assert reader.classes == tuple(f"class{i}" for i in range(10))
    (folder / "train_X.bin").write_bytes((folder / "train_X.bin").read_bytes()[:-5])
    with pytest.raises(DatasetError, match="truncated or not STL-10"):
        reader.index("train")


def test_stl10_pretrains_on_unlabeled_and_monitors_on_train_and_test(small_stl10, tmp_path):
    data_dir, _, _ = small_stl10
    out = tmp_path / "run"
    args = (
        f"train --dataset stl10 --data-dir {data_dir} --no-download --device cpu --width 8 --proj-dims 32,16 "
        f"--batch-size 8 --epochs 1 --knn-k 3 --image-size 32 --no-progress --no-tensorboard --out {out}"
    ).split()
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == 16 and summary["test_images"] == 10 and summary["knn_acc"] is not None


def test_presets_choose_their_recipe():
    imagenet = TrainConfig(dataset="imagenet", data_dir="x", out="y").resolved()
    assert (imagenet.arch, imagenet.image_size, imagenet.batch_size) == ("resnet50", 224, 4096)
    assert TrainConfig(dataset="stl10", out="y").resolved().image_size == 96
    assert TrainConfig(dataset="imagenet100", out="y").resolved().store_size == 256
    assert set(PRESETS) == set(DATASETS)


def test_imagenet_folder_layout_trains(tmp_path, capsys):
    rgb = odd_images()["rgb.jpg"]
    for wnid in ("n01440764", "n01443537"):
        for split, n in (("train", 4), ("val", 2)):
            (tmp_path / "in" / split / wnid).mkdir(parents=True)
            for k in range(n):
                (tmp_path / "in" / split / wnid / f"{wnid}_{k}.JPEG").write_bytes(rgb)
    out = tmp_path / "run"
    args = (
        f"train --dataset imagenet --data-dir {tmp_path / 'in'} --device cpu --arch resnet18 --width 8 "
        f"--proj-dims 32,16 --batch-size 4 --epochs 1 --knn-k 3 --image-size 32 --no-progress "
        f"--no-tensorboard --out {out}"
    ).split()
    assert main(args) == 0
    assert "train: 8 images in 2 classes (n01440764 4, n01443537 4)" in capsys.readouterr().out


def test_stl10s_unlabeled_pretraining_refuses_methods_with_labels_at_once(small_stl10, tmp_path, capsys):
    """STL-10 pre-trains on its unlabeled split: supcon there raised in the loss at the first step
    (labels of -1) and left a started run; a sweep naming supcon trained the other settings first.
    Both stop before anything trains, naming the fix."""
    data_dir, _, _ = small_stl10
    common = f"--dataset stl10 --data-dir {data_dir} --no-download --device cpu --width 8".split()
    common += ["--batch-size", "8"]
    with pytest.raises(SystemExit):
        main(["train", *common, "--method", "supcon", "--out", str(tmp_path / "run"), "--no-progress"])
    assert "--method supcon contrasts images by their class labels, and the 16 stl10 images" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main(["sweep", *common, "--settings", "sigclr,supcon,tcl", "--seeds", "0", "--out", f"{tmp_path}/s"])
    err = capsys.readouterr().err
    assert (
        "the settings supcon, tcl contrast by class labels and the stl10 images they would pre-train on "
        "have none: pass --settings sigclr" in err
    ), err
    assert not (tmp_path / "s" / "sweep.json").exists()
