"""Labelled splits too large to keep decoded (ImageNet's train split: 252 GB at 256²) stream for
the kNN monitor, eval and embed: the same images and labels, in the same order, as the array kept
for a small split, undecodable files reported once, and the same accuracy."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from folder_fixture import write_cifar_folder, write_odd_folder
from test_folder import folder_args

import fastsigclr.data.splits as splits_module
from fastsigclr.cli import main
from fastsigclr.data.info import DatasetError
from fastsigclr.data.samples import SampleIndex
from fastsigclr.distributed import Context
from fastsigclr.eval import monitor_accuracy
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


def _backbone() -> torch.nn.Module:
    """Features that depend on each image alone, exactly: 4×4 average pools of its channels."""
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())


def _monitor(data, ctx) -> float:
    return monitor_accuracy(_backbone(), data, ctx, data.info.num_classes, k=5, temperature=0.1)


def _monitor_worker(rank: int, world: int, tmp: str, keep_bytes: int | None, max_broken: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        data = _data(Path(tmp) / "data", max_broken=max_broken)
        data.keep_bytes = keep_bytes
        ctx = Context(rank=rank, world_size=world)
        try:
            passes = [_monitor(data, ctx) for _ in range(2)]
            kept = sorted(f"{key[0]} {key[1]}" for key in data._arrays if isinstance(key, tuple))
            result = {"accuracy": passes, "left_out": sorted(data.left_out("test")), "kept": kept}
        except DatasetError as err:
            result = {"error": str(err)}
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("keep_bytes", [None, 0], ids=["kept", "streamed"])
def test_the_ranks_share_the_knn_monitor(tmp_path, keep_bytes):
    """Under torchrun every rank embeds its share of both splits (kept after the first pass when the
    whole would be, else streamed at each), and they vote together: every rank's accuracy is the one
    process's. A cut file in each rank's share of the test split is left out within --max-broken;
    two together are over a limit that one alone is under, and then every rank stops."""
    data_dir = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=2, classes=5)
    cut = [sorted((data_dir / "val" / name).iterdir())[0] for name in ("bird", "cat")]
    for path in cut:  # ids 4 and 6 of the 10 test images: one in each rank's share
        path.write_bytes(path.read_bytes()[:-300])
    alone = _data(data_dir, max_broken=0.2)
    alone.keep_bytes = keep_bytes
    want = _monitor(alone, Context())
    assert [alone.index("test").source(i) for i in (4, 6)] == [str(path) for path in cut]
    for max_broken in (0.2, 0.15):
        mp.spawn(_monitor_worker, args=(2, str(tmp_path), keep_bytes, max_broken), nprocs=2)
        results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
        (tmp_path / "init").unlink(missing_ok=True)
        if max_broken == 0.15:
            assert all("2 of 10 images (20.0%) cannot be decoded" in r.get("error", "") for r in results)
            continue
        for rank, result in enumerate(results):
            assert result["accuracy"] == [want, want], (rank, result, want)
            assert result["left_out"] == [4, 6]
            shares = [f"{split} {rank}" for split in ("test", "train")]
            assert result["kept"] == (shares if keep_bytes is None else [])
