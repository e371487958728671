"""Training methods and their settings as a user types them: a learnable logit scale that keeps
learning, batches without a negative refused, and a resume that checks its options against the
run's own method."""

import json

import pytest
from run_fixture import fails_with, tiny_args

from fastsigclr import rundir
from fastsigclr.cli import main
from fastsigclr.config import FastSigCLRError
from fastsigclr.losses.sigmoid import SigmoidPairwiseLoss
from fastsigclr.models import SSLModel
from fastsigclr.optim import build_optimizer, param_groups
from fastsigclr.runlog import read_metrics
from fastsigclr.runweights import load_weights


def test_a_learnable_logit_scale_takes_lars_steps():
    """Its log t is a 0-d tensor: as a bias it took plain steps of the full lr, and t fell from 10
    to 4e-6 within 16 steps, where the loss no longer depends on the features."""
    model = SSLModel("resnet18", 8, (16, 8), False)
    fixed, learnable = SigmoidPairwiseLoss(), SigmoidPairwiseLoss(learnable_logit_scale=True)
    assert len(param_groups([model, fixed], 1e-6)) == 2  # the run's groups as before: resumes load
    groups = param_groups([model, learnable], 1e-6)
    assert [g["adapt"] for g in groups] == [True, False, True]
    assert groups[2]["params"] == [learnable.log_logit_scale] and groups[2]["weight_decay"] == 0
    assert any(p is learnable.logit_bias for p in groups[1]["params"])  # the bias: plain steps as before


def test_a_learnable_logit_scale_keeps_learning(cifar10_dir, tmp_path):
    out = tmp_path / "run"
    extra = ["--learnable-logit-scale", "--batch-size", "16", "--epochs", "4"]
    assert main(tiny_args(cifar10_dir, out, *extra)) == 0
    scales = [r["logit_scale"] for r in read_metrics(out) if r["kind"] == "step"]
    assert len(scales) == 16 and all(5 < t < 20 for t in scales), scales  # measured: 9.07-10.25


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--method", "simclr", "--batch-size", "1"], "--method simclr needs at least 2 images per batch"),
        (["--method", "supcon", "--batch-size", "1"], "--method supcon needs at least 2 images per batch"),
        (["--learnable-logit-scale", "--optimizer", "sgd"], "--learnable-logit-scale takes LARS's"),
    ],
)
def test_settings_a_run_cannot_train_with(cifar10_dir, tmp_path, capsys, flags, message):
    """One image per batch: NT-Xent's and SupCon's loss was 0 at every step and the run said done."""
    out = tmp_path / "run"
    assert message in fails_with(tiny_args(cifar10_dir, out, *flags), capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("method", "again"),
    [("simclr", ["--temperature", "0.2"]), ("tcl", ["--use-labels"]), ("tcl", ["--k1", "5000"])],
)
def test_a_resume_takes_options_of_the_runs_own_method(cifar10_dir, tmp_path, method, again):
    """Without --method, a resume checked them against sigclr's ("--temperature applies to simclr,
    ... only"); --use-labels, tcl's default, was "was None, now True"."""
    out = tmp_path / "run"
    assert main(tiny_args(cifar10_dir, out, "--method", method)) == 0
    assert (
        main(["train", "--out", str(out), "--resume", "yes", "--epochs", "2", "--no-progress", *again]) == 0
    )
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["method"] == method and saved["epochs"] == 2


def test_a_resume_still_refuses_another_value(cifar10_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(cifar10_dir, out, "--method", "simclr")) == 0
    line = fails_with(
        ["train", "--out", str(out), "--resume", "yes", "--epochs", "2", "--temperature", "0.5"], capsys
    )
    assert "cannot resume" in line and "--temperature was 0.2, now 0.5" in line


def test_an_optimiser_state_of_other_groups_is_one_line():
    """A learnable-scale run checkpointed before its scale had a group of its own: load_state_dict
    raised "loaded state dict has a different number of parameter groups"."""
    model, loss = SSLModel("resnet18", 8, (16, 8), False), SigmoidPairwiseLoss(learnable_logit_scale=True)
    before = build_optimizer("lars", param_groups([model, SigmoidPairwiseLoss()], 1e-6), 0.5, 0.9)
    now = build_optimizer("lars", param_groups([model, loss], 1e-6), 0.5, 0.9)
    with pytest.raises(FastSigCLRError, match="state of 2 parameter groups where this run's has 3"):
        load_weights(now, before.state_dict(), "last.pt")


def test_a_run_begun_with_settings_now_refused_still_resumes(cifar10_dir, tmp_path, monkeypatch, capsys):
    """The refusals are a new run's: a run an earlier version began with a batch of one resumes
    and, finished, says so (it was refused on resume, with advice the resume then refused)."""
    out = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(rundir, "check_trainable", lambda cfg: cfg)
        one_image = ("--method", "simclr", "--batch-size", "1", "--limit-train", "4")
        assert main(tiny_args(cifar10_dir, out, *one_image)) == 0
    resume = ["train", "--out", str(out), "--no-progress"]
    assert main([*resume, "--resume", "auto"]) == 0 and "already complete" in capsys.readouterr().err
    assert main([*resume, "--resume", "yes", "--epochs", "2"]) == 0


def test_a_resume_reads_the_method_of_an_out_under_home(cifar10_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(tiny_args(cifar10_dir, tmp_path / "run", "--method", "simclr")) == 0
    again = ["train", "--out", "~/run", "--resume", "yes", "--epochs", "2", "--no-progress"]
    assert main([*again, "--temperature", "0.2"]) == 0


def test_a_refused_use_labels_names_the_runs_own_value(cifar10_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(cifar10_dir, out, "--method", "tcl")) == 0
    resume = ["train", "--out", str(out), "--resume", "yes", "--epochs", "2", "--no-progress"]
    assert "--use-labels was True, now False" in fails_with([*resume, "--no-use-labels"], capsys)
