"""What a command's output may replace, and what it reads: export, embed, ccem and bench replace
only a file of their own kind at their --out (another run's checkpoint, a dataset file, a sweep's
results were replaced without a word); an interrupted `bench loss` keeps the last complete results;
damaged batch-norm statistics and weights of another dtype are refused; JSON nested too deeply to
decode is a damaged file like any other; standard output on a full disk is one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from run_fixture import fails_with, finished_run, run_copy  # noqa: F401 (fixtures)

from fastsigclr import checkpoint
from fastsigclr.bench import loss as bench_loss
from fastsigclr.cli import main

LAST = ("checkpoints", "last.pt")
CCEM_SMALL = ["--n", "4", "--t", "1", "--variant", "free", "--steps", "2"]
LOSS_SMALL = [
    "--device",
    "cpu",
    "--sizes",
    "8",
    "--dims",
    "4",
    "--reps",
    "1",
    "--warmup",
    "1",
    "--no-progress",
]


def test_export_and_embed_replace_only_their_own_files(run_copy, tmp_path, capsys):  # noqa: F811
    other = run_copy.parent / "other"
    other.mkdir()
    foreign = {other / "last.pt": run_copy.joinpath(*LAST).read_bytes(), other / "data": b"\x00" * 64}
    for path, data in foreign.items():
        path.write_bytes(data)
        line = fails_with(["export", "--run", str(run_copy), "--out", str(path)], capsys)
        assert line == (
            f"fastsigclr: error: --out {path} exists and is not an encoder `fastsigclr export` wrote, the "
            f"only kind of file fastsigclr replaces there; delete it first, or choose another --out"
        )
        assert path.read_bytes() == data
    encoder = tmp_path / "enc.safetensors"
    for _ in range(2):  # its own earlier export is replaced
        assert main(["export", "--run", str(run_copy), "--out", str(encoder)]) == 0
    embed = ["embed", "--run", str(run_copy), "--no-progress", "--device", "cpu", "--out"]
    features = tmp_path / "f.npy"
    features.write_text("my notes")
    line = fails_with([*embed, str(features)], capsys)
    assert line.startswith(f"fastsigclr: error: --out {features} exists and is not a .npy file, the only")
    features.unlink()
    labels = tmp_path / "f.labels.npy"
    labels.write_text("my notes")
    line = fails_with([*embed, str(features)], capsys)
    assert line.startswith(f"fastsigclr: error: {labels}, where embed writes the labels of --out {features}, "
                           f"exists and is not a .npy file")  # fmt: skip
    assert labels.read_text() == "my notes" and not features.exists()
    labels.unlink()
    for _ in range(2):
        assert main([*embed, str(features)]) == 0
    assert np.load(features).shape[0] == np.load(labels).shape[0] == 50


def test_ccem_and_bench_replace_only_their_own_results(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    results = {"date": "2026-01-01", "command": "fastsigclr sweep", "versions": {}, "runs": []}
    (sweep / "results.json").write_text(json.dumps(results))
    line = fails_with(["ccem", "--no-progress", *CCEM_SMALL, "--out", str(sweep)], capsys)
    assert line == (f"fastsigclr: error: {sweep / 'results.json'} exists and is not ccem's results, the only "
                    f"results.json ccem replaces; choose another --out")  # fmt: skip
    assert json.loads((sweep / "results.json").read_text()) == results
    (sweep / "data.csv").write_text("a,b\n")  # a table of the user's where ccem's would go
    ccem = tmp_path / "ccem"
    for _ in range(2):
        assert main(["ccem", "--no-progress", *CCEM_SMALL, "--out", str(ccem)]) == 0
    (ccem / "results.csv").write_text("a,b\n1,2\n")
    line = fails_with(["ccem", "--no-progress", *CCEM_SMALL, "--out", str(ccem)], capsys)
    assert f"{ccem / 'results.csv'} exists and is not a results table of fastsigclr's" in line
    bench = tmp_path / "bench"
    assert main(["bench", "loss", *LOSS_SMALL, "--providers", "eager", "--out", str(bench)]) == 0
    assert not (bench / "loss-cpu.partial.json").exists()
    # `bench plot r.png`, r.png a results JSON: the plot went to r.png itself, over its input
    named_png = tmp_path / "r.png"
    named_png.write_bytes((bench / "loss-cpu.json").read_bytes())
    line = fails_with(["bench", "plot", str(named_png)], capsys)
    assert f"{named_png} exists and is not a PNG image" in line
    assert json.loads(named_png.read_text())["benchmark"] == "loss"
    (bench / "loss-cpu.json").write_text('{"mine": 1}')
    line = fails_with(["bench", "loss", *LOSS_SMALL, "--providers", "eager", "--out", str(bench)], capsys)
    assert f"{bench / 'loss-cpu.json'} exists and is not a results file of fastsigclr's" in line


def test_an_interrupted_bench_loss_keeps_the_last_complete_results(tmp_path, capsys, monkeypatch):
    """Its cases went to loss-<device>.json after each one: a Ctrl-C replaced the complete results
    with a partial file beside the old plot. They now go to loss-<device>.partial.json."""
    out = tmp_path / "bench"
    argv = ["bench", "loss", *LOSS_SMALL, "--providers", "eager,chunked", "--out", str(out)]
    assert main(argv) == 0
    complete = (out / "loss-cpu.json").read_bytes()
    plot = (out / "loss-cpu.png").read_bytes()
    measure, calls = bench_loss.measure_case, []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_loss, "measure_case", interrupted_at_the_second)
    assert main([*argv, "--dims", "6"]) == 130
    err = capsys.readouterr().err
    assert f"bench loss: the 1 case measured so far is in {out / 'loss-cpu.partial.json'}" in err
    assert (out / "loss-cpu.json").read_bytes() == complete and (out / "loss-cpu.png").read_bytes() == plot
    partial = json.loads((out / "loss-cpu.partial.json").read_text())
    assert partial["complete"] is False and [r["dim"] for r in partial["results"]] == [6]


def test_bench_train_does_not_time_compilation_as_a_step(capsys):
    line = fails_with(["bench", "train", "--device", "cpu", "--compile", "--warmup", "0"], capsys)
    assert line == ("fastsigclr: error: --compile needs --warmup 1 or more: the first step compiles the "
                    "model, which would be timed as a training step")  # fmt: skip


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("inf", "backbone.stem.1.running_var with NaN or inf"),
        ("negative", "backbone.stem.1.running_var with a negative variance"),
        ("int64", "backbone.stem.0.weight as int64, not float32"),
    ],
)
def test_damaged_statistics_or_dtypes_are_refused(run_copy, tmp_path, capsys, damage, said):  # noqa: F811
    """An infinite running variance gave every image one feature (eval: chance, embed: rc 0); a
    negative one was exported; integer weights were exported as integers."""
    state = checkpoint.load(run_copy.joinpath(*LAST))
    model = state["model"]
    if damage == "int64":
        model["backbone.stem.0.weight"] = model["backbone.stem.0.weight"].long()
    else:
        model["backbone.stem.1.running_var"].fill_(float("inf") if damage == "inf" else -1.0)
    checkpoint.save_atomic(state, run_copy.joinpath(*LAST))
    commands = [
        ["export", "--run", str(run_copy), "--out", str(tmp_path / "e.safetensors")],
        ["embed", "--run", str(run_copy), "--out", str(tmp_path / "f.npy"), "--device", "cpu"],
        ["eval", "--run", str(run_copy), "--device", "cpu", "--no-progress"],
    ]
    for argv in commands:
        line = fails_with(argv, capsys)
        assert line == (f"fastsigclr: error: {run_copy.joinpath(*LAST)} holds {said}, which no training "
                        f"writes: the file was damaged or edited; restore it from a copy of the run, or "
                        f"train again")  # fmt: skip
    assert not list(tmp_path.glob("e.*")) + list(tmp_path.glob("f*")) + list(run_copy.glob("eval-*"))


def test_json_nested_too_deeply_is_a_damaged_file(run_copy, tmp_path, capsys):  # noqa: F811
    """A RecursionError traceback from the JSON decoder."""
    (run_copy / "config.json").write_text("[" * 100_000)
    line = fails_with(["export", "--run", str(run_copy), "--out", str(tmp_path / "e.safetensors")], capsys)
    assert "config.json" in line and "nested too deeply to read" in line, line
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    line = fails_with(["bench", "plot", str(deep)], capsys)
    assert str(deep) in line and "nested too deeply to read" in line, line


def test_standard_output_on_a_full_disk_or_closed(tmp_path):
    """`info > /dev/full`: an OSError traceback; `info >&-`: AttributeError on None.flush()."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    command = [sys.executable, "-m", "fastsigclr", "info"]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert done.returncode == 74 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "fastsigclr: error: cannot write to standard output (No space left on device); the command "
        "stopped there (the files it writes are whole or absent, never cut); send its output elsewhere"
    )
    closed = subprocess.run([*command], stdout=None, stderr=subprocess.PIPE, text=True, timeout=300,
                            preexec_fn=lambda: os.close(1))  # fmt: skip
    assert closed.returncode == 0 and "Traceback" not in closed.stderr, closed.stderr[-2000:]


def test_eval_and_embed_take_max_broken(tmp_path, capsys):
    """Their refusal of an undecodable image said "raise --max-broken", an option they lacked."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("cat", "dog"):
            (tmp_path / "data" / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "data" / split / c / f"{i}.png")
    run = tmp_path / "run"
    train = f"train --dataset folder --data-dir {tmp_path / 'data'} --device cpu --width 8 --proj-dims 32,16 "
    train += (
        f"--batch-size 8 --epochs 1 --image-size 32 --knn-every 0 --no-progress --no-tensorboard --out {run}"
    )
    assert main(train.split()) == 0
    (tmp_path / "data" / "val" / "dog" / "1.png").write_text("garbage")
    embed = ["embed", "--run", str(run), "--out", str(tmp_path / "f.npy"), "--device", "cpu", "--no-progress"]
    evaluate = ["eval", "--run", str(run), "--device", "cpu", "--no-progress"]
    for argv in (embed, evaluate):
        assert fails_with(argv, capsys).endswith("more than --max-broken 0.01: repair or delete the files "
                                                 "listed above, or raise --max-broken")  # fmt: skip
        assert main([*argv, "--max-broken", "0.2"]) == 0
        assert "folder test: skipped that image (at most --max-broken 0.2)" in capsys.readouterr().err
    assert np.load(tmp_path / "f.npy").shape == (7, 64)
    assert main([*embed, "--max-broken", "0.2"]) == 0  # again over its own f.npy, .labels.npy, .files.json
    assert len(json.loads((tmp_path / "f.files.json").read_text())["files"]) == 7


def test_an_error_of_another_file_is_not_taken_for_stdouts(capsys):
    """Every OSError reaching the command line was tried as stdout's: a missing file was lost (141)
    where stdout's reader had left, or reported as a full stdout (74)."""
    import errno

    from fastsigclr.entry import output_failed

    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere/x")
    with pytest.raises(FileNotFoundError):
        output_failed(missing)
    full = OSError(errno.ENOSPC, "No space left on device")  # not stdout's: stdout here takes writes
    with pytest.raises(OSError, match="No space left"):
        output_failed(full)
    assert capsys.readouterr().out == "\n"  # the probe of stdout, all that reached it


def test_a_short_write_of_numpy_is_a_full_disk(tmp_path):
    """embed on a full disk said "cannot write f.npy (640000 requested and 76768 written)": numpy's
    tofile reports a full disk without an errno."""
    err = checkpoint.WriteError(tmp_path / "f.npy", OSError("640000 requested and 76768 written"), "fix it")
    assert (
        err.no_space
        and str(err) == f"no space left on device writing {tmp_path / 'f.npy'}; free space and fix it"
    )
    other = checkpoint.WriteError(tmp_path / "f.npy", OSError("something else"), "fix it")
    assert not other.no_space and str(other) == f"cannot write {tmp_path / 'f.npy'} (something else); fix it"


@pytest.mark.parametrize("stands", ["a file", "a symbolic link"])
def test_a_checkpoints_folder_that_is_not_one_is_named(run_copy, tmp_path, capsys, stands):  # noqa: F811
    """It was "has no checkpoint: it has not finished an epoch; train it (or resume it) first"."""
    folder = run_copy / "checkpoints"
    for part in folder.iterdir():
        part.unlink()
    folder.rmdir()
    if stands == "a file":
        folder.write_text("")
    else:
        folder.symlink_to(tmp_path / "elsewhere")
    line = fails_with(["export", "--run", str(run_copy), "--out", str(tmp_path / "e.safetensors")], capsys)
    assert line == (f"fastsigclr: error: {folder} is {stands}, where the run keeps its checkpoints in a "
                    f"folder; restore the run from a copy")  # fmt: skip
