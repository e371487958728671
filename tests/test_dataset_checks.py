"""The readers' checks, as the user meets them: `data verify` and training run one set of checks
on CIFAR batches (image counts, one label per image, integer labels in range, the array's shape),
so verify never calls usable what training refuses; a --data-dir that is the dataset's own folder
is named before anything is downloaded; each failure names the file and the fix; a missing
class-name file (never read by training) is not called corrupt data. On small generated data."""

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from cifar_fixture import write_cifar
from run_fixture import fails_with
from tiny_fixture import WNIDS, small_info, write_tiny

from fastsigclr.cli import main
from fastsigclr.data import DATASETS
from fastsigclr.data.cifar import read_batch
from fastsigclr.data.datasets import DatasetError, load_split
from fastsigclr.recipe import load_data
from fastsigclr.runconfig import TrainConfig


def train_args(name: str, data_dir: Path, out: Path) -> list[str]:
    return (
        f"train --dataset {name} --data-dir {data_dir} --device cpu --width 4 --proj-dims 16,8 "
        f"--epochs 1 --batch-size 16 --no-progress --no-tensorboard --out {out}"
    ).split()


def rewrite(path: Path, change) -> None:
    """Load a batch, let ``change`` edit its dict (bytes keys), and write it back as the official
    files are pickled (protocol 2)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    change(batch)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def _drop_row(batch, key):
    batch[b"data"], batch[key] = batch[b"data"][:-1], batch[key][:-1]


def _set_label(value):
    def change(batch, key):
        batch[key][1] = value

    return change


# (what is changed, what both commands must say of the file; {n}: its rows, {k}: the classes)
DAMAGE = {
    "one row fewer": (_drop_row, "holds {m} images, expected {n}"),
    "one label fewer": (lambda b, key: b.__setitem__(key, b[key][:-1]), "holds {n} images and {m} labels"),
    "label out of range": (_set_label(10**3), "holds 1 label outside 0..{k}"),
    "float label": (_set_label(1.7), "holds a label that is not an integer ('{key}'): 1.7 at row 1"),
    "narrow rows": (
        lambda b, key: b.__setitem__(b"data", b[b"data"][:, :1024]),
        "holds 'data' of dtype uint8 and shape ({n}, 1024), expected uint8 (N, 3072): not the {name} "
        "python layout",
    ),
}


@pytest.mark.parametrize("name,file", [("cifar100", "test"), ("cifar10", "data_batch_2")])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_verify_refuses_what_training_refuses_with_one_line(
    tmp_path, monkeypatch, capsys, name, file, damage
):
    """`data verify` called such batches "usable data, so keep it" (exit 1) while training stopped
    on them (labels outside 0..99 with neither file nor fix), and float labels were truncated."""
    data_dir = tmp_path / "data"
    info = write_cifar(data_dir, per_class=1, test_per_class=1, name=name)
    monkeypatch.setitem(DATASETS, name, info)
    folder = data_dir / info.folder
    change, said = DAMAGE[damage]
    rows = len(read_batch(info, folder / file)[1])
    rewrite(folder / file, lambda batch: change(batch, info.label_key.encode()))
    said = said.format(n=rows, m=rows - 1, k=info.num_classes - 1, key=info.label_key, name=name)
    fix = (
        f"delete {folder} and download it again (`fastsigclr data download --dataset {name} "
        f"--data-dir {data_dir}`)"
    )
    train = fails_with(train_args(name, data_dir, tmp_path / "run"), capsys)
    assert train.startswith(f"fastsigclr: error: {folder / file} {said}") and train.endswith(f"; {fix}"), (
        train
    )
    clause = train[len(f"fastsigclr: error: {folder / file} ") : -len(f"; {fix}")]
    verify = fails_with(["data", "verify", "--dataset", name, "--data-dir", str(data_dir)], capsys)
    assert f"; {file} {clause}" in verify and verify.endswith(f"The files are corrupt: {fix}"), verify
    assert "keep it" not in verify


def test_a_split_of_several_files_names_the_short_one(tmp_path):
    info = write_cifar(tmp_path, per_class=1, test_per_class=1)
    folder = tmp_path / info.folder
    rewrite(folder / "data_batch_4", lambda batch: _drop_row(batch, b"labels"))
    with pytest.raises(
        DatasetError, match=r"data_batch_4 holds 1 images, expected 2 \(9 of the expected 10 train"
    ):
        load_split(info, folder, "train", progress=False)


def test_whole_float_labels_are_kept(tmp_path):
    """A rebuilt copy may store labels as floats: 3.0 is label 3 (1.7 is refused above)."""
    info = write_cifar(tmp_path, per_class=1, test_per_class=1)
    path = tmp_path / info.folder / "test_batch"
    labels = read_batch(info, path)[1]
    rewrite(path, lambda batch: batch.__setitem__(b"labels", np.asarray(batch[b"labels"], dtype=np.float32)))
    assert (
        read_batch(info, path)[1].tolist() == labels.tolist() and read_batch(info, path)[1].dtype == np.int64
    )


@pytest.mark.parametrize("name", ["cifar100", "cifar10", "tinyimagenet"])
def test_data_dir_that_is_the_dataset_folder_names_its_parent(tmp_path, monkeypatch, capsys, name):
    """--data-dir D/cifar-100-python: train downloaded into D/cifar-100-python/cifar-100-python and
    verify advised `data download --data-dir D/cifar-100-python`, a second, nested copy."""
    data_dir = tmp_path / "data"
    if name == "tinyimagenet":
        info = small_info()
        write_tiny(data_dir)
    else:
        info = write_cifar(data_dir, per_class=1, test_per_class=1, name=name)
    monkeypatch.setitem(DATASETS, name, info)

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded into the dataset's own folder")

    monkeypatch.setattr("fastsigclr.data.datasets.download", no_download)
    folder = data_dir / info.folder
    before = sorted(folder.rglob("*"))
    expected = (
        f"fastsigclr: error: --data-dir {folder} is the dataset's own folder: pass its parent, "
        f"--data-dir {data_dir}"
    )
    assert fails_with(["data", "verify", "--dataset", name, "--data-dir", str(folder)], capsys) == expected
    assert fails_with(train_args(name, folder, tmp_path / "run"), capsys) == expected
    assert fails_with(["data", "download", "--dataset", name, "--data-dir", str(folder)], capsys) == expected
    assert sorted(folder.rglob("*")) == before and not (tmp_path / "run").exists()
    renamed = folder.rename(data_dir / "mine")  # its parent holds no such folder: rename it first
    said = fails_with(["data", "verify", "--dataset", name, "--data-dir", str(renamed)], capsys)
    assert f"own folder: rename it {info.folder} (what the reader looks for) and pass its parent" in said


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path), small_info()


def test_tiny_imagenet_names_extra_files_and_the_fix(tiny):
    """An extra file was reported as "holds 9 JPEGs, expected 8: the dataset is incomplete"."""
    folder, info = tiny
    images = folder / "train" / WNIDS[0] / "images"
    shutil.copy(images / f"{WNIDS[0]}_1.JPEG", images / f"{WNIDS[0]}_1 (copy).JPEG")
    fix = f"delete {folder} and download it again (`fastsigclr data download --dataset tinyimagenet"
    with pytest.raises(DatasetError) as err:
        load_split(info, folder, "train", progress=False)
    assert (
        f"{images} holds 9 JPEGs, 1 more than the official 8: {WNIDS[0]}_1 (copy).JPEG is not an official "
        f"file; remove it (or {fix}" in str(err.value)
    ), err.value
    assert "incomplete" not in str(err.value)
    for k in range(4):
        shutil.copy(images / f"{WNIDS[0]}_1.JPEG", images / f"{WNIDS[0]}_extra{k}.JPEG")
    with pytest.raises(
        DatasetError, match=r"holds 13 JPEGs, 5 more than the official 8: .* and 2 more are not"
    ):
        load_split(info, folder, "train", progress=False)
    for extra in images.glob("*_extra*"):
        extra.unlink()
    (images / f"{WNIDS[0]}_1 (copy).JPEG").unlink()
    (images / f"{WNIDS[0]}_4.JPEG").unlink()
    with pytest.raises(DatasetError) as err:
        load_split(info, folder, "train", progress=False)
    assert f"holds 7 JPEGs, expected 8 (missing: {WNIDS[0]}_4.JPEG): the dataset is incomplete; {fix}" in str(
        err.value
    )


def test_tiny_imagenet_missing_val_image_says_the_fix(tiny):
    folder, info = tiny
    (folder / "val" / "images" / "val_5.JPEG").unlink()
    with pytest.raises(DatasetError) as err:
        load_split(info, folder, "test", progress=False)
    assert (
        f"val_annotations.txt:6: {folder / 'val' / 'images' / 'val_5.JPEG'} does not exist: the dataset "
        in str(err.value)
    )
    assert f"is incomplete; delete {folder} and download it again (`fastsigclr data download" in str(
        err.value
    )


@pytest.mark.parametrize("name,meta", [("cifar100", "meta"), ("cifar10", "batches.meta")])
@pytest.mark.parametrize("how", ["missing", "unreadable"])
def test_a_missing_class_name_file_is_not_called_corrupt(tmp_path, monkeypatch, capsys, name, meta, how):
    """Training never reads CIFAR's class-name file: verify said "The files are corrupt: delete
    ... and download it again" without it, while training ran."""
    data_dir = tmp_path / "data"
    info = write_cifar(data_dir, per_class=1, test_per_class=1, name=name)
    monkeypatch.setitem(DATASETS, name, info)
    folder = data_dir / info.folder
    if how == "missing":
        (folder / meta).unlink()
    else:
        (folder / meta).write_bytes(b"not a pickle")
    assert main(["data", "verify", "--dataset", name, "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"fastsigclr: data verify: {folder} is not the official {name}: {meta} ")
    assert f"{meta} only names the classes, which training does not read" in err and "keep it" in err
    assert "corrupt" not in err and "has md5" not in err and err.count("\n") == 1, err
    assert (
        len(load_data(TrainConfig(dataset=name, data_dir=str(data_dir), progress=False)).train)
        == info.train_count
    )
