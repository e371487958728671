"""Data problems with clear answers: corrupt files named by `data verify` (and warned about at
training), class-balanced --limit-train/--limit-test, eval pointed at data that moved, a .beton
that cannot be written, bf16 on the CPU, the TensorBoard notice. On small generated datasets."""

import math
import pickle
import shutil
import sys

import numpy as np
import pytest
from cifar_fixture import write_cifar
from tiny_fixture import small_info, write_tiny

from fastsigclr.cli import main
from fastsigclr.data import DATASETS
from fastsigclr.data.base import LoaderSource
from fastsigclr.data.datasets import load_split
from fastsigclr.data.loaders import loader_options
from fastsigclr.data.subset import balanced_indices
from fastsigclr.recipe import load_data
from fastsigclr.runconfig import TrainConfig
from fastsigclr.runlog import RunLog, read_metrics


@pytest.fixture
def small_cifar(tmp_path, monkeypatch):
    """(data dir, info): 40 training and 20 test images of 10 classes, registered as cifar10 with
    the md5 of the files written as the known sums."""
    data_dir = tmp_path / "data"
    info = write_cifar(data_dir)
    monkeypatch.setitem(DATASETS, "cifar10", info)
    return data_dir, info


def train_args(data_dir, out, *extra) -> list[str]:
    return [
        *(
            f"train --data-dir {data_dir} --device cpu --width 8 --proj-dims 32,16 --batch-size 20 "
            f"--epochs 1 --knn-k 5 --log-every 1 --no-progress --no-tensorboard --out {out}"
        ).split(),
        *extra,
    ]


def flip_pixel_byte(path) -> None:
    """Change one byte of a CIFAR batch inside its pixel array, so that it still loads."""
    raw = bytearray(path.read_bytes())
    with open(path, "rb") as f:
        pixels = pickle.load(f, encoding="bytes")[b"data"].tobytes()
    # Protocol 2 stores the array's bytes as a latin-1 string in UTF-8: find them in that form
    # and flip the lowest bit of an ASCII byte (the encoding stays valid).
    start = raw.index(pixels[:64].decode("latin-1").encode("utf-8"))
    at = next(i for i in range(start + 64, len(raw)) if raw[i] < 0x80)
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_verify_names_the_file_with_one_flipped_byte(small_cifar, capsys):
    data_dir, info = small_cifar
    verify = ["data", "verify", "--data-dir", str(data_dir)]
    assert main(verify) == 0
    assert "the 7 official md5s match; layout and counts OK: 40 train, 20 test" in capsys.readouterr().out
    folder = data_dir / info.folder
    flip_pixel_byte(folder / "data_batch_3")
    assert len(load_split(info, folder, "train", progress=False)[0]) == 40  # still loads: only md5 knows
    assert main(verify) == 1  # usable data, not the official bytes
    err = capsys.readouterr().err
    assert "data_batch_3 has md5" in err and "data_batch_1" not in err and "test_batch" not in err
    assert f"expected {dict(info.file_md5)['data_batch_3']}" in err
    assert "Each loads as a complete batch" in err and "download again only if you need" in err


def test_loading_files_that_differ_warns_once(small_cifar, capsys):
    """What training reads goes through load_data: it warns, once per file version, and goes on."""
    data_dir, info = small_cifar
    flip_pixel_byte(data_dir / info.folder / "data_batch_5")
    cfg = TrainConfig(data_dir=str(data_dir), progress=False)
    assert len(load_data(cfg).train) == 40
    err = capsys.readouterr().err
    assert (
        err.count("warning: data_batch_5 in") == 1 and "differs from the official cifar10 file (md5)" in err
    )
    assert "data_batch_4" not in err
    load_data(cfg)
    assert capsys.readouterr().err == ""


def test_balanced_indices():
    labels = np.repeat(np.arange(10), 50)  # sorted by class: the first 128 are classes 0, 1, 2
    for n in (1, 9, 10, 128, 499):
        keep = balanced_indices(labels, n)
        counts = np.bincount(labels[keep], minlength=10)
        assert len(keep) == n and counts.max() - counts.min() <= 1, (n, counts)
        assert np.all(np.diff(keep) > 0), "file order kept"
        assert set(keep) <= set(balanced_indices(labels, n + 1)), "nested"
    assert balanced_indices(labels, 10_000).tolist() == list(range(500))


def test_limit_train_and_test_are_class_balanced_on_cifar(small_cifar):
    data_dir, _ = small_cifar
    cfg = TrainConfig(data_dir=str(data_dir), limit_train=13, limit_test=10, progress=False)
    data = load_data(cfg)
    (train_x, train_y), (test_x, test_y) = data.arrays("train"), data.arrays("test")
    assert data.pretrain is data.train
    assert len(train_x) == 13 and np.bincount(train_y, minlength=10).tolist() == [2, 2, 2] + [1] * 7
    assert len(test_x) == 10 and np.bincount(test_y, minlength=10).tolist() == [1] * 10


def test_limit_train_on_tiny_imagenet_is_balanced_for_every_loader(tmp_path, monkeypatch):
    """Tiny-ImageNet lists its images class by class: the first N were all class 0."""
    monkeypatch.setitem(DATASETS, "tinyimagenet", small_info())
    write_tiny(tmp_path)
    cfg = TrainConfig(dataset="tinyimagenet", data_dir=str(tmp_path), limit_train=7, limit_test=4)
    data = load_data(cfg)
    train, test_y = data.train, data.test.labels
    counts = np.bincount(train.labels, minlength=3)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 7
    assert np.bincount(test_y, minlength=3).max() - np.bincount(test_y, minlength=3).min() <= 1
    # DALI reads the JPEG files themselves: the same images as the gpu loader decodes, in order.
    wnids = sorted({p.parent.parent.name for p in train.files})
    assert [wnids.index(p.parent.parent.name) for p in train.files] == train.labels.tolist()
    decoded = train.in_memory(progress=False)
    assert decoded.files == train.files and np.array_equal(decoded.array()[3], train.decode(3))


def test_batch_larger_than_the_dataset(small_cifar, tmp_path, capsys):
    data_dir, _ = small_cifar
    with pytest.raises(SystemExit) as exc:
        main(train_args(data_dir, tmp_path / "run", "--batch-size", "1000"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--batch-size 1000 is larger than the 40 training images: pass --batch-size 40 or less" in err


def test_bf16_on_the_cpu_trains_and_eval_finds_moved_data(small_cifar, tmp_path, capsys):
    """--precision bf16 --device cpu used to fail in the sigmoid loss under autocast; its run is
    then evaluated after its data moved, which needs eval's --data-dir."""
    data_dir, _ = small_cifar
    run = tmp_path / "run"
    # bf16 convolutions are ~6x slower than fp32 on a CPU without bf16 units: one step, few images.
    assert (
        main(train_args(data_dir, run, "--precision", "bf16", "--limit-train", "20", "--limit-test", "10"))
        == 0
    )
    steps = [r for r in read_metrics(run) if r["kind"] == "step"]
    assert len(steps) == 1 and all(math.isfinite(r["loss"]) for r in steps)
    moved = tmp_path / "moved"
    shutil.move(data_dir, moved)
    with pytest.raises(SystemExit):
        main(["eval", "--run", str(run), "knn", "--no-progress"])
    err = capsys.readouterr().err
    assert f"cifar10 is not in {data_dir} (where the run read it): pass --data-dir DIR" in err
    assert "download" not in err
    assert (
        main(["eval", "--run", str(run), "knn", "--knn-k", "5", "--no-progress", "--data-dir", str(moved)])
        == 0
    )
    assert "knn accuracy" in capsys.readouterr().out


def test_unwritable_ffcv_folder_says_where_and_how(small_cifar, tmp_path, capsys):
    pytest.importorskip("ffcv")
    data_dir, info = small_cifar
    (data_dir / "ffcv").write_text("a file where the .beton folder would go")  # root ignores chmod
    args = ["data", "write-ffcv", "--data-dir", str(data_dir), "--limit", "20", "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"cannot write the FFCV dataset {data_dir / 'ffcv' / 'cifar10-train-balanced20.beton'}" in err
    assert "pass --ffcv-dir DIR, a writable folder" in err
    elsewhere = tmp_path / "betons"
    assert main([*args, "--ffcv-dir", str(elsewhere)]) == 0
    beton = elsewhere / "cifar10-train-balanced20.beton"
    assert beton.is_file()
    # What `train --loader ffcv --ffcv-dir` asks for: the same file, found and not rewritten.
    train = load_data(TrainConfig(data_dir=str(data_dir), limit_train=20, progress=False)).pretrain
    src = LoaderSource(info, data_dir, train, 20, ffcv_dir=elsewhere, progress=False)
    assert loader_options("ffcv", src) == {"beton": beton}


def test_missing_tensorboard_is_said_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    RunLog(tmp_path, tensorboard=True).close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TensorBoard logging is off" in err
    assert "pip install 'fastsigclr[tensorboard]'" in err
    RunLog(tmp_path, tensorboard=False).close()
    RunLog(tmp_path, tensorboard=True, enabled=False).close()  # ranks other than 0
    assert capsys.readouterr().err == ""


def test_write_ffcv_leaves_out_what_a_run_would_and_names_its_own_options(tmp_path, capsys):
    """`data write-ffcv` refused a folder with one unreadable file that `train --loader ffcv` skips
    (its limit was 0, and the error named --max-broken, which it did not take), and a --limit past
    the images was told to change --limit-train."""
    pytest.importorskip("ffcv")
    from folder_fixture import write_cifar_folder

    data_dir = write_cifar_folder(tmp_path / "data", per_class=6, val_per_class=1, classes=5)
    (data_dir / "train" / "cat" / "junk.jpg").write_bytes(b"not an image")  # 1 of 31
    args = ["data", "write-ffcv", "--dataset", "folder", "--data-dir", str(data_dir), "--no-progress"]
    with pytest.raises(SystemExit):
        main(args)
    assert "more than --max-broken 0.01" in capsys.readouterr().err
    assert main([*args, "--max-broken", "0.05"]) == 0
    assert "folder train: skipped that image (at most --max-broken 0.05)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--max-broken", "0.05", "--limit", "100"])
    assert "--limit 100 is more than the 30 train images of folder: pass --limit 30 or less" in (
        capsys.readouterr().err
    )


def test_a_folder_run_whose_images_moved_is_told_to_pass_data_dir(tmp_path, capsys):
    """A folder dataset is --data-dir itself: the message named an empty folder and archive
    ("the folder that now holds / (or )")."""
    from folder_fixture import write_cifar_folder
    from test_folder import folder_args

    data_dir = write_cifar_folder(tmp_path / "data", per_class=2, val_per_class=1, classes=2)
    run = tmp_path / "run"
    assert main(folder_args(data_dir, run, "--batch-size", "4", "--knn-k", "1")) == 0
    moved = tmp_path / "moved"
    shutil.move(data_dir, moved)
    for command in (
        ["eval", "--run", str(run), "knn"],
        ["embed", "--run", str(run), "--out", str(tmp_path / "e.npy")],
    ):
        with pytest.raises(SystemExit):
            main([*command, "--no-progress"])
        err = capsys.readouterr().err
        assert (
            f"{data_dir} (where the run read it) is not a folder any more: pass --data-dir DIR, the " in err
        )
        assert "/ (or )" not in err
    assert (
        main(["eval", "--run", str(run), "knn", "--knn-k", "1", "--no-progress", "--data-dir", str(moved)])
        == 0
    )


def test_eval_on_data_smaller_than_the_runs_limit_says_it_is_not_the_runs_data(tmp_path, capsys):
    """The run's --limit-train (or --limit-test) past the images of eval's or embed's --data-dir:
    the error said to pass --limit-train, which eval has no option for. The limit's error is told
    by its type (LimitError, naming its option), not by its message's first word."""
    from folder_fixture import write_cifar_folder
    from test_folder import folder_args

    data_dir = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=2, classes=2)
    run = tmp_path / "run"
    limits = ("--limit-train", "8", "--limit-test", "4")
    assert main(folder_args(data_dir, run, "--batch-size", "4", "--knn-k", "1", *limits)) == 0
    fewer_train = write_cifar_folder(tmp_path / "other", per_class=2, val_per_class=2, classes=2)
    fewer_test = write_cifar_folder(tmp_path / "third", per_class=4, val_per_class=1, classes=2)
    for other, problem in (
        (fewer_train, "--limit-train 8 is more than the 4 train images"),
        (fewer_test, "--limit-test 4 is more than the 2 test images"),
    ):
        for command in (
            ["eval", "--run", str(run), "knn"],
            ["embed", "--run", str(run), "--out", str(tmp_path / "e.npy")],
        ):
            with pytest.raises(SystemExit):
                main([*command, "--no-progress", "--data-dir", str(other)])
            last = capsys.readouterr().err.strip().splitlines()[-1]
            assert last == (
                f"fastsigclr: error: the run's {problem} of folder in {other}: this is not the data the run "
                f"read; pass --data-dir DIR, the folder that holds it"
            ), (command, last)


def test_a_limit_past_the_data_is_told_by_its_type_not_its_words(tmp_path, monkeypatch):
    """runmodel recognised the run's limit past the data by ``str(err).startswith("--limit-")``:
    another ConfigError worded so was taken for it, and a reworded limit error would not be."""
    from folder_fixture import write_cifar_folder

    from fastsigclr import runmodel
    from fastsigclr.config import ConfigError, FastSigCLRError
    from fastsigclr.data.splits import LimitError, open_splits
    from fastsigclr.runconfig import write_config

    data_dir = write_cifar_folder(tmp_path / "data", per_class=2, val_per_class=1, classes=2)
    with pytest.raises(LimitError) as raised:
        open_splits(DATASETS["folder"], data_dir, limit_test=3, announce=False)
    assert (raised.value.option, raised.value.limit, raised.value.available) == ("--limit-test", 3, 2)
    assert pickle.loads(pickle.dumps(raised.value)).problem == raised.value.problem  # a worker's, sent back
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, TrainConfig(dataset="folder", data_dir=str(data_dir), out=str(run)).resolved(), {})
    monkeypatch.setattr(runmodel, "trained_checkpoint", lambda path: {"model": {}})
    monkeypatch.setattr(runmodel, "check_fits", lambda *args: None)  # no model is read here
    other = ConfigError("--limit-train is not a thing here: a made-up message")
    monkeypatch.setattr(runmodel, "load_data", lambda *a, **kw: (_ for _ in ()).throw(other))
    with pytest.raises(ConfigError) as passed:
        runmodel.load_run_model(run, "cpu")
    assert passed.value is other  # not taken for the run's limit
    reworded = LimitError("--limit-train", 9, 4, "train", "folder")
    reworded.args = ("the limit is too large",)  # what it says may change; its fields stay
    monkeypatch.setattr(runmodel, "load_data", lambda *a, **kw: (_ for _ in ()).throw(reworded))
    with pytest.raises(FastSigCLRError) as told:
        runmodel.load_run_model(run, "cpu")
    assert str(told.value).startswith(
        "the run's --limit-train 9 is more than the 4 train images of folder in "
    )
    assert str(told.value).endswith(
        "this is not the data the run read; pass --data-dir DIR, the folder that holds it"
    )
