"""The loader registry: a backend is one module and one entry of ``LOADERS``. The toy backend of
``toy_loader.py`` is added with one entry and trains through the ordinary command line, with its
rank-0 preparation; ``fastsigclr info`` lists it, and the records carry every backend's version."""

import json
import math

import pytest
import toy_loader
from cifar_fixture import write_cifar

from fastsigclr.cli import main
from fastsigclr.data import DATASETS, LOADERS
from fastsigclr.runinfo import PACKAGES, versions
from fastsigclr.runlog import read_metrics


def test_a_toy_loader_is_one_module_and_one_entry(tmp_path, monkeypatch, capsys):
    data_dir, out = tmp_path / "data", tmp_path / "run"
    monkeypatch.setitem(DATASETS, "cifar10", write_cifar(data_dir))
    monkeypatch.setitem(LOADERS, "toy", toy_loader.ENTRY)  # the one entry
    served = []
    monkeypatch.setattr(toy_loader.ToyLoader, "epoch", _counting(toy_loader.ToyLoader.epoch, served))

    assert main(["info"]) == 0
    assert "loader  toy: usable (un-augmented views)" in capsys.readouterr().out
    args = (
        f"train --loader toy --data-dir {data_dir} --device cpu --width 8 --proj-dims 32,16 "
        f"--batch-size 20 --epochs 2 --knn-k 5 --log-every 1 --no-progress --no-tensorboard --out {out}"
    ).split()
    assert main(args) == 0
    assert (data_dir / "toy-cifar10-40.txt").read_text() == "40\n"  # prepared on rank 0
    assert served == [0, 1]
    assert json.loads((out / "config.json").read_text())["config"]["loader"] == "toy"
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)


def _counting(epoch, served):
    def counted(self, e, start=0):
        served.append(e)
        return epoch(self, e, start)

    return counted


def test_unknown_loader_lists_the_registry(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(LOADERS, "toy", toy_loader.ENTRY)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--loader", "nope", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "choose from gpu, dali, ffcv, toy" in capsys.readouterr().err


def test_records_hold_every_backends_version():
    found = versions()
    assert set(PACKAGES) <= set(found)
    assert {e.package for e in LOADERS.values() if e.package} == {"dali", "ffcv"} <= set(found)
