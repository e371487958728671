"""JPEGs whose header reads but whose data is cut, met by DALI mid-epoch: listed, counted against
--max-broken with those the header pass left out, and their places in a batch taken by another
image of that batch, so batches keep their size; a resumed epoch makes the same batches; with two
ranks the limit is checked on their sum and stops both."""

import json

import numpy as np
import pytest
import torch
from folder_fixture import odd_images, write_cifar_folder
from test_distributed import torchrun
from test_folder import folder_args, summary

from fastsigclr import checkpoint
from fastsigclr.cli import main
from fastsigclr.config import FastSigCLRError
from fastsigclr.data import dali_loader
from fastsigclr.data.dali_loader import DaliLoader
from fastsigclr.data.info import DatasetError
from fastsigclr.data.plan import AugmentSpec
from fastsigclr.data.samples import decode_file, file_index, image_size

pytest.importorskip("nvidia.dali")

BATCH = 4


def _index(folder, n: int, garbage: int = 0):
    """n readable JPEGs (label = sample id: the batches show who is in), then ``garbage`` files
    whose header does not read (left out of the index, in ``broken``)."""
    payload = odd_images()["rgb.jpg"]
    files = [folder / f"{i:02d}.jpg" for i in range(n + garbage)]
    for i, path in enumerate(files):
        path.write_bytes(payload if i < n else b"not an image")
    index = file_index("cut", files, np.arange(n + garbage))
    assert len(index) == n and len(index.broken) == garbage
    return index


def _cut(index, *ids: int) -> None:
    for i in ids:
        _cut_file(index.files[i])


def _loader(index, max_broken: float = 0.0) -> DaliLoader:
    spec = AugmentSpec.simclr(32, (0.5,) * 3, (0.25,) * 3)
    return DaliLoader(index, None, spec, BATCH, torch.device("cpu"), torch.float32, max_broken=max_broken)


def _expected(loader, epoch: int, start: int, broken: set[int]) -> list[list[int]]:
    """The plan's labels from batch ``start`` on, each broken sample replaced by the next good one
    of its batch (cyclically)."""
    out = []
    for index, _ in loader.plan(epoch, start=start):
        ids = index.tolist()
        out.append([
            i if i not in broken else next(ids[(p + k) % len(ids)] for k in range(1, len(ids))
                                           if ids[(p + k) % len(ids)] not in broken)
            for p, i in enumerate(ids)
        ])  # fmt: skip
    return out


def _labels(batches) -> list[list[int]]:
    return [labels.tolist() for _, labels in batches]


def test_past_max_broken_the_run_stops_naming_the_file(tmp_path, capsys):
    index = _index(tmp_path, 8)
    _cut(index, 3)
    said = r"cut: 1 of 8 images \(12.5%\) cannot be decoded .*--max-broken 0:"
    with pytest.raises(DatasetError, match=said):
        list(_loader(index).epoch(0))
    assert f"{index.files[3]}:" in capsys.readouterr().err


def test_a_cut_file_gives_its_place_to_another_image_of_its_batch(tmp_path, capsys):
    """The cut file sits in the third batch: the epoch restarts there, from a fresh start and
    from a resumed one (start 1, and start 2 at the cut batch itself), with the same batches."""
    index = _index(tmp_path, 32)
    loader = _loader(index, max_broken=0.2)
    cut = [ids for ids, _ in loader.plan(0)][2][1].item()  # the plan does not read the files
    _cut(index, cut)
    full = list(loader.epoch(0))
    err = capsys.readouterr().err
    assert f"{index.files[cut]}:" in err and "skipped that image" in err
    assert _labels(full) == _expected(loader, 0, 0, {cut}) and len(full) == 8
    assert all(cut not in labels for labels in _labels(full))
    assert all(views.shape == (8, 3, 32, 32) for views, _ in full)
    for start in (1, 2):
        resumed = list(_loader(index, max_broken=0.2).epoch(0, start=start))
        assert _labels(resumed) == _expected(loader, 0, start, {cut})
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(full[start:], resumed, strict=True))
    capsys.readouterr()  # the resumed loaders found the file again, and said so
    again = list(loader.epoch(1))  # known now: no new listing
    assert "cannot be decoded" not in capsys.readouterr().err
    assert _labels(again) == _expected(loader, 1, 0, {cut})
    fresh = list(_loader(index, max_broken=0.2).epoch(1))  # a run resumed in epoch 2 meets it again
    assert all(
        torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(again, fresh, strict=True)
    )


def test_the_limit_counts_the_files_whose_header_failed(tmp_path, capsys):
    index = _index(tmp_path, 32, garbage=1)  # 33 files, one left out at indexing
    _cut(index, 5)
    with pytest.raises(DatasetError, match=r"cut: 2 of 33 images \(6.1%\) cannot be decoded"):
        list(_loader(index, max_broken=0.05).epoch(0))
    assert "1 of 33 images cannot be decoded (and 1 more listed above)" in capsys.readouterr().err
    assert len(list(_loader(index, max_broken=0.1).epoch(0))) == 8


def test_a_file_pillow_reads_but_dali_does_not_is_one_line(tmp_path, monkeypatch):
    index = _index(tmp_path, 8)
    _cut(index, 3)
    monkeypatch.setattr(dali_loader, "decode_file", lambda path: None)  # Pillow reads every file
    with pytest.raises(FastSigCLRError, match="DALI could not decode an image of epoch 1 that Pillow reads"):
        list(_loader(index, max_broken=0.2).epoch(0))


def _folder_with_a_cut_file(tmp_path):
    """A 5-class folder of 20 training images, one of them (a bird) cut short: (folder, that file)."""
    data = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=1, classes=5)
    truncated = next((data / "train" / "bird").iterdir())
    _cut_file(truncated)
    return data, truncated


def test_training_with_dali_leaves_out_a_cut_file(tmp_path, capsys):
    """Through the CLI: --max-broken reaches the DALI loader, and the run finishes."""
    data, truncated = _folder_with_a_cut_file(tmp_path)
    out = tmp_path / "run"
    args = folder_args(data, out, "--batch-size", "8", "--loader", "dali", "--max-broken", "0.1")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{truncated}:" in err and "skipped that image" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == 19  # 20 files, 1 left out (it counted 20, the gpu loader 19)


def test_a_resumed_run_leaves_out_the_files_of_every_session(tmp_path, capsys):
    """summary.json's train_images leaves out what every session of the run left out: a file met
    in one session and kept out in the next once, and an earlier session's when the last one
    meets none (resumed after its last checkpoint, before its summary: it counted 20 of 20)."""
    data, truncated = _folder_with_a_cut_file(tmp_path)
    out = tmp_path / "run"
    args = folder_args(data, out, "--batch-size", "4", "--loader", "dali", "--max-broken", "0.1")
    assert main(args) == 0
    assert f"{truncated}:" in capsys.readouterr().err
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    # DALI keeps it out from the start, unread, as a run that never stopped (the kNN monitor's
    # pass over the labelled split still meets it and lists it)
    note = "note: the 1 image earlier sessions of this run could not decode stays left out"
    assert f"{note} (e.g. {truncated})" in err, err
    assert summary(out)["train_images"] == 19
    assert len(checkpoint.load(out / "checkpoints" / "last.pt")["left_out"]) == 1
    (out / "summary.json").unlink()  # stopped after its last checkpoint, before writing it
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    assert summary(out)["train_images"] == 19


def test_a_resumed_run_keeps_an_earlier_sessions_files_out_and_counts_them(tmp_path, capsys):
    """An image an earlier session left out stays out, even repaired since (a run that never
    stopped keeps it out: the batches, and so the weights, of an exact resume), and counts toward
    --max-broken (0.05 of 20 allows one) with those met from now on. Before, the repaired file
    trained again and a second cut file, 2 of 20 left out in the run, passed as 1 of 20."""
    data, truncated = _folder_with_a_cut_file(tmp_path)
    whole = write_cifar_folder(tmp_path / "copy", per_class=4, val_per_class=1, classes=5)
    out = tmp_path / "run"
    args = folder_args(data, out, "--batch-size", "4", "--loader", "dali", "--max-broken", "0.05")
    assert main(args) == 0
    capsys.readouterr()
    truncated.write_bytes((whole / truncated.relative_to(data)).read_bytes())  # repaired
    _cut_file(next((data / "train" / "cat").iterdir()))
    with pytest.raises(SystemExit):
        main([*args, "--epochs", "2", "--resume"])
    err = capsys.readouterr().err
    assert "2 of 20 images (10.0%) cannot be decoded" in err and "more than --max-broken 0.05" in err, err


def _cut_file(path) -> None:
    """The first 80% of the file: its header still reads (all 40 CIFAR JPEGs of the folder
    fixture; at 60% none does), its data ends early."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 4 // 5])
    image_size(path)  # the header pass keeps it: DALI meets it mid-epoch
    with pytest.raises(OSError):
        decode_file(path)


def test_two_ranks_check_the_limit_on_their_sum_and_stop_together(tmp_path):
    """Each rank meets only its share of the cut files; past the limit on their sum both stop at
    the same step with the same line, said once (one rank alone would leave the other waiting)."""
    data = write_cifar_folder(tmp_path / "data", per_class=8, val_per_class=1, classes=5)
    for cls in ("bird", "cat"):
        _cut_file(sorted((data / "train" / cls).iterdir())[0])
    args = folder_args(
        data, tmp_path / "run", "--batch-size", "8", "--loader", "dali", "--max-broken", "0.03"
    )
    proc = torchrun(2, *args)
    said = "2 of 40 images (5.0%) cannot be decoded, more than --max-broken 0.03"
    assert proc.returncode != 0 and (proc.stderr + proc.stdout).count(said) == 1, proc.stderr[-3000:]


def test_a_file_both_ranks_meet_counts_once(tmp_path):
    """Each epoch deals the images to the ranks afresh, so both meet the cut file in time (each
    lists it): it is one file, within --max-broken, and the run finishes. A file whose header does
    not read, which every rank's header pass meets, is listed once."""
    data = write_cifar_folder(tmp_path / "data", per_class=8, val_per_class=1, classes=5)
    cut = sorted((data / "train" / "bird").iterdir())[0]
    _cut_file(cut)
    garbage = data / "train" / "cat" / "zz.jpg"
    garbage.write_bytes(b"not an image")
    args = folder_args(data, tmp_path / "run", "--batch-size", "8", "--loader", "dali", "--epochs", "6")
    proc = torchrun(2, *args, "--knn-every", "0", "--max-broken", "0.06")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count(f"{cut}:") >= 2  # met by each rank (and listed by the final kNN monitor)
    assert proc.stderr.count(f"{garbage}:") == 1, proc.stderr[-3000:]
