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
from helpers import write_refusal
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
        assert main(["eval", "knn", "--run", str(runs["kept"]), "--no-progress"]) == 0  # the run's --knn-k 5
        result = json.loads((runs["kept"] / "eval-knn.json").read_text())
        assert result["k"] == 5
        accuracy[mode] = result["accuracy"]
    assert accuracy["kept"] == accuracy["streamed"] == knn["kept"]
    assert streams == ["folder test", "folder train", "folder test"]


class _Pools(torch.nn.Module):
    """Features that depend on each image alone, exactly: 4×4 average pools of its channels."""

    out_dim = 48

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def _monitor(data, ctx) -> float:
    return monitor_accuracy(_Pools(), data, ctx, data.info.num_classes, k=5, temperature=0.1)


def _monitor_worker(rank: int, world: int, tmp: str, keep_bytes: int | None, options: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        data = _data(Path(tmp) / "data", **options)
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


def _ranks(tmp_path, keep_bytes, **options) -> list[dict]:
    mp.spawn(_monitor_worker, args=(2, str(tmp_path), keep_bytes, options), nprocs=2)
    (tmp_path / "init").unlink(missing_ok=True)
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]


def _cut(data_dir, names=("bird", "cat"), first=1):
    """Cut the first ``first`` files of each class in ``names`` of val/ a few bytes into their scan:
    their headers read, their decoding fails."""
    cut = [path for name in names for path in sorted((data_dir / "val" / name).iterdir())[:first]]
    for path in cut:
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"\xff\xda") + 40])  # SOS, the scan's start
    return cut


@pytest.mark.parametrize("keep_bytes", [None, 0], ids=["kept", "streamed"])
def test_the_ranks_share_the_knn_monitor(tmp_path, keep_bytes):
    """Under torchrun every rank embeds its share of both splits (kept after the first pass when the
    whole would be, else streamed at each), and they vote together: every rank's accuracy is the one
    process's. A cut file in each rank's share of the test split is left out within --max-broken;
    two together are over a limit that one alone is under, and then every rank stops."""
    data_dir = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=2, classes=5)
    cut = _cut(data_dir)  # ids 4 and 6 of the 10 test images: one in each rank's share
    alone = _data(data_dir, max_broken=0.2)
    alone.keep_bytes = keep_bytes
    want = _monitor(alone, Context())
    assert [alone.index("test").source(i) for i in (4, 6)] == [str(path) for path in cut]
    results = _ranks(tmp_path, keep_bytes, max_broken=0.15)
    assert all("2 of 10 images (20.0%) cannot be decoded" in r.get("error", "") for r in results)
    for rank, result in enumerate(_ranks(tmp_path, keep_bytes, max_broken=0.2)):
        assert result["accuracy"] == [want, want], (rank, result, want)
        assert result["left_out"] == [4, 6]
        shares = [f"{split} {rank}" for split in ("test", "train")]
        assert result["kept"] == (shares if keep_bytes is None else [])


@pytest.mark.parametrize("case", ["one test image", "a share all broken"])
def test_a_rank_whose_share_is_empty_still_votes(tmp_path, case):
    """One test image on 2 ranks leaves rank 0 none; cut files filling rank 1's share leave it
    none on the second pass (known broken, not read again). Its features are (0, F), it takes
    the ranks' collectives like the others, and both get one process's accuracy."""
    data_dir = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=2, classes=5)
    if case == "one test image":
        options = {"limit_test": 1}
    else:
        _cut(data_dir, ("bird", "cat", "deer"), first=2)  # ids 4-9: rank 1's share is [5, 10)
        options = {"max_broken": 0.6}
    alone = _data(data_dir, **options)
    alone.keep_bytes = 0
    want = _monitor(alone, Context())
    for rank, result in enumerate(_ranks(tmp_path, 0, **options)):
        assert result["accuracy"] == [want, want], (rank, result, want)


def test_a_share_of_one_size_is_stored_at_the_splits_size(tmp_path):
    """A rank's share of a mixed-size split may hold one size alone: it is still resized and cropped
    to --store-size, as the whole split is (it was kept at its own size)."""
    from PIL import Image

    for split in ("train", "val"):
        for name, size in (("a", (40, 40)), ("b", (50, 30))):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", size, (60 * i, 20, 200 - 40 * i)).save(folder / f"{i}.png")
    whole = _data(tmp_path / "data", store_size=24, image_size=20)
    want = whole.arrays("test")
    for keep_bytes in (None, 0):
        shares = _data(tmp_path / "data", store_size=24, image_size=20)
        shares.keep_bytes = keep_bytes
        for _ in range(2):  # the first pass decodes (and keeps), the second reads what was kept
            got = _joined(b for rank in range(2) for b in shares.part_batches("test", rank, 2, batch=3))
            assert got[0].shape == (8, 24, 24, 3) and np.array_equal(got[0], want[0]), keep_bytes
            assert np.array_equal(got[1], want[1])


def _identity_worker(rank: int, world: int, tmp: str) -> None:
    from types import SimpleNamespace

    from fastsigclr.recipe import check_rank_data

    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        data = _data(Path(tmp) / f"node{rank}")
        setup = SimpleNamespace(data=data, data_identity=data.pretrain.identity())
        write_refusal(
            Path(tmp) / f"rank{rank}.json",
            lambda: check_rank_data(setup, Context(rank=rank, world_size=world)),
        )
    finally:
        dist.destroy_process_group()


def test_ranks_whose_nodes_hold_other_test_images_do_not_start(tmp_path):
    """Each rank embeds its share of the kNN monitor's splits, so a node without val/ (or with other
    images there) would take other collectives or embed the wrong share: every rank refuses at the
    start, with one line, as for other pre-training images."""
    import shutil

    write_cifar_folder(tmp_path / "node0", per_class=2, val_per_class=2, classes=5)
    shutil.copytree(tmp_path / "node0", tmp_path / "node1")
    shutil.rmtree(tmp_path / "node1" / "val")
    mp.spawn(_identity_worker, args=(2, str(tmp_path)), nprocs=2)
    said = {json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)}
    assert len(said) == 1 and (message := said.pop()) is not None
    assert message.startswith("the 2 ranks read different test images (the kNN monitor's), so none starts: ")
    assert "10 images (digest" in message and "on rank 0, none on rank 1" in message


def _stopped_worker(rank: int, world: int, tmp: str) -> None:
    from fastsigclr.distributed import all_sum
    from fastsigclr.eval import MonitorStopped

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        data, ctx, asked = _data(Path(tmp) / "data"), Context(rank=rank, world_size=world), []

        def stop() -> bool:  # a collective, as the trainer's: rank 1 alone signalled, after "train"
            asked.append(1)
            return all_sum(ctx, torch.tensor([float(rank == 1 and len(asked) == 2)])).item() > 0

        try:
            result = _monitor_stopped(data, ctx, stop)
        except MonitorStopped:
            result = f"stopped at ask {len(asked)}"
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _monitor_stopped(data, ctx, stop) -> float:
    return monitor_accuracy(_Pools(), data, ctx, data.info.num_classes, k=5, temperature=0.1, stop=stop)


def test_a_preemption_stops_the_knn_monitor(tmp_path, monkeypatch):
    """The trainer's kNN monitor gives way to a preemption signal (its checkpoint comes first): in
    one process ``stop`` is asked before each batch; under torchrun before each split alone, a
    collective every rank takes at the same point (their shares may differ by a batch), so a signal
    that reached one rank stops both at the same split."""
    import fastsigclr.eval as evaluation

    data_dir = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=2, classes=5)
    data = _data(data_dir)
    monkeypatch.setattr(evaluation, "FEATURE_BATCH", 4)  # the 20 train images in 5 batches
    asked = []

    def third() -> bool:
        asked.append(1)
        return len(asked) == 3

    with pytest.raises(evaluation.MonitorStopped):
        _monitor_stopped(data, Context(), third)
    assert len(asked) == 3
    assert _monitor_stopped(data, Context(), lambda: False) == _monitor(data, Context())
    mp.spawn(_stopped_worker, args=(2, str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert results == ["stopped at ask 2"] * 2, results
