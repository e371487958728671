"""Bad input on the command line ends as one line, `fastsigclr: error: ...`, exit status 2, no
traceback: numbers that are not finite or out of range, batches larger than the data, benchmark
files that are not benchmark files, CCEM grids that cannot fit in memory."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastsigclr.ccem import CcemConfig, check_memory
from fastsigclr.cli import main
from fastsigclr.config import FastSigCLRError


def cli_error(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2, return the one-line message."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsigclr: error: ") and "\n" not in err, err
    return err


TRAIN = ["train", "--device", "cpu", "--no-download", "--no-progress"]
# Each runs to the point where today's code crashed or went on; the data dir is empty, so a value
# that slipped through ends at "cifar10 not found" instead of downloading.
BAD_VALUES = [
    ([*TRAIN, "--momentum", "5"], "--momentum must be ≥ 0 and < 1, got 5"),
    ([*TRAIN, "--momentum", "-0.5"], "--momentum must be ≥ 0 and < 1, got -0.5"),
    ([*TRAIN, "--probe-lr", "-1"], "--probe-lr must be ≥ 0, got -1"),
    ([*TRAIN, "--temperature", "nan"], "--temperature must be a finite number, got nan"),
    ([*TRAIN, "--temperature", "inf"], "--temperature must be a finite number, got inf"),
    ([*TRAIN, "--lr", "nan"], "--lr must be a finite number, got nan"),
    ([*TRAIN, "--logit-bias=-inf"], "--logit-bias must be a finite number, got -inf"),
    ([*TRAIN, "--warmup-epochs", "inf"], "--warmup-epochs must be a finite number, got inf"),
    ([*TRAIN, "--weight-decay", "nan"], "--weight-decay must be a finite number, got nan"),
    ([*TRAIN, "--k1", "-1"], "--k1 must be ≥ 0, got -1"),
    ([*TRAIN, "--knn-every", "-1"], "--knn-every must be ≥ 0, got -1"),
    ([*TRAIN, "--proj-dims", "64,0"], "--proj-dims must be ≥ 1, got 0"),
    ([*TRAIN, "--seed", "-1"], "--seed must be ≥ 0 and ≤ 9223372036854775807, got -1"),
    ([*TRAIN, "--resume", "maybe"], "--resume: maybe not allowed; choose from no, yes, auto"),
    (["eval", "--run", "R", "--knn-temperature", "nan"], "--knn-temperature must be a finite number"),
    (["eval", "--run", "R", "--linear-lr", "-0.1"], "--linear-lr must be ≥ 0 and ≤ 3.40282e+38, got -0.1"),
    (["eval", "--run", "R", "--linear-lr", "1e39"], "--linear-lr must be ≥ 0 and ≤ 3.40282e+38, got 1e+39"),
    (  # 3 epochs left the weights at 1e15, finite: a chance-level accuracy was written as the probe's
        ["eval", "--run", "R", "linear", "--linear-weight-decay", "1e6", "--linear-epochs", "3"],
        "the linear probe would diverge at --linear-lr 0.2 and --linear-weight-decay 1e+06: their product",
    ),
    (["ccem", "--t", "1,nan", "--n", "4", "--steps", "1"], "--t must be a finite number, got nan"),
    (["ccem", "--t", "inf", "--n", "4", "--steps", "1"], "--t must be a finite number, got inf"),
    (["ccem", "--bias", "nan", "--n", "4", "--steps", "1"], "--bias must be a finite number, got nan"),
    (["ccem", "--lr", "inf", "--n", "4", "--steps", "1"], "--lr must be a finite number, got inf"),
    (["bench", "loss", "--temperature", "nan"], "--temperature must be a finite number, got nan"),
    (["bench", "loss", "--temperature", "-1"], "--temperature must be > 0, got -1"),
    (["bench", "augment", "--workers", "-1"], "--workers must be ≥ 0, got -1"),
    (["bench", "train", "--warmup", "-1"], "--warmup must be ≥ 0, got -1"),
    (["bench", "dist", "--dim", "0"], "--dim must be ≥ 1, got 0"),
]


@pytest.mark.parametrize("argv,message", BAD_VALUES)
def test_bad_numbers_are_one_line_errors(argv, message, tmp_path, capsys):
    out = ["--out", str(tmp_path / "out")] if argv[0] in ("train", "ccem", "bench") else []
    data = ["--data-dir", str(tmp_path / "data")] if argv[0] == "train" else []
    assert message in cli_error([*argv, *data, *out], capsys)


@pytest.mark.parametrize("command", ["loss", "dist"])
def test_bench_sizes_must_be_two_views(command, tmp_path, capsys):
    """Today `bench loss --sizes 7` crashed inside the chunked loss (7 rows are not two views)."""
    argv = ["bench", command, "--device", "cpu", "--sizes", "64,7", "--reps", "1", "--out", str(tmp_path)]
    if command == "loss":
        argv += ["--providers", "chunked", "--dims", "8", "--warmup", "1"]
    err = cli_error(argv, capsys)
    assert "--sizes 7: each size is 2N rows, two views of N images, so it must be even" in err
    assert "--sizes 8" in err
    assert not list(tmp_path.iterdir()), "nothing is measured or written"


def test_a_loss_that_needs_two_images_refuses_a_batch_of_one(tmp_path, capsys):
    """DCL's denominator holds only negatives: one image per batch was a traceback from the loss."""
    argv = [*TRAIN, "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--method", "dcl"]
    err = cli_error([*argv, "--batch-size", "1"], capsys)
    assert "--method dcl needs at least 2 images per batch, got --batch-size 1" in err
    bench = ["bench", "loss", "--device", "cpu", "--losses", "simclr,dcl", "--sizes", "2,8", "--dims", "8"]
    err = cli_error([*bench, "--out", str(tmp_path / "bench")], capsys)
    assert "--losses dcl needs at least 2 images (--sizes 4: two views each), got --sizes 2" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "bench").exists()


def test_bench_train_on_a_named_folder_without_the_data_says_so(tmp_path, capsys):
    """`bench train --data-dir WRONG` timed synthetic images without a word (its --data auto)."""
    argv = ["bench", "train", "--device", "cpu", "--data-dir", str(tmp_path / "nothing"), "--reps", "1"]
    err = cli_error([*argv, "--out", str(tmp_path / "b")], capsys)
    assert f"cifar10 is not in --data-dir {tmp_path / 'nothing'}: name the folder that holds it" in err
    assert "--data synthetic to time random images" in err and not (tmp_path / "b").exists()


def test_an_image_size_whose_step_cannot_fit_is_refused_before_any_data(tmp_path, capsys):
    """--image-size 100000 was killed by the OS mid-step with no message."""
    argv = [*TRAIN, "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--batch-size", "8"]
    err = cli_error([*argv, "--image-size", "100000"], capsys)
    assert "--image-size 100000 with 8 images of 2 views per step needs more than " in err, err
    assert "GiB are free: lower --image-size or --batch-size" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "none").exists()


def test_the_step_memory_check_takes_the_smallest_image_size():
    """--image-size 8 (its least) leaves ResNet's last stage 1×1: the check's one-image trace in
    training mode raised from batch norm ("Expected more than 1 value per channel"), a traceback."""
    import torch

    from fastsigclr.recipe import check_step_memory
    from fastsigclr.runconfig import TrainConfig

    for arch in ("resnet18", "resnet50"):
        cfg = TrainConfig(dataset="cifar10", image_size=8, arch=arch, width=8, batch_size=64, out="-")
        check_step_memory(cfg, torch.device("cpu"), 64, torch.float32)


def test_batch_larger_than_limit_train_names_both_numbers(tmp_path, capsys):
    """The first thing a CPU user tries: the preset batch (512) against --limit-train 128."""
    argv = [*TRAIN, "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"), "--limit-train", "128"]
    err = cli_error(argv, capsys)
    assert "--batch-size 512 (the cifar10 preset) is larger than the 128 images of --limit-train 128" in err
    assert "pass --batch-size 128 or less" in err
    err = cli_error([*argv, "--batch-size", "4096"], capsys)
    assert "--batch-size 4096 is larger than the 128 images" in err and "preset" not in err
    assert not (tmp_path / "run").exists()


def test_a_folder_data_dir_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "images").write_text("not a folder")
    argv = [*TRAIN, "--dataset", "folder", "--out", str(tmp_path / "run"), "--batch-size", "8"]
    err = cli_error([*argv, "--data-dir", str(tmp_path / "images")], capsys)
    assert f"{tmp_path / 'images'} is a file, not a folder: --dataset folder reads the images" in err, err
    err = cli_error([*argv, "--data-dir", str(tmp_path / "none")], capsys)
    assert f"{tmp_path / 'none'} does not exist: --dataset folder" in err, err
    assert not (tmp_path / "run").exists()


def test_bench_augment_with_a_batch_past_its_images_is_one_line(tmp_path, capsys):
    """Every epoch dropped its one partial batch, timed nothing, and the rates divided by zero."""
    argv = ["bench", "augment", "--device", "cpu", "--reps", "1", "--plan-images", "100", "--sizes", "8"]
    err = cli_error([*argv, "--images", "10", "--batch-size", "16", "--out", str(tmp_path / "b")], capsys)
    assert (
        "--batch-size 16 is larger than the 10 images of --images 10: pass --batch-size 10 or less, or "
        "raise --images" in err
    ), err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "argv,name",
    [
        (["ccem", "--n", "3,3", "--steps", "1"], "--n"),
        (["ccem", "--variant", "sigclr,sigclr", "--steps", "1"], "--variant"),
        (["bench", "loss", "--device", "cpu", "--sizes", "8,8"], "--sizes"),
    ],
)
def test_a_value_listed_twice_is_refused(argv, name, tmp_path, capsys):
    """ccem ran --n 3,3 twice (and bench timed a size twice) where sweep refused its duplicates."""
    err = cli_error([*argv, "--out", str(tmp_path / "o")], capsys)
    assert f"{name} must list at least one value, each once; got " in err, err
    assert not (tmp_path / "o").exists()


def write_json(path: Path, payload) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.parametrize(
    "payload,message",
    [
        (None, "does not exist"),
        ("not json {", "is not a readable JSON file"),
        ([1, 2], "is not a benchmark results file with a plot (benchmark None)"),
        (
            {"benchmark": "speed", "results": []},
            "is not a benchmark results file with a plot (benchmark 'speed'",
        ),
        (
            {"benchmark": "loss"},
            ": results is None, not a list of measured cases; run `fastsigclr bench loss`",
        ),
        (
            {"benchmark": "train", "results": {"full_step": {}}},
            ": config is None, not an object; run `fastsigclr bench train`",
        ),
    ],
)
def test_bench_plot_of_a_file_that_is_not_a_benchmark(payload, message, tmp_path, capsys):
    path = tmp_path / "results.json"
    if payload is not None:
        write_json(path, payload)
    err = cli_error(["bench", "plot", str(path)], capsys)
    separator = "" if message.startswith(":") else " "
    assert f"{path}{separator}{message}" in err
    assert not (tmp_path / "results.png").exists()


def test_ccem_grid_too_large_for_memory_is_refused(tmp_path, capsys):
    """--n 100000 needed ~6 TB of float64 values and died allocating them; the bound is computed
    from the measured peak per N² (the encoder variant's 81.2 N² values, 8 bytes each)."""
    err = cli_error(["ccem", "--n", "4,100000", "--steps", "1", "--out", str(tmp_path)], capsys)
    assert "--n 100000 needs about 6049.9 GiB for the encoder variant (81.2·N² float64 values)" in err
    assert "use --n values ≤" in err
    cfg = CcemConfig(n=(4, 1000), variant=("free",))
    check_memory(cfg, available=int(14.1 * 8 * 1000**2) + 1)  # just fits
    with pytest.raises(FastSigCLRError, match=r"--n 1000 needs about 0\.1 GiB for the free .* ≤ 999"):
        check_memory(cfg, available=int(14.1 * 8 * 1000**2) - 8)


def test_a_reader_that_leaves_early_is_no_traceback():
    """`fastsigclr info | head -1`: the pipe closes before info has written all it prints."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as usual
    child = subprocess.Popen(
        [sys.executable, "-m", "fastsigclr", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    child.stdout.close()  # the reader is gone before the first line
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) == 141 and "Traceback" not in err and "Broken pipe" not in err, err


HELD_PROBE = """
import importlib.abc, os, signal, sys
held = []

class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "torch._C") and len(held) < 2:
            held.append(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C as torch imports numpy, its C part
        return None

sys.meta_path.insert(0, Probe())
sys.argv = ["fastsigclr", "info"]
from fastsigclr.entry import main
code = main()
print(held)
raise SystemExit(code)
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_ctrl_c_while_torch_imports_numpy_lands_after_it(tmp_path):
    """torch's C code swallows an exception raised inside numpy's import: a Ctrl-C there was lost
    (4 of 60 timed tries ran on with status 0, or died with "module 'numpy' has no attribute
    'ndarray'" or an abort). SIGINT is held over those imports and lands after them."""
    done = subprocess.run(
        [sys.executable, "-c", HELD_PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 130 and done.stderr.strip().splitlines()[-1] == "interrupted", done.stderr
    assert done.stdout.strip() == "[True, True]"  # both imports ran with SIGINT held


@pytest.mark.parametrize("where", ["import", "parser"])
def test_ctrl_c_while_the_command_starts_is_not_a_traceback(where, monkeypatch, capsys):
    """The console script imports torch and the loaders (about 2 s) and builds the parser before
    any command runs: a Ctrl-C there printed a KeyboardInterrupt traceback (exit -2)."""
    import builtins

    import fastsigclr.cli
    from fastsigclr import entry

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    if where == "import":
        real_import = builtins.__import__

        def importing(name, *args, **kwargs):
            return interrupt() if name == "fastsigclr.cli" else real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", importing)
    else:
        monkeypatch.setattr(fastsigclr.cli, "build_parser", interrupt)
    monkeypatch.setattr("sys.argv", ["fastsigclr", "--version"])
    assert entry.main() == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("local_rank,said", [("0", "interrupted\n"), ("1", "")])
@pytest.mark.parametrize("where", ["start", "command"])
def test_ctrl_c_under_torchrun_is_said_once_per_node(local_rank, said, where, monkeypatch, capsys):
    """A Ctrl-C in torchrun's terminal reaches every rank: each printed "interrupted" (8 lines on
    an 8-GPU node); LOCAL_RANK 0 says it for the node, every rank still exits 130."""
    import fastsigclr.cli
    import fastsigclr.runinfo
    from fastsigclr import entry

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr("sys.argv", ["fastsigclr", "info"])
    if where == "start":
        monkeypatch.setattr(fastsigclr.cli, "build_parser", interrupt)
    else:  # inside the command: `info`'s report
        monkeypatch.setattr(fastsigclr.runinfo, "install_report", interrupt)
    assert entry.main() == 130
    assert capsys.readouterr().err == said


FINISHED = """
import atexit, os, signal, sys
import fastsigclr.entry as entry

def leaving():  # a command that leaves by SystemExit: a preempted run's 75, an error's 2
    raise SystemExit(75)

entry.main = (lambda: 3) if sys.argv[2] == "returns" else leaving
atexit.register(lambda: os.kill(os.getpid(), getattr(signal, sys.argv[1])))  # as the process ends
try:
    status = entry.console()
except SystemExit as exc:
    status = exc.code
print("exits with", status)
sys.exit(status)
"""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("how,status", [("returns", 3), ("raises", 75)])
def test_a_signal_after_the_command_finished_keeps_its_status(signame, how, status):
    """A Ctrl-C in the ~0.6 s between a finished run's last line and the process's end (torch's exit
    handlers) ended it with 130 over a complete run and a written summary (−15 after SIGTERM),
    sometimes with a traceback from an exit handler: it ends at once with the command's status,
    whether the command returned it or left by SystemExit (a preempted run's 75)."""
    done = subprocess.run(
        [sys.executable, "-c", FINISHED, signame, how], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == status and f"exits with {status}" in done.stdout, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
