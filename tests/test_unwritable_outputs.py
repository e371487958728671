"""A command whose output folder cannot be written says so in one line before it computes
anything (ccem's grid and the benchmarks used to run for minutes, then end in a traceback), and
bad download targets are one line too."""

import os

import pytest
import run_fixture
from helpers import run_in
from run_fixture import fails_with

finished_run = run_fixture.finished_run  # the fixtures
run_copy = run_fixture.run_copy

COMMANDS = {
    "ccem": ["ccem", "--n", "4", "--t", "1", "--no-progress"],
    "bench loss": ["bench", "loss", "--device", "cpu", "--sizes", "8", "--dims", "4", "--reps", "1"],
    "bench augment": ["bench", "augment", "--device", "cpu"],
    "sweep": ["sweep", "--device", "cpu", "--settings", "sigclr", "--seeds", "0"],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_out_is_named_before_the_work(tmp_path, command):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    proc = run_in(read_only, *COMMANDS[command], "--out", str(read_only / "results"))
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (
        f"fastsigclr: error: --out {read_only / 'results'} is not writable (Permission denied); "
        f"choose another --out"
    ), err
    assert list(read_only.iterdir()) == []


def test_embed_names_an_unwritable_folder_before_reading_the_data(finished_run, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    out = read_only / "f.npy"
    proc = run_in(read_only, "embed", "--run", str(finished_run), "--device", "cpu", "--out", str(out))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"the folder of --out {out} is not writable (Permission denied)" in proc.stderr


def test_a_download_into_an_unwritable_folder_or_from_a_non_url(tmp_path, capsys):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    args = ["data", "download", "--dataset", "cifar10", "--no-progress"]
    proc = run_in(read_only, *args, "--data-dir", str(read_only / "d"), "--url", "http://127.0.0.1:9/x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "(Permission denied); pass --data-dir DIR, a writable folder" in proc.stderr
    err = fails_with([*args, "--data-dir", str(tmp_path / "d"), "--url", "notaurl"], capsys)
    assert "--url notaurl is not a URL; pass one that starts with https://" in err


def test_eval_names_a_folder_where_its_result_goes_before_the_work(run_copy, capsys, monkeypatch):
    """eval-knn.json a folder: eval computed the accuracy, then said "make the run directory
    writable" (it was); now one line before any feature is extracted."""
    import fastsigclr.eval

    (run_copy / "eval-knn.json").mkdir()
    monkeypatch.setattr(fastsigclr.eval, "load_run_model", lambda *a, **k: pytest.fail("loaded the run"))
    err = fails_with(["eval", "--run", str(run_copy), "knn", "--no-progress"], capsys)
    folder = run_copy / "eval-knn.json"
    assert err.endswith(f"{folder} is a folder, where eval writes its result: remove or rename it"), err
    folder.rmdir()
    os.mkfifo(folder)  # replaced by a file after the work, before the writer refused it
    err = fails_with(["eval", "--run", str(run_copy), "knn", "--no-progress"], capsys)
    assert err.endswith(f"{folder} is a FIFO (named pipe), where eval writes its result: remove or rename it")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_that_links_to_nowhere_is_named(tmp_path, command, capsys):
    """A dangling symbolic link as --out was "it or a folder above it is a file"."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    err = fails_with([*COMMANDS[command], "--out", str(link)], capsys)
    assert err.endswith(
        f"--out {link} is not writable (it is a symbolic link to {tmp_path / 'nowhere'}, which does not "
        f"exist); choose another --out"
    ), err
    assert not (tmp_path / "nowhere").exists()
