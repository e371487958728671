"""Faults that went unsaid or were misreported: a damaged checkpoint taken for divergence, a
damaged line of metrics.jsonl dropped, a sweep report that forgot runs, a --limit-train larger
than the data recorded as used, a failed start that left the data folder it made, a moved run
named by its old path, usable data called corrupt, benchmarks that measure nothing, option values
that begin with '-', option typos."""

import json
import pickle
import struct

import pytest
import run_fixture
import torch
from cifar_fixture import write_cifar
from run_fixture import fails_with, tiny_args

from fastsigclr import checkpoint
from fastsigclr.cli import main
from fastsigclr.data import DATASETS
from fastsigclr.data.broken import recorded_ids
from fastsigclr.runlog import read_metrics

finished_run, run_copy = run_fixture.finished_run, run_fixture.run_copy  # the fixtures
LAST = ("checkpoints", "last.pt")


def _nan_into_a_tensor(path) -> None:
    """Overwrite one float of the projector's first weight in the file with a NaN, as a bad disk
    or copy would: the file still loads."""
    weight = torch.load(path, weights_only=True)["model"]["projector.0.weight"]
    raw = bytearray(path.read_bytes())
    at = raw.find(weight.contiguous().numpy().tobytes()[:64])
    assert at > 0 and raw.find(weight.contiguous().numpy().tobytes()[:64], at + 1) == -1
    raw[at + 8 : at + 12] = struct.pack("<f", float("nan"))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("command", ["resume", "eval"])
def test_a_damaged_checkpoint_is_named_damaged_not_diverged(run_copy, capsys, command):
    last = run_copy.joinpath(*LAST)
    _nan_into_a_tensor(last)
    args = (
        ["train", "--out", str(run_copy), "--resume", "--epochs", "2"]
        if command == "resume"
        else ["eval", "--run", str(run_copy), "--device", "cpu", "--no-progress"]
    )
    err = fails_with(args, capsys)
    assert f"checkpoint {last} is damaged: its tensors no longer match the digest" in err
    assert "diverged" not in err


def test_a_checkpoint_written_before_digests_still_loads(run_copy):
    last = run_copy.joinpath(*LAST)
    state = torch.load(last, weights_only=True)
    assert state.pop(checkpoint.DIGEST) == checkpoint.tensor_digest(state)
    torch.save(state, last)
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "2"]) == 0
    assert checkpoint.DIGEST in torch.load(last, weights_only=True)  # the new one has it


def test_a_damaged_record_of_left_out_images_is_one_line(run_copy, capsys):
    """The checkpoint's ids of the images earlier sessions left out (DALI) are read as untrusted:
    one that is not a list of ids of the split's images is said in one line and counts none."""
    last = run_copy.joinpath(*LAST)
    state = checkpoint.load(last)
    assert state["left_out"] == []
    checkpoint.save_atomic({**state, "left_out": [3, 64]}, last)
    (run_copy / "summary.json").unlink()  # the resumed session only writes it: its loader reads nothing
    assert main(["train", "--out", str(run_copy), "--resume"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "left out" in line]
    assert said == [
        "note: the checkpoint's record of the images earlier sessions left out is damaged (not a list of "
        "ids of the 64 images): summary.json's train_images leaves out only those met from now on"
    ]
    assert json.loads((run_copy / "summary.json").read_text())["train_images"] == 64
    assert recorded_ids({"left_out": [3, 63]}, "left_out", 64) == {3, 63}
    for damaged in ([3, "7"], [-1], [True], "3,7", {"3": 1}, [3.0]):
        for key in ("left_out", "undecoded"):
            assert recorded_ids({key: damaged}, key, 64) == set()
            assert capsys.readouterr().err.count("is damaged") == 1
        assert recorded_ids({"left_out": damaged}, "left_out", 64, announce=False) == set()
    assert capsys.readouterr().err == ""


def test_a_damaged_line_of_metrics_is_set_aside_and_named(run_copy, capsys):
    path = run_copy / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(1, '{"kind": "step", "ep\x00och": ')
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert f"{path} line(s) 2 are not JSON records: moved to {path}.damaged" in err
    assert (run_copy / "metrics.jsonl.damaged").read_text() == '2\t{"kind": "step", "ep\x00och": \n'
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4]


def test_a_line_that_is_not_utf8_is_set_aside_as_it_was(run_copy, capsys):
    """One bad byte (a damaged disk block) raised UnicodeDecodeError from the resume and from the
    sweep's report; the line is now set aside, its bytes kept, as any line that is no record."""
    from fastsigclr.runfiles import epoch_records

    path = run_copy / "metrics.jsonl"
    lines = path.read_bytes().splitlines()
    bad = lines[1][:10] + b"\xff" + lines[1][11:]
    path.write_bytes(b"\n".join([lines[0], bad, *lines[2:]]) + b"\n")
    assert epoch_records(path) == 1  # what --resume auto and the sweep read
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "2"]) == 0
    assert f"{path} line(s) 2 are not JSON records: moved to {path}.damaged" in capsys.readouterr().err
    assert (run_copy / "metrics.jsonl.damaged").read_bytes() == b"2\t" + bad + b"\n"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 3, 4]  # step 2's is in .damaged


def test_records_lost_from_metrics_are_said_on_resume(run_copy, capsys):
    """A metrics.jsonl deleted (or its epoch's lines cut out) resumed without a word, and the file
    went on from the checkpoint's step as if complete."""
    path = run_copy / "metrics.jsonl"
    path.unlink()
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert f"{path} holds no record of epoch(s) 1, which the checkpoint has trained: those records" in err
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "3"]) == 0  # epoch 2's is there
    assert "holds no record of epoch(s) 1," in capsys.readouterr().err  # still lost, said again
    epochs = [r["epoch"] for r in read_metrics(run_copy) if r["kind"] == "epoch"]
    assert epochs == [1, 2]


def test_a_metrics_file_that_is_a_folder_is_one_line(run_copy, capsys):
    path = run_copy / "metrics.jsonl"
    path.unlink()
    path.mkdir()
    err = fails_with(["train", "--out", str(run_copy), "--resume", "--epochs", "2"], capsys)
    assert f"{path} is a folder, not the run's records: move it out of the run directory" in err


def test_a_record_edited_by_hand_is_set_aside_not_a_traceback(run_copy, capsys):
    """An epoch or step that is not a whole number ("0") is not a record the resume can place."""
    path = run_copy / "metrics.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["epoch"] = str(record["epoch"])
    lines[1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")
    assert main(["train", "--out", str(run_copy), "--resume", "--epochs", "2"]) == 0
    assert f"{path} line(s) 2 are not JSON records" in capsys.readouterr().err
    assert (run_copy / "metrics.jsonl.damaged").read_text() == f"2\t{lines[1]}\n"


def test_the_damaged_lines_file_is_never_written_through_a_link(run_copy, tmp_path, capsys):
    path = run_copy / "metrics.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")
    elsewhere = tmp_path / "someone-elses.txt"
    elsewhere.write_text("keep me\n")
    (run_copy / "metrics.jsonl.damaged").symlink_to(elsewhere)
    err = fails_with(["train", "--out", str(run_copy), "--resume", "--epochs", "2"], capsys)
    assert f"{run_copy / 'metrics.jsonl.damaged'} is a symbolic link" in err
    assert elsewhere.read_text() == "keep me\n"


def test_limit_train_beyond_the_data_is_refused(cifar10_dir, tmp_path, capsys):
    """It trained on all 50,000 images while config.json recorded 10,000,000."""
    out = tmp_path / "run"
    err = fails_with(tiny_args(cifar10_dir, out, "--limit-train", "10000000"), capsys)
    assert "--limit-train 10000000 is more than the 50000 train images of cifar10" in err
    assert "pass --limit-train 50000 or less, or leave it out" in err
    err = fails_with(tiny_args(cifar10_dir, out, "--limit-test", "10001"), capsys)
    assert "--limit-test 10001 is more than the 10000 test images" in err
    assert not out.exists()


def test_a_failed_start_removes_the_data_folder_it_made(tmp_path, capsys):
    data = tmp_path / "nonexist" / "deeper"
    args = ["train", "--data-dir", str(data), "--no-download", "--device", "cpu"]
    assert "cifar10 not found" in fails_with([*args, "--out", str(tmp_path / "run")], capsys)
    assert not (tmp_path / "nonexist").exists() and not (tmp_path / "run").exists()


def test_a_moved_run_reports_where_it_is_now(run_copy, tmp_path, capsys):
    moved = tmp_path / "moved"
    run_copy.rename(moved)
    assert main(["train", "--out", str(moved), "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {moved}\n" in out and str(run_copy) not in out


@pytest.fixture
def small_cifar(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    info = write_cifar(data_dir)
    monkeypatch.setitem(DATASETS, "cifar10", info)
    return data_dir, data_dir / info.folder


def test_verify_tells_unreadable_from_re_encoded(small_cifar, capsys):
    data_dir, folder = small_cifar
    verify = ["data", "verify", "--data-dir", str(data_dir)]
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=4))  # other bytes, same data
    assert main(verify) == 1
    captured = capsys.readouterr()
    assert "data_batch_2" in captured.out and "Traceback" not in captured.err
    assert "data_batch_2 has md5" in captured.err and "Each loads as a complete batch" in captured.err
    assert "usable data" in captured.err and "keep it" in captured.err and "delete" not in captured.err
    (folder / "data_batch_4").write_bytes((folder / "data_batch_4").read_bytes()[:500])
    err = fails_with(verify, capsys)
    assert "data_batch_4 does not load (" in err and "data_batch_2 has md5" in err
    assert f"The files are corrupt: delete {folder} and download it again" in err


def test_bench_loss_that_can_measure_nothing_here_fails(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the Triton provider runs here")
    args = ["bench", "loss", "--device", "cpu", "--providers", "triton", "--sizes", "64"]
    err = fails_with([*args, "--out", str(tmp_path / "b")], capsys)
    assert "nothing to measure on this cpu: triton (needs CUDA)" in err
    assert "choose --providers among eager, compiled, chunked here" in err
    assert not (tmp_path / "b").exists()
    # each provider named once, its reasons per loss where they differ
    err = fails_with([*args, "--out", str(tmp_path / "b"), "--providers", "siglip-kernel,triton"], capsys)
    assert err.count("siglip-kernel (") == 1 and err.count("triton (") == 1, err
    assert "siglip-kernel (sigclr: needs CUDA; simclr: siglip-kernel computes the sigmoid loss only)" in err


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--logit-bias", "-inf", "--logit-bias must be a finite number, got -inf"),
        ("--proj-dims", "-1,5", "--proj-dims must be ≥ 1, got -1"),
        ("--lr", "-1e-3", "--lr must be ≥ 0"),
        # An empty value (an unset shell variable) meant "unset": the preset's 1000 epochs.
        ("--epochs", "", "--epochs was given an empty value: pass a value, or `none` to leave it unset"),
        ("--lr", " ", "--lr was given an empty value: pass a value"),
        # Empty items were dropped: ",," gave a traceback, "64,,32" a two-layer projector.
        (
            "--proj-dims",
            ",,",
            "--proj-dims: ',,' has an empty value (two commas in a row, or one at an end); pass values",
        ),
        (
            "--proj-dims",
            "64,,32",
            "'64,,32' has an empty value (two commas in a row, or one at an end); pass values separated "
            "by single commas, e.g. 64,32",
        ),
    ],
)
def test_option_values_that_begin_with_a_dash(option, value, message, tmp_path, capsys):
    argv = ["train", "--device", "cpu", "--no-download", "--data-dir", str(tmp_path)]
    assert message in fails_with([*argv, option, value, "--out", str(tmp_path / "r")], capsys)


def test_option_typos_get_the_closest_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--lr-rate", "3", "--widht", "8", "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unrecognized arguments: --lr-rate 3 --widht 8; did you mean --lr or --width?" in err
    assert "`fastsigclr train --help` lists the options" in err


def test_a_diverged_model_or_probe_is_not_scored(run_copy, capsys):
    """A linear probe whose loss is NaN, and a checkpoint whose backbone gives NaN features, were
    scored (a chance-level accuracy written to eval-*.json): both are now one line naming the fix."""
    evaluate = ["eval", "--run", str(run_copy), "--device", "cpu", "--no-progress"]  # knn
    probe = ["linear", "--linear-epochs", "2"]
    err = fails_with([*evaluate, *probe, "--linear-lr", "3e38"], capsys)
    assert "the linear probe diverged (loss nan in epoch " in err and "at --linear-lr 3e+38: lower" in err
    err = fails_with([*evaluate, *probe, "--linear-weight-decay", "1e30"], capsys)  # it blamed --linear-lr
    assert "at --linear-lr 0.2 and --linear-weight-decay 1e+30: their product, 2e+29, is past 3.8" in err
    state = checkpoint.load(run_copy.joinpath(*LAST))
    next(v for k, v in state["model"].items() if k.startswith("backbone.") and v.is_floating_point()).fill_(
        float("nan")
    )
    checkpoint.save_atomic(state, run_copy.joinpath(*LAST))
    embed = ["embed", "--run", str(run_copy), "--out", str(run_copy / "f.npy"), "--no-progress"]
    for command, split in ((evaluate, "64 of the 64 train"), (embed, "50 of the 50 test")):
        err = fails_with(command, capsys)
        assert f"the backbone gives non-finite features (NaN or inf) for {split} images" in err, err
        assert "checkpoint (epoch 1) holds a diverged model" in err
    assert not list(run_copy.glob("eval-*.json")) and not (run_copy / "f.npy").exists()


def test_a_mid_epoch_checkpoint_is_named_as_such(run_copy, capsys, monkeypatch):
    """eval and export called a checkpoint written inside epoch 2 (--checkpoint-every) "epoch 1",
    the last finished epoch: they now say how far into the next one it is, and its step. eval's
    file records the run's absolute path, not the relative one typed (here, its folder's name)."""
    state = checkpoint.load(run_copy.joinpath(*LAST))
    state.update(step=3, position={"batch": 1, "loss_sum": 0.0, "loss_steps": 1, "probe_correct": 0.0})
    checkpoint.save_atomic(state, run_copy.joinpath(*LAST))
    monkeypatch.chdir(run_copy.parent)
    assert main(["eval", "--run", run_copy.name, "--device", "cpu", "--no-progress"]) == 0
    assert "(epoch 1 and 1 batch of epoch 2, 50 test images)" in capsys.readouterr().out
    result = json.loads((run_copy / "eval-knn.json").read_text())
    assert result["run"] == str(run_copy.absolute())
    assert (result["epoch"], result["step"], result["epoch_batches"]) == (1, 3, 1)
    assert result["k"] == 64  # the run's --knn-k 200 over a bank of 64: the k the vote took
    saved = json.loads((run_copy / "config.json").read_text())["config"]["data_dir"]
    assert result["data_dir"] == saved  # the images it scored, recorded beside the accuracy
    out = run_copy.parent / "encoder.safetensors"
    assert main(["export", "--run", str(run_copy), "--out", str(out)]) == 0
    assert "width 8 backbone, epoch 1 and 1 batch of epoch 2" in capsys.readouterr().out
    from fastsigclr.export import read_metadata

    meta = read_metadata(out)
    assert (meta["epoch"], meta["step"], meta["epoch_batches"]) == ("1", "3", "1")


def test_a_sweeps_diverged_run_is_told_to_start_a_new_sweep(tmp_path):
    """Inside a sweep, "run the same command again with a lower --lr" could not be followed: the
    sweep refused another --lr in its folder (its budget), and the same command diverged again."""
    from types import SimpleNamespace

    from fastsigclr.divergence import diverged
    from fastsigclr.runconfig import TrainConfig

    cfg = TrainConfig(dataset="cifar10", out=str(tmp_path), lr=1e30).resolved()
    run = SimpleNamespace(path=tmp_path, cfg=cfg, kept=None, again=None)
    assert "no epoch finished: run the same command again with a lower --lr" in str(diverged(run, "x", 1, 0))
    run.again = "the same sweep command continues it (and the runs after it)"
    said = str(diverged(run, "x", 1, 0))
    assert (
        "a sweep's settings hold for all its runs: start a new sweep with another --out and a lower --lr"
        in said
    )
