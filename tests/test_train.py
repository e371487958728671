"""The trainer through its real command line, on real CIFAR-10 images (CPU, narrow ResNet)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastsigclr import checkpoint
from fastsigclr.cli import main
from fastsigclr.data import DATASETS
from fastsigclr.eval import extract_features
from fastsigclr.knn import knn_accuracy
from fastsigclr.recipe import build_model, load_data
from fastsigclr.runconfig import TrainConfig
from fastsigclr.runlog import read_metrics


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastsigclr", *args]


def quick_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(
            f"train --dataset cifar10 --data-dir {data_dir} --device cpu --limit-train 512 --limit-test "
            f"500 --width 16 --batch-size 128 --log-every 1 --no-progress --out {out}"
        ).split(),
        *extra,
    ]


def step_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "step"]


def test_issue_command_writes_a_complete_run(cifar10_dir, tmp_path, capsys):
    """The issue's command, word for word, then `fastsigclr eval` on its run directory."""
    out = tmp_path / "run"
    args = (
        f"train --dataset cifar10 --data-dir {cifar10_dir} --device cpu --limit-train 512 --epochs 2 "
        f"--width 16 --out {out}"
    ).split()
    assert main(args) == 0
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["arch"] == "resnet18" and config["config"]["proj_dims"] == [2048, 2048, 64]
    assert config["versions"]["torch"] and "commit" in config and config["device"]["type"] == "cpu"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["train_images"] == 512 and 0 <= summary["knn_acc"] <= 1
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and {"model", "optimizer", "criterion", "probe", "rng"} <= set(state)
    assert main(["eval", "--run", str(out), "knn", "--no-progress"]) == 0
    assert main(["eval", "--run", str(out), "linear", "--linear-epochs", "3", "--no-progress"]) == 0
    knn = json.loads((out / "eval-knn.json").read_text())
    linear = json.loads((out / "eval-linear.json").read_text())
    assert knn["protocol"] == "knn" and 0 <= knn["accuracy"] <= 1 and knn["k"] == 200
    assert linear["epochs"] == 3 and 0 <= linear["accuracy"] <= 1
    tests = linear["test_images"]
    assert linear["accuracy"] == round(linear["accuracy"] * tests) / tests  # a count over a size, exactly
    probe = {k: linear[k] for k in ("batch_size", "lr", "weight_decay", "seed")}  # how it was trained
    assert probe == {"batch_size": 256, "lr": 0.2, "weight_decay": 0.0, "seed": 0}
    assert "knn accuracy" in capsys.readouterr().out


def test_loss_falls(cifar10_dir, tmp_path):
    """Three epochs: the change between two epochs of 4 steps is within their noise (after the
    augmentation sampler changed, seed 0 went 6.78 -> 6.94 over 2 epochs; before it, seed 1 rose
    from epoch 1 to 2 of 4); the third epoch ended 0.33-0.92 below the first for seeds 0-3."""
    out = tmp_path / "run"
    assert main(quick_args(cifar10_dir, out, "--epochs", "3", "--knn-every", "0")) == 0
    epochs = [r for r in read_metrics(out) if r["kind"] == "epoch"]
    assert len(epochs) == 3 and epochs[2]["loss"] < epochs[0]["loss"]
    steps = step_losses(out)
    assert len(steps) == 12 and all(map(torch.isfinite, torch.tensor(steps)))


def test_interrupted_run_resumes_exactly(cifar10_dir, tmp_path, capsys):
    """Kill a run after its first checkpoint, resume it, and compare with an uninterrupted run.
    While it runs, its directory is locked: a second training there is refused, naming it."""
    args = ["--epochs", "3", "--knn-every", "0", "--seed", "3"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(cli(*quick_args(cifar10_dir, whole, *args)), check=True, capture_output=True)
    proc = subprocess.Popen(
        cli(*quick_args(cifar10_dir, broken, *args)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (broken / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    with pytest.raises(SystemExit):
        main(quick_args(cifar10_dir, broken, *args, "--resume"))
    assert f"is in use by another training (pid {proc.pid} on" in capsys.readouterr().err
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.load(broken / "checkpoints" / "last.pt")["epoch"] < 3
    subprocess.run(cli(*quick_args(cifar10_dir, broken, *args, "--resume")), check=True, capture_output=True)
    assert step_losses(broken) == step_losses(whole)
    a = checkpoint.load(whole / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(broken / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_errors(cifar10_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(quick_args(cifar10_dir, out, "--epochs", "1", "--knn-every", "0")) == 0
    with pytest.raises(SystemExit):
        main(quick_args(cifar10_dir, out, "--epochs", "1"))
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(quick_args(cifar10_dir, out, "--epochs", "2", "--lr", "0.1", "--resume"))
    assert "cannot resume" in (err := capsys.readouterr().err) and "--lr was 0.5, now 0.1" in err
    with pytest.raises(SystemExit):
        main(quick_args(cifar10_dir, tmp_path / "empty", "--resume"))
    assert "nothing to resume" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "imagenet21k"])
    assert "imagenet21k not allowed; choose from cifar10, cifar100" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "train",
                "--data-dir",
                str(tmp_path / "nothing"),
                "--no-download",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "r2"),
            ]
        )
    assert "cifar10 not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--run", str(tmp_path / "missing"), "knn"])
    assert f"--run {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--device", "cuda", "--out", str(tmp_path / "r")])
    assert "--device cuda was asked for but torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_training_beats_a_random_network_on_knn(cifar10_dir, tmp_path):
    """kNN accuracy after a short run against the same network at its initialisation, same data."""
    out = tmp_path / "run"
    args = (
        f"train --dataset cifar10 --data-dir {cifar10_dir} --device cpu --limit-train 1024 "
        f"--limit-test 1000 --width 8 --batch-size 128 --epochs 10 --warmup-epochs 1 --knn-every 0 "
        f"--no-progress --out {out}"
    ).split()
    assert main(args) == 0
    trained = json.loads((out / "summary.json").read_text())["knn_acc"]
    cfg = TrainConfig(
        dataset="cifar10", data_dir=str(cifar10_dir), limit_train=1024, limit_test=1000, width=8
    )
    cfg = cfg.resolved()
    data = load_data(cfg)
    info, (tx, ty), (vx, vy) = data.info, data.arrays("train"), data.arrays("test")
    torch.manual_seed(cfg.seed)  # the initialisation the run started from
    model, _, _ = build_model(cfg, info, torch.device("cpu"))
    cpu = torch.device("cpu")
    bank = extract_features(model.backbone, tx, info.mean, info.std, cpu)
    queries = extract_features(model.backbone, vx, info.mean, info.std, cpu)
    knn = dict(k=cfg.knn_k, temperature=cfg.knn_temperature)
    random_init = knn_accuracy(
        bank, torch.from_numpy(ty), queries, torch.from_numpy(vy), DATASETS["cifar10"].num_classes, **knn
    )
    assert trained > random_init, (trained, random_init)


@pytest.mark.parametrize(
    "method,key,temperature",
    [
        ("simclr", "temperature", 0.2),
        ("supcon", "temperature", 0.1),
        ("tcl", "temperature", 0.1),
        ("sigclr", "logit_scale", 10.0),
    ],
)
def test_every_method_trains(cifar10_dir, tmp_path, method, key, temperature):
    out = tmp_path / method
    assert (
        main(quick_args(cifar10_dir, out, "--epochs", "1", "--method", method, "--limit-train", "256")) == 0
    )
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["method"] == method and config[key] == temperature
    losses = step_losses(out)
    assert len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    summary = json.loads((out / "summary.json").read_text())
    assert ("final_logit_bias" in summary) == (method == "sigclr")


def test_self_supervised_tcl_with_a_third_view(cifar10_dir, tmp_path, capsys):
    out = tmp_path / "tcl3"
    extra = ["--epochs", "1", "--method", "tcl", "--no-use-labels", "--n-views", "3", "--limit-train", "256"]
    assert main(quick_args(cifar10_dir, out, *extra)) == 0
    assert len(step_losses(out)) == 2 and all(map(torch.isfinite, torch.tensor(step_losses(out))))
    with pytest.raises(SystemExit):
        main(quick_args(cifar10_dir, tmp_path / "bad", "--method", "simclr", "--use-labels"))
    assert "simclr cannot use labels" in capsys.readouterr().err
