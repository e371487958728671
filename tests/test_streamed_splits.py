"""Labelled splits too large to keep decoded (ImageNet's train split: 252 GB at 256²) stream for
the kNN monitor, eval and embed: the same images and labels, in the same order, as the array kept
for a small split, undecodable files reported once, and the same accuracy."""

import json

import numpy as np
import pytest
from folder_fixture import write_cifar_folder, write_odd_folder
from test_folder import folder_args

import fastsigclr.data.splits as splits_module
from fastsigclr.cli import main
from fastsigclr.data.info import DatasetError
from fastsigclr.data.samples import SampleIndex
from fastsigclr.recipe import load_data
from fastsigclr.runconfig import TrainConfig


def _data(folder, **options):
    cfg = TrainConfig(dataset="folder", data_dir=str(folder), progress=False, **options)
    return load_data(cfg.resolved(), announce=False)


def _joined(batches):
    images, labels = zip(*batches, strict=True)
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_streamed_split_is_the_kept_array_batch_by_batch(tmp_path, split):
    data_dir = write_odd_folder(tmp_path / "data")  # mixed sizes and modes: resized to 36²
    kept, streamed = (_data(data_dir, store_size=36, image_size=32) for _ in range(2))
    streamed.keep_bytes = 0
    assert kept.kept(split) and not streamed.kept(split)
    images, labels = _joined(streamed.batches(split, batch=3))
    expected = kept.arrays(split)
    assert images.shape == expected[0].shape and np.array_equal(images, expected[0])
    assert np.array_equal(labels, expected[1])
    assert split not in streamed._arrays  # nothing kept


def test_a_streamed_split_reports_an_undecodable_file_once(tmp_path, capsys):
    data_dir = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=2, classes=5)
    cut = sorted((data_dir / "val" / "bird").iterdir())[0]
    cut.write_bytes(cut.read_bytes()[:-300])  # its header reads; its decoding fails
    data = _data(data_dir, max_broken=0.2)
    data.keep_bytes = 0
    first = _joined(data.batches("test", batch=4))
    err = capsys.readouterr().err
    assert f"{cut}:" in err and "1 of 10 images cannot be decoded" in err
    assert len(first[0]) == 9
    second = _joined(data.batches("test", batch=4))
    assert "cannot be decoded" not in capsys.readouterr().err  # known now: left out unread
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    strict = _data(data_dir)
    strict.keep_bytes = 0
    with pytest.raises(DatasetError, match="more than --max-broken 0.01"):
        _joined(strict.batches("test", batch=4))


def test_knn_monitor_and_eval_give_the_same_accuracy_streamed(tmp_path, monkeypatch, capsys):
    data_dir = write_cifar_folder(tmp_path / "data")
    runs, streams, real = {}, [], SampleIndex.stream

    def stream(self, *args, **kw):
        streams.append(self.name)
        return real(self, *args, **kw)

    monkeypatch.setattr(SampleIndex, "stream", stream)
    for mode in ("kept", "streamed"):
        if mode == "streamed":
            monkeypatch.setattr(splits_module, "available_memory_bytes", lambda: 0)
        runs[mode] = tmp_path / mode
        assert main(folder_args(data_dir, runs[mode])) == 0
    knn = {mode: json.loads((out / "summary.json").read_text())["knn_acc"] for mode, out in runs.items()}
    assert knn["kept"] is not None and knn["kept"] == knn["streamed"]
    # The monitor reads the train split the gpu loader holds; the test split streamed.
    assert streams == ["folder test"]
    monkeypatch.undo()
    monkeypatch.setattr(SampleIndex, "stream", stream)
    accuracy = {}
    for mode in ("kept", "streamed"):
        if mode == "streamed":
            monkeypatch.setattr(splits_module, "available_memory_bytes", lambda: 0)
        assert main(["eval", "knn", "--run", str(runs["kept"]), "--knn-k", "5", "--no-progress"]) == 0
        accuracy[mode] = json.loads((runs["kept"] / "eval-knn.json").read_text())["accuracy"]
    assert accuracy["kept"] == accuracy["streamed"] == knn["kept"]
    assert streams == ["folder test", "folder train", "folder test"]


def test_torchrun_is_told_when_rank_0_will_stream_the_knn_splits(tmp_path):
    from fastsigclr.eval import knn_notice

    data_dir = write_cifar_folder(tmp_path / "data", per_class=2, val_per_class=1, classes=5)
    cfg = TrainConfig(dataset="folder", data_dir=str(data_dir), dist_timeout=900)
    kept, streamed = _data(data_dir), _data(data_dir)
    streamed.keep_bytes = 0
    assert knn_notice(kept, cfg, 2) is None and knn_notice(streamed, cfg, 1) is None
    said = knn_notice(streamed, cfg, 4)
    assert "decodes 15 images (train, test" in said and "other 3 ranks wait" in said
    assert "--dist-timeout 900 s: raise it" in said
