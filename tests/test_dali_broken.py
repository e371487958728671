"""JPEGs whose header reads but whose data is cut, met by DALI mid-epoch: listed, counted against
--max-broken with those the header pass left out, and their places in a batch taken by another
image of that batch, so batches keep their size; a resumed epoch makes the same batches."""

import numpy as np
import pytest
import torch
from folder_fixture import odd_images, write_cifar_folder
from test_folder import folder_args

from fastsigclr.cli import main
from fastsigclr.config import FastSigCLRError
from fastsigclr.data import dali_loader
from fastsigclr.data.dali_loader import DaliLoader
from fastsigclr.data.info import DatasetError
from fastsigclr.data.plan import AugmentSpec
from fastsigclr.data.samples import file_index

pytest.importorskip("nvidia.dali")

CUT = 3  # the sample whose file is cut


@pytest.fixture
def cut_index(tmp_path):
    payload = odd_images()["rgb.jpg"]
    files = [tmp_path / f"{i}.jpg" for i in range(8)]
    for i, path in enumerate(files):
        path.write_bytes(payload if i != CUT else payload[:-300])
    index = file_index("cut", files, np.arange(8))  # label = sample id: the batches show who is in
    assert len(index) == 8  # the header of the cut file reads
    return index


def _loader(index, max_broken: float = 0.0) -> DaliLoader:
    spec = AugmentSpec.simclr(32, (0.5,) * 3, (0.25,) * 3)
    return DaliLoader(index, None, spec, 4, torch.device("cpu"), torch.float32, max_broken=max_broken)


def test_past_max_broken_the_run_stops_naming_the_file(cut_index, capsys):
    said = r"cut: 1 of 8 images \(12.5%\) cannot be decoded .*--max-broken 0:"
    with pytest.raises(DatasetError, match=said):
        list(_loader(cut_index).epoch(0))
    assert f"{cut_index.files[CUT]}:" in capsys.readouterr().err


def test_a_cut_file_gives_its_place_to_another_image_of_its_batch(cut_index, capsys):
    loader = _loader(cut_index, max_broken=0.2)
    planned = [index.tolist() for index, _ in loader.plan(0)]
    first = list(loader.epoch(0))
    err = capsys.readouterr().err
    assert f"{cut_index.files[CUT]}:" in err and "skipped those 1 images" in err
    assert [tuple(views.shape) for views, _ in first] == [(8, 3, 32, 32)] * 2  # two views of 4
    for (_, labels), index in zip(first, planned, strict=True):
        if CUT in index:
            at = index.index(CUT)
            good = [i for i in index if i != CUT]
            assert labels.tolist() == [i if i != CUT else index[(at + 1) % 4] for i in index]
            assert sorted(set(labels.tolist())) == sorted(good)
        else:
            assert labels.tolist() == index
    again = list(loader.epoch(1))  # known now: no new listing
    assert "cannot be decoded" not in capsys.readouterr().err
    # A resumed run (a new loader) meets the file again in epoch 2 and makes the same batches.
    resumed = list(_loader(cut_index, max_broken=0.2).epoch(1))
    for (a, la), (b, lb) in zip(again, resumed, strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)
    assert CUT not in torch.cat([labels for _, labels in again]).tolist()


def test_a_file_pillow_reads_but_dali_does_not_is_one_line(cut_index, monkeypatch):
    monkeypatch.setattr(dali_loader, "decode_file", lambda path: None)  # Pillow reads every file
    with pytest.raises(FastSigCLRError, match="DALI could not decode an image of epoch 1 that Pillow reads"):
        list(_loader(cut_index, max_broken=0.2).epoch(0))


def test_training_with_dali_leaves_out_a_cut_file(tmp_path, capsys):
    """Through the CLI: --max-broken reaches the DALI loader, and the run finishes."""
    data = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=1, classes=5)
    truncated = next((data / "train" / "bird").iterdir())
    truncated.write_bytes(truncated.read_bytes()[:-300])  # its header reads; its decoding fails
    out = tmp_path / "run"
    args = folder_args(data, out, "--batch-size", "8", "--loader", "dali", "--max-broken", "0.1")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{truncated}:" in err and "skipped those 1 images" in err
