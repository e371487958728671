"""The run directory's life cycle through the real command line: interrupted and failed starts,
resume with the run's own settings, finished runs, broken directories, the lock, divergence."""

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import run_fixture
import torch
from helpers import run_in
from run_fixture import tiny_args

import fastsigclr.train
from fastsigclr import checkpoint, determinism, divergence, rundir, runfiles, runlock
from fastsigclr.cli import main
from fastsigclr.runlog import read_metrics

finished_run, run_copy = run_fixture.finished_run, run_fixture.run_copy  # the fixtures


def steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if r["kind"] == "step"]


def fails_with(args: list[str], capsys) -> str:
    """The one-line error of a command that must fail (exit status 2, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("again", [[], ["--resume", "auto"], "bare"])
def test_an_interrupted_start_can_be_started_again(cifar10_dir, tmp_path, monkeypatch, capsys, again):
    """A crash in the first epoch leaves config.json and step records but no checkpoint: --resume
    says to start again, and the same command does (or with --resume auto), replacing the partial
    records. ``--out R --resume auto`` alone starts it with its config.json's settings (it took
    every default: another dataset folder, width and batch)."""
    out = tmp_path / "run"
    real_step, calls = fastsigclr.train.train_step, []

    def crash_at_step_two(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kw)

    monkeypatch.setattr(fastsigclr.train, "train_step", crash_at_step_two)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(tiny_args(cifar10_dir, out))
    monkeypatch.undo()
    assert steps(out) == [1] and (out / "config.json").is_file()
    assert not (out / "checkpoints" / "last.pt").exists()
    err = fails_with(tiny_args(cifar10_dir, out, "--resume"), capsys)
    assert "nothing to resume" in err and "without --resume to start it again" in err
    saved = json.loads((out / "config.json").read_text())["config"]
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"the start's events")
    bare = ["train", "--out", str(out), "--resume", "auto", "--no-progress", "--no-tensorboard"]
    assert main(bare if again == "bare" else tiny_args(cifar10_dir, out, *again)) == 0
    assert "starting it again" in capsys.readouterr().err
    assert not (out / "tensorboard").exists()  # the start's own event file went with its folder
    assert steps(out) == [1, 2] and checkpoint.load(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert json.loads((out / "config.json").read_text())["config"] == saved


@pytest.mark.parametrize("again", [[], ["--resume", "auto"], ["--resume"]])
def test_a_folder_that_is_not_a_run_is_left_alone(cifar10_dir, tmp_path, capsys, again):
    """Files of a run's names (someone's config.json, checkpoints/, tensorboard/) without a run's
    config.json are not an interrupted start: every start there is refused and nothing changes."""
    out = tmp_path / "project"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "model.ckpt").write_bytes(b"weights")
    (out / "config.json").write_text('{"lr": 3}')
    (out / "tensorboard").mkdir()
    before = sorted((p.relative_to(out), p.read_bytes() if p.is_file() else None) for p in out.rglob("*"))
    err = fails_with(tiny_args(cifar10_dir, out, *again), capsys)
    assert "config.json, tensorboard, checkpoints but is not a fastsigclr run (its config.json is " in err
    assert "unreadable (KeyError 'config'))" in err, err
    after = sorted((p.relative_to(out), p.read_bytes() if p.is_file() else None) for p in out.rglob("*"))
    assert after == before  # the lock file it made is gone too


def test_a_failed_start_leaves_nothing_it_created(tmp_path, capsys):
    missing_data = ["--data-dir", str(tmp_path / "no-data"), "--no-download", "--device", "cpu"]
    new = tmp_path / "a" / "b" / "run"
    assert "cifar10 not found" in fails_with(["train", *missing_data, "--out", str(new)], capsys)
    assert not (tmp_path / "a").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert "cifar10 not found" in fails_with(["train", *missing_data, "--out", str(existing)], capsys)
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_resume_takes_the_runs_own_settings(run_copy, capsys):
    """Only the options typed with --resume change; a model/recipe option that differs is refused.
    A record cut short by a kill does not stop the resume."""
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "epo')
    args = ["train", "--out", str(run_copy), "--resume"]
    err = fails_with([*args, "--epochs", "2", "--width", "16", "--lr", "0.1"], capsys)
    assert "cannot resume" in err and "--lr was 0.5, now 0.1; --width was 8, now 16" in err
    assert main([*args, "--epochs", "2", "--log-every", "2", "--checkpoint-every", "30m"]) == 0
    config = json.loads((run_copy / "config.json").read_text())["config"]
    assert (config["width"], config["epochs"], config["log_every"], config["limit_train"]) == (8, 2, 2, 64)
    assert config["checkpoint_every"] == "30m"  # when to checkpoint is not what was trained
    saved = json.loads((run_copy / "config.json").read_text())  # the first start's record is kept
    assert "--resume" in saved["command"]
    assert [h["command"].count("--resume") for h in saved["history"]] == [0]
    assert {"date", "commit", "device", "versions"} <= set(saved["history"][0])
    state = checkpoint.load(run_copy / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"]) == (2, 4)
    assert steps(run_copy) == [1, 2, 4]  # epoch 2 logs every 2nd step
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 <= summary["knn_acc"] <= 1


def test_a_finished_run_is_complete_and_can_be_extended(run_copy, capsys):
    """--resume (yes) and --resume auto leave a finished run as it is; --epochs extends it."""
    summary_before = (run_copy / "summary.json").read_bytes()
    metrics_before = (run_copy / "metrics.jsonl").read_bytes()
    args = ["train", "--out", str(run_copy), "--resume"]
    for resume in ([], ["auto"]):
        assert main([*args, *resume]) == 0
        assert "is already complete (1 of 1 epochs)" in capsys.readouterr().err
        assert (run_copy / "summary.json").read_bytes() == summary_before
        assert (run_copy / "metrics.jsonl").read_bytes() == metrics_before
    assert main([*args, "--epochs", "2"]) == 0
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps"] == 4 and summary["knn_acc"] is not None
    err = fails_with([*args, "--epochs", "1"], capsys)
    assert "already trained 2 epochs and --epochs 1 is fewer" in err
    # Stopped after its last checkpoint but before its summary: resuming writes the summary.
    (run_copy / "summary.json").unlink()
    assert main(args) == 0
    summary = json.loads((run_copy / "summary.json").read_text())
    assert summary["epochs"] == 2 and 0 <= summary["knn_acc"] <= 1 and steps(run_copy) == [1, 2, 3, 4]


def _random_checkpoint(run: Path) -> None:
    (run / "checkpoints" / "last.pt").write_bytes(os.urandom(4096))


def _foreign_checkpoint(run: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, run / "checkpoints" / "last.pt")


def _hand_made_checkpoint(**changes):
    """A checkpoint with every key, saved without a digest, some of wrong types (a TypeError)."""

    def damage(run: Path) -> None:
        state = checkpoint.load(run / "checkpoints" / "last.pt")
        state.pop("digest", None)
        torch.save({**state, **changes}, run / "checkpoints" / "last.pt")

    return damage


def _folder_at(name: str):
    def damage(run: Path) -> None:
        (run / name).unlink(missing_ok=True)
        (run / name).mkdir()

    return damage


def _corrupt_config(run: Path) -> None:
    (run / "config.json").write_text('{"config": {"width": 8,')


def _unknown_key_config(run: Path) -> None:
    saved = json.loads((run / "config.json").read_text())
    saved["config"]["widht"] = 8
    (run / "config.json").write_text(json.dumps(saved))


@pytest.mark.parametrize(
    "damage,resume,expected",
    [
        (lambda run: (run / "config.json").unlink(), "yes", "config.json (the run's settings) is missing"),
        (_corrupt_config, "yes", "its config.json is unreadable"),
        (
            _unknown_key_config,
            "yes",
            "its config.json is unreadable (unknown option(s) for TrainConfig: widht",
        ),
        (
            lambda run: (run / "config.json").write_text("[1, 2]"),
            "yes",
            "its config.json is unreadable (a JSON list, not an object holding the run's 'config')",
        ),
        (_random_checkpoint, "yes", "is unreadable"),
        (_foreign_checkpoint, "yes", "is not a fastsigclr training checkpoint (no model"),
        (_hand_made_checkpoint(epoch="1"), "yes", "training checkpoint (epoch is '1', not a count)"),
        (_hand_made_checkpoint(step=-1, model=[]), "yes", "(model is a list, not a dict; step is -1, not"),
        (_hand_made_checkpoint(position={"batch": 1}), "yes", "(position is {'batch': 1}, not a dict of"),
        (lambda run: shutil.rmtree(run / "checkpoints"), "yes", "no checkpoints/last.pt to continue"),
        (lambda run: shutil.rmtree(run / "checkpoints"), "no", "no checkpoints/last.pt to continue"),
        (lambda run: shutil.rmtree(run / "checkpoints"), "auto", "no checkpoints/last.pt to continue"),
        (_folder_at("checkpoints/last.pt"), "yes", "last.pt is a folder, not a checkpoint: move it away"),
        (_folder_at("run.lock"), "yes", "run.lock is a folder: move it out of"),  # "not writable" before
    ],
)
def test_a_damaged_run_directory_is_a_clear_error(run_copy, capsys, damage, resume, expected):
    damage(run_copy)
    args = ["train", "--out", str(run_copy), "--resume", resume]
    assert expected in fails_with(args, capsys)


def test_an_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("not a run")
    args = ["train", "--device", "cpu", "--no-download", "--data-dir", str(tmp_path)]
    assert "is a file, not a directory" in fails_with([*args, "--out", str(file)], capsys)
    assert "is a file, not a run directory" in fails_with([*args, "--out", str(file), "--resume"], capsys)
    assert "(Not a directory); choose a writable --out" in fails_with([*args, "--out", f"{file}/run"], capsys)
    assert file.read_text() == "not a run"


@pytest.mark.parametrize("where", ["out", "parent"])
def test_a_read_only_out_is_a_clear_error(tmp_path, where):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    out = read_only if where == "out" else read_only / "run"
    args = ["train", "--device", "cpu", "--no-download", "--data-dir", str(tmp_path / "no-data")]
    proc = run_in(read_only, *args, "--out", str(out))
    expected = "is not writable (Permission denied)" if where == "out" else "(Permission denied); choose"
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize(
    "option,value,expected",
    [
        ("--lr", "1e39", "--lr must be ≥ 0 and ≤ 3.40282e+38"),  # beyond float32: overflowed in the optimiser
        ("--logit-bias", "-1e39", "--logit-bias must be ≥ -3.40282e+38 and ≤ 3.40282e+38"),
    ],
)
def test_lr_and_bias_must_fit_in_float32(tmp_path, capsys, option, value, expected):
    out = tmp_path / "r"
    args = ["train", "--device", "cpu", "--no-download", "--data-dir", str(tmp_path), "--out", str(out)]
    assert expected in fails_with([*args, f"{option}={value}"], capsys)
    assert not out.exists()


def test_a_run_in_progress_holds_its_directory(run_copy, capsys):
    """A second training on a locked directory is refused naming the holder, and touches nothing;
    once the lock is released, the directory is usable again."""
    fd = runlock.lock_dir(run_copy)  # what a running training holds
    try:
        before = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
        err = fails_with(["train", "--out", str(run_copy), "--resume", "--epochs", "2"], capsys)
        assert f"is in use by another training (pid {os.getpid()} on" in err
        assert {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()} == before
    finally:
        os.close(fd)
    assert main(["train", "--out", str(run_copy), "--resume"]) == 0


@pytest.mark.parametrize("log_every", [1, 100])
def test_a_loss_that_becomes_nan_stops_the_run(cifar10_dir, tmp_path, capsys, log_every):
    """--lr 1e20: step 1's update overflows and step 2's loss is NaN. It is seen where the loss is
    read: at step 2 when it is a logging step, else at the end of the epoch (its loss sum)."""
    out = tmp_path / "run"
    args = tiny_args(cifar10_dir, out, "--epochs", "2", "--lr", "1e20", "--log-every", str(log_every))
    err = fails_with(args, capsys)
    what = "the loss is nan" if log_every == 1 else "the epoch's mean loss is nan"
    assert f"training diverged: {what} at step 2 (epoch 1); no epoch finished" in err and "--lr" in err
    assert not (out / "checkpoints").exists() and steps(out) == ([1, 2] if log_every == 1 else [])
    if log_every == 1:  # strict JSON, as jq or JavaScript read it: the NaN loss is null
        records = [json.loads(line, parse_constant=_refuse) for line in (out / "metrics.jsonl").open()]
        assert records[-1]["step"] == 2 and records[-1]["loss"] is None


def _refuse(token: str):
    raise ValueError(f"{token} is not JSON")


def test_a_diverging_probe_names_probe_lr_not_lr(cifar10_dir, tmp_path, capsys):
    """The online probe trains on detached features with its own --probe-lr: when it alone
    diverges, the message names that option, not the encoder's --lr (which it blamed)."""
    out = tmp_path / "run"
    err = fails_with(tiny_args(cifar10_dir, out, "--probe-lr", "3e38"), capsys)
    assert "training diverged: the online linear probe's loss is nan at step 2 (epoch 1)" in err, err
    assert "with a lower --probe-lr than 3e+38" in err and "--lr " not in err


@pytest.mark.parametrize(
    "flags,fix",
    [
        # At --lr 0 the message asked for "a lower --lr than 0 (e.g. --lr 0)".
        (
            ["--lr", "0", "--logit-scale", "1e38"],
            "again with other loss settings (no weight moves at --lr 0: the loss itself overflowed, "
            "with --logit-scale 1e+38, --logit-bias -10;",
        ),
        # A new run's first loss comes before any update: the learning rate was blamed.
        (
            ["--log-every", "1", "--logit-bias", "3e38"],
            "again with other loss settings (the first step's loss comes before any update: the loss "
            "itself overflowed, with --logit-scale 10, --logit-bias 3e+38;",
        ),
        # A later loss with settings off their defaults: either may be the cause; both are named.
        (
            ["--log-every", "2", "--logit-scale", "3e38"],
            "again with a lower --lr than 0.5 (e.g. --lr 0.25), or other loss settings (if they made the "
            "loss overflow, with --logit-scale 3e+38, --logit-bias -10;",
        ),
        (
            ["--optimizer", "sgd", "--warmup-epochs", "0", "--weight-decay", "1e30"],
            "again with a lower --weight-decay or --lr (--lr × --weight-decay is 5e+29, and from "
            "2(1 + --momentum) = 3.8 SGD diverges on the weight decay alone)",
        ),
        # lr × decay = 1: under 3.8, so the decay alone does not diverge; the learning rate does.
        (
            ["--optimizer", "sgd", "--warmup-epochs", "0", "--lr", "1e8", "--weight-decay", "1e-8"],
            "again with a lower --lr than 1e+08 (e.g. --lr 5e+07)",
        ),
    ],
)
def test_divergence_names_the_option_that_caused_it(cifar10_dir, tmp_path, capsys, flags, fix):
    err = fails_with(tiny_args(cifar10_dir, tmp_path / "run", "--lr", "0.5", *flags), capsys)
    assert "training diverged: the " in err and fix in err, err


def test_a_diverging_run_keeps_its_last_good_checkpoint(cifar10_dir, tmp_path, capsys):
    """--lr 50 warmed up over 10 epochs, one step per epoch: the rate grows until an update makes
    the encoder's eval-mode features blow up (measured: past 1e16 in epoch 4) while its weights and
    the loss are still finite. A check of the weights alone kept such checkpoints (at --lr 1e6 from
    epoch 1 on), which eval then refused; the last checkpoint now stays one that eval reads."""
    out = tmp_path / "run"
    extra = ["--limit-train", "32", "--epochs", "40", "--warmup-epochs", "10", "--lr", "50"]
    err = fails_with(tiny_args(cifar10_dir, out, *extra), capsys)
    found = re.search(
        r"training diverged: .* at step (\d+) \(epoch (\d+)\); .*last\.pt \(epoch (\d+)\) is kept", err
    )
    assert found, err
    step, epoch, kept = map(int, found.groups())
    assert step == epoch and kept == epoch - 1 >= 1 and "lower --lr than 50" in err
    assert main(["eval", "--run", str(out), "--no-progress"]) == 0
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert state["epoch"] == kept
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in read_metrics(out) if r["kind"] == "epoch"] == list(range(kept))
    assert all(math.isfinite(r["loss"]) for r in read_metrics(out) if r["kind"] == "epoch")


def test_resume_keeps_rng_states_on_the_cpu(tmp_path):
    """A resume on CUDA loaded the checkpoint with map_location=device and handed torch.set_rng_state
    a GPU tensor, which it refuses; the meta device stands in for the GPU here."""
    state = {key: {} for key in runfiles.CHECKPOINT_KEYS}
    state.update(rng=determinism.rng_state(), epoch=1, step=2)
    (tmp_path / rundir.CHECKPOINT.parent).mkdir()
    checkpoint.save_atomic(state, tmp_path / rundir.CHECKPOINT)
    saved = torch.get_rng_state()
    torch.rand(3)  # move the generator on
    with torch.device("meta"):  # the device the trainer runs on, for every load that defaults to it
        loaded = runfiles.load_checkpoint(tmp_path)
    determinism.set_rng_state(loaded["rng"])
    assert torch.equal(torch.get_rng_state(), saved)


def test_a_mid_epoch_checkpoint_is_never_a_diverged_one(cifar10_dir, tmp_path, capsys):
    """--checkpoint-every 1 with --lr 300 warmed up over 10 epochs (two steps an epoch):
    mid-epoch checkpoints were saved without the checks an epoch's end makes, so a diverged one
    could replace the last good one, and the message named the last epoch's end as kept. The kept
    checkpoint is finite, named as it is, and evaluates."""
    out = tmp_path / "run"
    extra = ("--lr", "300", "--warmup-epochs", "10", "--epochs", "40", "--checkpoint-every", "1")
    err = fails_with(tiny_args(cifar10_dir, out, *extra, "--log-every", "50"), capsys)
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    label = checkpoint.trained(state)["label"]
    assert "training diverged: " in err and f"last.pt ({label}) is kept" in err, err
    assert label.startswith("1 batch of epoch 1")  # measured: diverged at step 2, the step-1 one kept
    assert main(["eval", "--run", str(out), "--no-progress"]) == 0


def test_the_check_of_the_weights_names_the_parts_that_are_not_finite():
    """end_epoch's check: which of model, loss and probe hold a NaN or inf (the probe alone: its
    own --probe-lr is named)."""
    parts = {name: torch.nn.Linear(3, 2) for name in ("model", "loss", "probe")}
    assert divergence.not_finite(parts) == []
    with torch.no_grad():
        parts["probe"].bias[1] = float("inf")
        assert divergence.not_finite(parts) == ["probe"]
        parts["model"].weight[0, 0] = float("nan")
    assert divergence.not_finite(parts) == ["model", "probe"]


def test_ctrl_c_says_how_to_continue(run_copy, monkeypatch, capsys):
    """Ctrl-C inside epoch 2 of a resumed run: the checkpoint of epoch 1 stays, and the message
    gives the command that continues from it."""

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastsigclr.train, "train_step", interrupted)
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "2"]) == 130
    err = capsys.readouterr().err
    assert f"{run_copy} was interrupted: its checkpoint (epoch 1) is kept; continue with" in err, err
    assert f"`fastsigclr train --out {run_copy} --resume`" in err
    assert checkpoint.load(run_copy / "checkpoints" / "last.pt")["epoch"] == 1


def test_a_finished_run_on_read_only_storage_is_reported_complete(run_copy, capsys):
    """Resuming a finished run changes nothing, so it needs no lock: on storage this process cannot
    write it said "--out … is not writable; choose another --out". A run with epochs left to
    train there is still refused, naming the cause."""
    from helpers import run_in

    (run_copy / "run.lock").unlink(missing_ok=True)  # no lock file to open: as on a read-only mount
    done = run_in(run_copy, "train", "--out", str(run_copy), "--resume")
    assert done.returncode == 0, done.stderr
    assert f"{run_copy} is already complete (1 of 1 epochs): nothing to train" in done.stderr
    further = run_in(run_copy, "train", "--out", str(run_copy), "--resume", "--epochs", "2")
    assert further.returncode == 2
    assert f"--out {run_copy} is not writable (Permission denied)" in further.stderr.splitlines()[-1]
    assert not (run_copy / "run.lock").exists()


def test_resume_auto_of_an_interrupted_start_takes_its_settings_or_the_typed_ones_whole(tmp_path):
    """Only resumable options typed: the start's own settings (config.json) under them. A setting
    that changes the run typed: the command's, as a new start (over config.json's filled values, a
    typed --image-size 64 kept --store-size 37)."""
    from fastsigclr.runconfig import TrainConfig, write_config

    out = tmp_path / "run"
    out.mkdir()
    write_config(out, TrainConfig(dataset="cifar10", out=str(out), width=8).resolved(), {})
    assert runfiles.run_state(out) == "interrupted start"
    again = rundir.settings(TrainConfig(out=str(out), resume="auto", epochs=3), {"epochs", "resume", "out"})
    assert (again.dataset, again.width, again.epochs, again.resume) == ("cifar10", 8, 3, "no")
    typed = TrainConfig(dataset="cifar10", out=str(out), resume="auto", image_size=64)
    new = rundir.settings(typed, {"dataset", "image_size", "resume", "out"})
    assert (new.image_size, new.store_size, new.width) == (64, 73, TrainConfig().width)


def _tree(folder: Path) -> dict[Path, object]:
    """Every path under ``folder``: a link's target, a folder's mark, a file's bytes."""
    return {
        p.relative_to(folder): os.readlink(p)
        if p.is_symlink()
        else "folder"
        if p.is_dir()
        else p.read_bytes()
        for p in folder.rglob("*")
    }


@pytest.mark.parametrize(
    "make, name, message",
    [
        (lambda p, t: p.write_bytes(b"mine"), "checkpoints", "is a file, not the checkpoints/ a run writes"),
        (lambda p, t: (p.mkdir(), (p / "x").write_bytes(b"mine")), "metrics.jsonl", "is a folder, not the"),
        (lambda p, t: (p.mkdir(), (p / "model.ckpt").write_bytes(b"w")), "checkpoints", "is not a file fast"),
        (lambda p, t: (p.mkdir(), (p / "notes.txt").write_bytes(b"w")), "tensorboard", "is not a file fast"),
        (
            lambda p, t: (p.mkdir(), (p / "events.out.tfevents.1").symlink_to(t)),
            "tensorboard",
            "is a symbolic",
        ),
        (lambda p, t: p.symlink_to(t), "summary.json", "is a symbolic link: fastsigclr never follows links"),
    ],
)
@pytest.mark.parametrize("again", [[], ["--resume", "auto"]])
def test_a_restart_removes_only_files_a_run_writes(tmp_path, capsys, make, name, message, again):
    """An interrupted start's files are replaced, but one the run did not write where they are (a
    regular file named checkpoints, someone's file in checkpoints/ or tensorboard/, a folder named
    metrics.jsonl, a link) was deleted with them: now the start is refused in one line naming it,
    and nothing is removed (before the data is read: none is there)."""
    from fastsigclr.runconfig import TrainConfig, write_config

    out, linked = tmp_path / "run", tmp_path / "linked"
    out.mkdir()
    linked.write_bytes(b"someone's file")
    write_config(out, TrainConfig(dataset="cifar10", out=str(out), width=8).resolved(), {})
    make(out / name, linked)
    before = _tree(out)
    err = fails_with(tiny_args(tmp_path / "no-data", out, *again), capsys).strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(out / name) in err[0], err
    assert _tree(out) == before and linked.read_bytes() == b"someone's file"
