"""The readers' checks, as the user meets them: `data verify` and training run one set of checks
on CIFAR batches (image counts, one label per image, integer labels in range, the array's shape),
so verify never calls usable what training refuses; a --data-dir that is the dataset's own folder
is named before anything is downloaded; each failure names the file and the fix; a missing
class-name file (never read by training) is not called corrupt data. On small generated data."""

import os
import pickle
import shutil
import subprocess
import sys
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


def _key_not_utf8(batch: bytes) -> bytes:
    record = pickle.loads(batch, encoding="bytes")
    record[b"\xcfdata"] = record.pop(b"data")  # a flipped byte in an official key (bytes there)
    return pickle.dumps(record, protocol=2)


# (a damaged or crafted batch file, what the one line says of it) for `train` and `data verify`
CRAFTED = {
    "key not UTF-8": (_key_not_utf8, "UnicodeDecodeError"),
    "a 128 TiB ndarray": (
        lambda _: b"\x80\x02cnumpy\nndarray\n\x8a\x06\x00\x00\x00\x00\x00\x10\x85R.",
        "an array declares shape (17592186044416,) of 140737488355328 bytes, more than the file's 28 bytes",
    ),
    "ndarray without a shape": (lambda _: b"cnumpy\nndarray\n)R.", "TypeError"),
    "deep nesting": (lambda _: b"\x80\x02" + b"]" * 10**6 + b"a" * (10**6 - 1) + b".", "RecursionError"),
}


@pytest.mark.parametrize("craft", list(CRAFTED))
def test_a_damaged_or_crafted_batch_is_one_line(tmp_path, monkeypatch, capsys, craft):
    """A flipped byte in a key (UnicodeDecodeError), a crafted ndarray of 128 TiB (MemoryError, or
    swap) or of no shape (TypeError) crashed `data verify` and training with a traceback."""
    data_dir = tmp_path / "data"
    info = write_cifar(data_dir, per_class=1, test_per_class=1)
    monkeypatch.setitem(DATASETS, "cifar10", info)
    path = data_dir / info.folder / "data_batch_1"
    make, said = CRAFTED[craft]
    path.write_bytes(make(path.read_bytes()))
    fix = f"delete {path.parent} and download it again"
    train = fails_with(train_args("cifar10", data_dir, tmp_path / "run"), capsys)
    assert train.startswith(f"fastsigclr: error: {path} is truncated or corrupt (") and said in train, train
    assert fix in train
    verify = fails_with(["data", "verify", "--dataset", "cifar10", "--data-dir", str(data_dir)], capsys)
    assert "data_batch_1 does not load (" in verify and said in verify and fix in verify, verify


def _array_state(shape, dtype, data) -> bytes:
    """A protocol-2 pickle of an array whose state (shape, dtype, data) is any we choose."""

    class Crafted:
        def __reduce__(self):
            return (
                np._core.multiarray._reconstruct,
                (np.ndarray, (0,), b"b"),
                (1, shape, dtype, False, data),
            )

    return pickle.dumps({b"data": Crafted()}, protocol=2)


@pytest.mark.parametrize(
    "payload,said",
    [
        (_array_state((5,), np.dtype("O"), [1, 2]), "does not fill shape (5,) of object"),
        (_array_state((2,), np.dtype("O"), b"\x01" * 16), "does not fill shape (2,) of object"),
        (_array_state((2**33,), np.dtype("O"), [1]), "an array declares shape (8589934592,)"),
        (
            pickle.dumps(np.zeros(2, np.uint8), protocol=2).replace(b"J\xff\xff\xff\xffK\x00", b"K\x00"),
            "dtype",
        ),
    ],
)
def test_a_crafted_array_state_is_refused_before_numpy_reads_it(tmp_path, payload, said):
    """numpy trusts a pickled array's state: an object array given a short list or bytes, or a dtype
    whose state is damaged, crashed the interpreter (segmentation fault); run in a child process."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    code = (
        "import sys; from pathlib import Path; from fastsigclr.data.cifar import BatchError, load_pickle\n"
        "try: load_pickle(Path(sys.argv[1]))\nexcept BatchError as err: print(err)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and f"{path} is truncated or corrupt (UnpicklingError: " in proc.stdout, proc
    assert said in proc.stdout, proc.stdout


def test_plain_arrays_still_load(tmp_path):
    """The checks refuse only what numpy cannot be trusted with: plain arrays of each kind load."""
    from fastsigclr.data import plain_pickle

    arrays = (np.arange(6, dtype=">i4"), np.array([b"ab", b"c"]), np.array(["x"]), np.array([1, None]))
    for array in (*arrays, np.array([None] * 1000, dtype=object)):  # 1 KB of pickle, 8 KB of pointers
        for protocol in (2, 4):
            path = tmp_path / "a"
            path.write_bytes(pickle.dumps({b"a": array, b"d": array.dtype}, protocol=protocol))
            with open(path, "rb") as f:
                loaded = plain_pickle.load(f)
            assert type(loaded[b"a"]) is np.ndarray and loaded[b"a"].tolist() == array.tolist()
            assert loaded[b"d"] == array.dtype


def _as_python2(raw: bytes) -> bytes:
    """A protocol-3 pickle with each str as Python 2's cPickle writes a str (a byte string, read
    back as bytes under encoding="bytes"): the form of the official CIFAR python batches, whose
    dtype state holds the byte order as b"|" and whose keys, names and dtype codes are bytes."""
    import pickletools

    ops = list(pickletools.genops(raw))
    out = bytearray()
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(raw)
        if op.name == "BINUNICODE":  # SHORT_BINBYTES: what SHORT_BINSTRING reads as here
            out += b"C" + bytes([len(arg.encode("latin-1"))]) + arg.encode("latin-1")
        else:
            out += raw[pos:end]
    return bytes(out)


def test_a_batch_pickled_by_python_2_loads(tmp_path):
    """The official batches come from Python 2: their dtype's byte order is a byte string, which
    the dtype-state check refused as damaged (every official download would have been called corrupt)."""
    info = DATASETS["cifar10"]
    images = np.random.default_rng(0).integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8)
    batch = {"batch_label": "testing batch 1 of 1", "labels": [1, 2, 3, 9], "data": images}
    batch["filenames"] = [f"{i}.png" for i in range(4)]
    path = tmp_path / "test_batch"
    path.write_bytes(_as_python2(pickle.dumps(batch, protocol=3)))
    assert set(pickle.loads(path.read_bytes(), encoding="bytes")) == {
        b"batch_label",
        b"labels",
        b"data",
        b"filenames",
    }
    got, labels = read_batch(info, path)
    assert got.shape == (4, 32, 32, 3) and labels.tolist() == [1, 2, 3, 9]
    assert np.array_equal(got, images.reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))


@pytest.mark.parametrize("kind", ["a folder", "a FIFO (named pipe)", "a symbolic link to a folder"])
def test_an_archive_path_that_is_not_a_file_is_one_line(tmp_path, monkeypatch, capsys, kind):
    """An archive path that was a folder gave an IsADirectoryError traceback, and a FIFO hung
    `data download` for ever (md5sum read it); neither is read, nor downloaded over."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / DATASETS["cifar10"].archive
    if kind == "a FIFO (named pipe)":
        os.mkfifo(archive)
    elif kind == "a folder":
        archive.mkdir()
    else:
        (tmp_path / "elsewhere").mkdir()
        archive.symlink_to(tmp_path / "elsewhere")

    def never(*args, **kwargs):
        raise AssertionError("read or downloaded the archive path")

    monkeypatch.setattr("fastsigclr.data.datasets.download", never)
    monkeypatch.setattr("fastsigclr.data.datasets.md5sum", never)  # without the fix: fail, not hang
    expected = (
        f"fastsigclr: error: {archive} is {kind}, not the cifar10 archive; remove it to download it again"
    )
    args = ["data", "download", "--dataset", "cifar10", "--data-dir", str(data_dir), "--no-progress"]
    assert fails_with(args, capsys) == expected
    assert fails_with(train_args("cifar10", data_dir, tmp_path / "run"), capsys) == expected
    assert sorted(p.name for p in data_dir.iterdir()) == [archive.name]


def test_stl10_class_names_that_are_not_text_are_one_line(tmp_path, capsys):
    """A class_names.txt that is not UTF-8 gave a UnicodeDecodeError traceback."""
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    for name in ("train_X", "train_y", "test_X", "test_y", "unlabeled_X"):
        (folder / f"{name}.bin").write_bytes(b"\0" * 1000)
    (folder / "class_names.txt").write_bytes(b"airplane\nbird\xcf\x28\n")
    said = fails_with(["data", "verify", "--dataset", "stl10", "--data-dir", str(tmp_path)], capsys)
    assert said == (
        f"fastsigclr: error: {folder / 'class_names.txt'} is not UTF-8 text (invalid continuation byte at "
        f"byte 13): not the STL-10 class names; delete {folder} to fetch it again"
    )
