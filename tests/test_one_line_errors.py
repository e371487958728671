"""Faults that ended in tracebacks end as one line naming the problem and the fix, and lose
nothing: a full disk at a checkpoint, read-only and misplaced outputs, damaged or hand-edited
config.json, another run's checkpoint, values too large for the code that uses them."""

import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import run_fixture
import torch
from helpers import run_in
from run_fixture import fails_with, tiny_args

from fastsigclr import checkpoint
from fastsigclr.cli import main
from fastsigclr.config import flag

finished_run, run_copy = run_fixture.finished_run, run_fixture.run_copy  # the fixtures


class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes (ENOSPC), as a real one does."""

    room = 10_000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(run_copy, capsys, monkeypatch):
    """torch.save buried the ENOSPC in `RuntimeError ... unexpected pos`; the write of epoch 2's
    checkpoint fails, epoch 1's stays, no temporary file is left, and --resume continues."""
    before = (run_copy / "checkpoints" / "last.pt").read_bytes()
    monkeypatch.setattr(
        checkpoint, "_create", lambda tmp: FullDisk(os.open(tmp, os.O_WRONLY | os.O_CREAT), "wb")
    )
    err = fails_with(["train", "--out", str(run_copy), "--resume", "--epochs", "2"], capsys)
    last = run_copy / "checkpoints" / "last.pt"
    assert f"no space left on device writing {last}; free space and run again with --resume" in err
    assert "the previous checkpoint (epoch 1) is kept" in err
    monkeypatch.undo()
    assert last.read_bytes() == before
    assert not [p.name for p in last.parent.iterdir() if p.name != "last.pt"]
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "2"]) == 0
    assert checkpoint.load(last)["epoch"] == 2


def test_a_full_disk_while_logging_cuts_no_record_and_resumes(run_copy, capsys, monkeypatch):
    """An append to metrics.jsonl on a full disk ended in a bare OSError traceback and could leave
    half a record: now one line, the file holds whole records only, and --resume auto continues."""
    from fastsigclr import runlog

    metrics = run_copy / "metrics.jsonl"
    before = metrics.read_text()

    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runlog, "_append", half_then_full)
    err = fails_with(["train", "--out", str(run_copy), "--resume", "--epochs", "2"], capsys)
    assert f"no space left on device writing {metrics}; free space and run again with --resume auto" in err
    monkeypatch.undo()
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines]  # every line a whole record
    assert metrics.read_text() == before
    assert main(["train", "--out", str(run_copy), "--resume", "auto", "--epochs", "2"]) == 0
    assert checkpoint.load(run_copy / "checkpoints" / "last.pt")["epoch"] == 2
    assert max(json.loads(line)["epoch"] for line in metrics.read_text().splitlines()) == 1  # 0-based


def test_a_read_only_run_still_prints_its_accuracy(run_copy, cifar10_dir):
    """The accuracy was computed and lost with the file that could not be written."""
    proc = run_in(
        run_copy, "eval", "--run", str(run_copy), "--device", "cpu", "--knn-k", "5", "--no-progress"
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith("knn accuracy 0.") and "wrote" not in proc.stdout, proc.stdout
    err = proc.stderr.strip().splitlines()[-1]
    assert f"cannot write {run_copy / 'eval-knn.json'} (Permission denied)" in err
    assert "the accuracy above was not saved: make the run directory writable" in err
    assert not (run_copy / "eval-knn.json").exists()


@pytest.mark.parametrize("command", ["export", "embed"])
def test_an_output_onto_a_folder_or_an_unwritable_place(run_copy, tmp_path, capsys, command):
    name = "encoder.safetensors" if command == "export" else "features.npy"
    folder = tmp_path / name
    folder.mkdir()
    args = [command, "--run", str(run_copy), *(["--device", "cpu", "--no-progress"] * (command == "embed"))]
    err = fails_with([*args, "--out", str(folder)], capsys)
    assert f"--out {folder} is a folder; name a file in it, e.g. {folder / name}" in err
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    err = fails_with([*args, "--out", str(blocked / name)], capsys)
    expected = "is not writable (it or a folder above it is a file); choose another --out"
    assert f"the folder of --out {blocked / name} {expected}" in err
    assert blocked.read_text() == "in the way" and list(folder.iterdir()) == []


def test_bench_out_in_the_way(tmp_path, capsys):
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    args = ["bench", "loss", "--device", "cpu", "--providers", "eager", "--sizes", "8", "--dims", "4"]
    err = fails_with([*args, "--reps", "1", "--warmup", "1", "--out", str(blocked)], capsys)
    assert f"--out {blocked} is not writable (it or a folder above it is a file); choose another --out" in err
    assert blocked.read_text() == "in the way"


def _truncate(run: Path) -> None:
    (run / "config.json").write_text((run / "config.json").read_text()[:40])


def _edit(key, value):
    def edit(run: Path) -> None:
        saved = json.loads((run / "config.json").read_text())
        if key == "config":
            saved["config"] = value
        else:
            saved["config"][key] = value
        (run / "config.json").write_text(json.dumps(saved))

    return edit


@pytest.mark.parametrize(
    "damage,reason",
    [
        (_truncate, "its config.json is unreadable (Expecting"),
        (_edit("lr", "abc"), "(lr is 'abc', not a float)"),
        (_edit("width", 8.5), "(width is 8.5, not a int)"),
        (_edit("proj_dims", ["a"]), "(proj_dims is ['a'], not a tuple"),
        (_edit("config", [1, 2]), "(its 'config' is a list, not an object of options)"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "export", "embed", "resume"])
def test_a_damaged_or_hand_edited_config_is_one_line(run_copy, tmp_path, capsys, damage, reason, command):
    damage(run_copy)
    args = {
        "eval": ["eval", "--run", str(run_copy), "--device", "cpu"],
        "export": ["export", "--run", str(run_copy), "--out", str(tmp_path / "e.safetensors")],
        "embed": ["embed", "--run", str(run_copy), "--out", str(tmp_path / "e.npy")],
        "resume": ["train", "--out", str(run_copy), "--resume", "--epochs", "2"],
    }[command]
    err = fails_with(args, capsys)
    assert reason in err and ("restore it" in err), err


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_another_runs_checkpoint_is_named(run_copy, tmp_path, cifar10_dir, capsys, command):
    """A width-16 run's checkpoint copied into a width-8 run: load_state_dict's many-line error."""
    other = tmp_path / "other"
    assert main(tiny_args(cifar10_dir, other, "--width", "16")) == 0
    shutil.copy(other / "checkpoints" / "last.pt", run_copy / "checkpoints" / "last.pt")
    capsys.readouterr()
    args = (
        ["eval", "--run", str(run_copy), "--device", "cpu"]
        if command == "eval"
        else ["train", "--out", str(run_copy), "--resume", "--epochs", "2"]
    )
    err = fails_with(args, capsys)
    last = run_copy / "checkpoints" / "last.pt"
    # the checkpoint's record of its run's settings, read before any model is built (or data read)
    assert f"the run's config.json says --width 8 and its checkpoint {last} records 16" in err, err
    assert "comes from another run" in err
    if command == "resume":  # without the record (a hand-made checkpoint): the weights' shapes
        checkpoint.save_atomic({k: v for k, v in checkpoint.load(last).items() if k != "config"}, last)
        err = fails_with(args, capsys)
        assert f"{last} does not fit this run's model" in err
        assert "(backbone.stem.0.weight is (16, 3, 3, 3) there, (8, 3, 3, 3) here)" in err


@pytest.mark.parametrize(
    "key,value,typed",
    [
        ("image_size", 48, "48"),
        ("optimizer", "sgd", "'sgd'"),  # its LARS state then failed to load: KeyError 'dampening'
        ("n_views", 3, "3"),
        ("dataset", "cifar100", "'cifar100'"),  # CIFAR-100 was looked for (and downloaded) in its folder
    ],
)
def test_resume_refuses_a_config_edited_against_its_checkpoint(run_copy, capsys, key, value, typed):
    """eval, embed and export compared config.json with the checkpoint's record of the run's
    settings; resume did not: it trained on at an edited --image-size or --n-views, failed with a
    traceback on an edited --optimizer, and looked for an edited dataset. Every setting that a
    resume may not change is compared, before any data is read; nothing in the run changes."""
    _edit(key, value)(run_copy)
    before = {path.name: path.read_bytes() for path in run_copy.rglob("*") if path.is_file()}
    err = fails_with(["train", "--out", str(run_copy), "--resume", "--epochs", "2"], capsys)
    last = run_copy / "checkpoints" / "last.pt"
    assert f"the run's config.json says {flag(key)} {typed} and its checkpoint {last} records" in err, err
    assert "restore the run's own config.json and checkpoint" in err
    assert {path.name: path.read_bytes() for path in run_copy.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--seed", "99999999999999999999"], "--seed must be ≥ 0 and ≤ 9223372036854775807, got"),
        (["eval", "--run", "R", "--seed", str(2**64)], "--seed must be ≥ 0 and ≤ 9223372036854775807"),
        (["sweep", "--seeds", "0,-1"], "--seeds must be ≥ 0"),
        (["bench", "loss", "--device", "cpu", "--sizes", "10000000"], "--sizes 10000000 needs about"),
    ],
)
def test_values_too_large_for_the_code_that_uses_them(argv, message, tmp_path, capsys):
    out = [] if argv[0] == "eval" else ["--out", str(tmp_path / "out")]
    err = fails_with([*argv, *out], capsys)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_bench_loss_estimates_memory_before_allocating(tmp_path, capsys):
    """4·(10⁷)² bytes is what the allocator was asked for; the estimate says so first."""
    from fastsigclr.bench.loss import BenchLossConfig, check_runnable

    cfg = BenchLossConfig(device="cpu", sizes=(10_000_000,), providers=("eager",)).resolved(
        torch.device("cpu")
    )
    with pytest.raises(Exception, match=r"needs about 2,449,378.4 GiB .* use --sizes ≤ 6388, or --providers"):
        check_runnable(cfg, torch.device("cpu"), available=2**30)
    ok = BenchLossConfig(device="cpu", sizes=(6388,), providers=("eager",)).resolved(torch.device("cpu"))
    check_runnable(ok, torch.device("cpu"), available=2**30)
    # CUDA records a case that runs out of memory: only a size whose one bf16 matrix cannot fit goes.
    cuda = torch.device("cuda")
    fits = BenchLossConfig(device="cuda", sizes=(20_000,), providers=("eager",)).resolved(cuda)
    check_runnable(fits, cuda, available=2**30)  # 0.75 GiB of bf16
    huge = BenchLossConfig(device="cuda", sizes=(30_000,), providers=("eager",)).resolved(cuda)
    with pytest.raises(Exception, match=r"needs about 1.7 GiB .* \(2 bytes .*one matrix.* ≤ 23170"):
        check_runnable(huge, cuda, available=2**30)


def test_ccem_with_a_huge_t_runs(tmp_path, capsys):
    """--t 1e30 overflowed math.exp in the closed-form prediction."""
    argv = ["ccem", "--t", "1e30", "--n", "4", "--steps", "2", "--variant", "free", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["regime"] for r in rows] == ["etf"]


def test_a_jpeg_that_is_a_symlink_to_itself(tmp_path, capsys, monkeypatch):
    """os.stat of the loop raised ELOOP through the decoded cache's fingerprint."""
    from tiny_fixture import small_info, write_tiny

    from fastsigclr.data import DATASETS

    monkeypatch.setitem(DATASETS, "tinyimagenet", small_info())
    folder = write_tiny(tmp_path)
    jpeg = sorted((folder / "train").glob("*/images/*.JPEG"))[3]
    jpeg.unlink()
    jpeg.symlink_to(jpeg)
    err = fails_with(["data", "verify", "--dataset", "tinyimagenet", "--data-dir", str(tmp_path)], capsys)
    assert "Traceback" not in err
    argv = ["train", "--dataset", "tinyimagenet", "--data-dir", str(tmp_path), "--device", "cpu"]
    err = fails_with([*argv, "--batch-size", "4", "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert f"{jpeg} cannot be read (Too many levels of symbolic links); delete it" in err
    assert not (tmp_path / "run").exists()


def test_a_truncated_beton_says_which_file_and_to_delete_it(tmp_path, capsys, monkeypatch):
    pytest.importorskip("ffcv")
    from cifar_fixture import write_cifar

    from fastsigclr.data import DATASETS

    monkeypatch.setitem(DATASETS, "cifar10", write_cifar(tmp_path))
    ffcv = ["--ffcv-dir", str(tmp_path / "ffcv")]
    assert main(["data", "write-ffcv", "--data-dir", str(tmp_path), "--no-progress", *ffcv]) == 0
    beton = tmp_path / "ffcv" / "cifar10-train.beton"
    whole = beton.read_bytes()
    beton.write_bytes(whole[: len(whole) // 3])
    record = beton.with_name(beton.name + ".json")
    written = json.loads(record.read_text())
    # A record edited to the cut size, with no tables digest (an earlier fastsigclr's), vouches for
    # the file: FFCV's reader finds the damage. (With its digest the cut file is written anew.)
    record.write_text(json.dumps({"content_key": written["content_key"], "size": len(whole) // 3}))
    argv = ["train", "--data-dir", str(tmp_path), "--device", "cpu", "--loader", "ffcv", *ffcv]
    argv += ["--width", "8", "--batch-size", "20", "--epochs", "1", "--no-progress", "--no-tensorboard"]
    err = fails_with([*argv, "--out", str(tmp_path / "run")], capsys)
    assert f"{beton} is truncated or damaged (" in err
    assert "delete it and run again (it is written anew), or rerun `fastsigclr data write-ffcv" in err
    record.write_text(json.dumps(written))  # its own record: the cut file is found and written anew
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert f"{beton} is truncated or damaged ({len(whole) // 3} bytes, {len(whole)} as written)" in (
        capsys.readouterr().err
    )
    assert beton.stat().st_size == len(whole)


def test_a_log_that_cannot_start_keeps_no_file_open(tmp_path, monkeypatch):
    """metrics.jsonl's descriptor is closed when TensorBoard cannot start (a read-only
    tensorboard/ folder) and when a log is dropped without close()."""
    import sys
    import types

    from fastsigclr import runlog

    def refused(_folder):
        raise PermissionError(errno.EACCES, "Permission denied", "tensorboard")

    fake = types.SimpleNamespace(SummaryWriter=refused)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(PermissionError):
            runlog.RunLog(tmp_path)
    dropped = runlog.RunLog(tmp_path, tensorboard=False)
    dropped.write({"epoch": 0, "step": 1})
    del dropped
    assert len(os.listdir("/proc/self/fd")) == before


def test_resume_on_data_with_other_classes_names_the_data_not_the_model():
    """A checkpoint whose probe has 3 classes, resumed where the data has 5 (a --data-dir whose
    train/ holds other class folders), was called "another run's checkpoint"."""
    from types import SimpleNamespace

    import torch

    from fastsigclr.config import FastSigCLRError
    from fastsigclr.recipe import resume

    def setup(classes: int) -> SimpleNamespace:
        return SimpleNamespace(
            probe=torch.nn.Linear(8, max(classes, 1)),  # as recipe.build_model makes it
            info=SimpleNamespace(name="folder", num_classes=classes),
            cfg=SimpleNamespace(data_dir="/data/other"),
        )

    with pytest.raises(FastSigCLRError) as err:
        resume(setup(5), {"probe": torch.nn.Linear(8, 3).state_dict()})
    assert str(err.value).startswith(
        "the run was trained on 3 classes and its data now has 5 classes (folder"
    )
    with pytest.raises(FastSigCLRError) as err:  # a run on a flat folder of unlabeled images
        resume(setup(5), {"probe": torch.nn.Linear(8, 1).state_dict()})
    assert "trained on unlabeled images (or 1 class) and its data now has 5 classes" in str(err.value)
    with pytest.raises(FastSigCLRError) as err:
        resume(setup(0), {"probe": torch.nn.Linear(8, 3).state_dict()})
    assert "trained on 3 classes and its data now has unlabeled images (folder in" in str(err.value)
    with pytest.raises(FastSigCLRError) as err:
        resume(setup(1), {"probe": torch.nn.Linear(8, 3).state_dict()})
    assert "trained on 3 classes and its data now has 1 class (folder in" in str(err.value)


def test_run_given_as_a_file_inside_the_run_names_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    for inside in (run / "config.json", run / "checkpoints" / "last.pt"):
        for command in (["eval"], ["export", "--out", str(tmp_path / "e.safetensors")]):
            err = fails_with([*command, "--run", str(inside)], capsys)
            assert f"--run {inside} is inside a run; pass the run's directory: --run {run}" in err
    err = fails_with(["eval", "--run", str(tmp_path / "nothing")], capsys)
    assert f"--run {tmp_path / 'nothing'} does not exist; pass --run DIR of a train run" in err
    err = fails_with(["eval", "--run", str(tmp_path)], capsys)  # a folder, not a run
    assert "is not a run directory (no config.json)" in err


def test_under_torchrun_an_error_is_said_once_per_node_or_names_its_rank(monkeypatch):
    """An error every process of a node raises alike (``alike``: the command line, rank 0's failure
    passed on) is said by LOCAL_RANK 0; another process waits for torchrun to stop it and says it,
    naming its rank, only if it is still running. An error of one rank's own names the rank."""
    from fastsigclr import config
    from fastsigclr.config import ConfigError, FastSigCLRError, error_text, raising_alike

    slept = []
    monkeypatch.setattr(config.time, "sleep", slept.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert error_text(ConfigError("bad")) == error_text(FastSigCLRError("bad")) == "fastsigclr: error: bad\n"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert error_text(FastSigCLRError("cannot read x")) == "fastsigclr: error: rank 3: cannot read x\n"
    assert error_text(FastSigCLRError("rank 3 of 4 could not join")) == (
        "fastsigclr: error: rank 3 of 4 could not join\n"  # it names its rank already
    )
    assert slept == []
    for err in (ConfigError("bad"), FastSigCLRError("bad", alike=True)):
        assert error_text(err) == "fastsigclr: error: rank 3: bad\n"
    assert slept == [config.ALIKE_GRACE_S] * 2
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert error_text(ConfigError("bad")) == "fastsigclr: error: bad\n"
    assert error_text(FastSigCLRError("own")) == "fastsigclr: error: rank 3: own\n"
    assert len(slept) == 2

    def refuse():
        raise FastSigCLRError("refused")

    with pytest.raises(FastSigCLRError) as raised:
        raising_alike(refuse)
    assert raised.value.alike and not FastSigCLRError("x").alike
