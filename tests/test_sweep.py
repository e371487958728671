"""`fastsigclr sweep` on a tiny grid of real CIFAR-10 runs (2 settings × 2 seeds, ResNet-18 width 8,
64 images, 2 epochs): the three outputs, skipping finished runs, and continuing an interrupted grid."""

import json
import os
import shutil
import statistics

import matplotlib.image
import pytest
import torch

from fastsigclr import checkpoint
from fastsigclr.cli import build_parser, main
from fastsigclr.config import build, from_args
from fastsigclr.runlog import read_metrics
from fastsigclr.sweep import SETTINGS, SweepConfig, plan, run_sweep

BUDGET = [
    *("--dataset", "cifar10", "--device", "cpu", "--width", "8", "--proj-dims", "32,16"),
    *("--batch-size", "32", "--epochs", "2", "--limit-train", "64", "--limit-test", "48"),
    *("--knn-every", "1", "--linear-epochs", "3"),
]
GRID = ("--settings", "sigclr,sigclr-fixed-b0", "--seeds", "0,1")


def sweep_args(data_dir, out, *extra):
    return ["sweep", "--data-dir", str(data_dir), "--out", str(out), *BUDGET, *extra]


def run_grid(data_dir, out, *extra):
    """run_sweep through the CLI's parser, collecting the progress lines."""
    args = build_parser().parse_args(sweep_args(data_dir, out, *extra))
    lines = []
    payload = run_sweep(from_args(SweepConfig, args), command=["fastsigclr", "sweep"], log=lines.append)
    return payload, lines


@pytest.fixture(scope="module")
def grid(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "grid"
    payload, lines = run_grid(cifar10_dir, out, *GRID)
    return out, payload, lines


def test_grid_writes_results_table_and_plot(grid):
    out, payload, lines = grid
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(payload["runs"]))
    assert saved["commit"] and saved["versions"]["torch"] and saved["device"]["type"] == "cpu"
    assert saved["command"] == "fastsigclr sweep" and saved["grid"]["seeds"] == [0, 1]
    assert saved["grid"]["settings"] == {s: SETTINGS[s] for s in ("sigclr", "sigclr-fixed-b0")}
    runs = saved["runs"]
    # seed-major: every setting has a result after the first two runs
    assert [(r["setting"], r["seed"]) for r in runs] == [
        ("sigclr", 0),
        ("sigclr-fixed-b0", 0),
        ("sigclr", 1),
        ("sigclr-fixed-b0", 1),
    ]
    for r in runs:
        assert r["status"] == "done" and r["config"]["seed"] == r["seed"] and r["config"]["width"] == 8
        assert 0 <= r["linear_acc"] <= 1 and r["epochs_done"] == 2
        assert [e for e, _ in r["knn_curve"]] == [1, 2]
        # One extraction serves the sweep's kNN; it equals the trainer's own last kNN monitor.
        assert r["knn_acc"] == r["monitor_knn_acc"] == r["knn_curve"][-1][1]
    fixed = [r for r in runs if r["setting"] == "sigclr-fixed-b0"]
    learnt = [r for r in runs if r["setting"] == "sigclr"]
    assert all(r["final_logit_bias"] == 0.0 and not r["config"]["learnable_logit_bias"] for r in fixed)
    assert all(r["final_logit_bias"] != -10.0 and r["config"]["learnable_logit_bias"] for r in learnt)
    assert runs[0]["final_logit_bias"] != runs[2]["final_logit_bias"]  # the seeds differ
    table = (out / "results.md").read_text()
    assert "resnet18 width 8, projector 32-16, 2 epochs, batch 32, 64 train / 48 test images" in table
    assert "precision fp32" in table and saved["precision"] == "fp32"
    # The vote's k is at most the bank: 64 train images, not the --knn-k 200 asked (it said k = 200).
    assert "weighted kNN (k = 64: the train split has 64 images, fewer than --knn-k 200; cosine)" in table
    assert [r["knn_k"] for r in runs] == [64] * 4 and runs[0]["config"]["knn_k"] == 200
    rows = [line for line in table.splitlines() if line.startswith("| sigclr") and "method=" in line]
    assert len(rows) == 2
    # The comparisons of significance.COMPARISONS whose settings ran: b = 0 against the learnt b.
    tests = [line for line in table.splitlines() if line.startswith("| sigclr-fixed-b0 | sigclr |")]
    assert [line.split(" | ")[2] for line in tests] == ["kNN", "linear"], tests
    for row, setting_runs in zip(rows, (learnt, fixed), strict=True):
        values = [100 * r["linear_acc"] for r in setting_runs]
        expected = f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"
        assert "| 2/2 |" in row and expected in row, (row, expected)
    image = matplotlib.image.imread(out / "results.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert [line[:5] for line in lines if "ETA" in line] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert "ETA" in lines[-1] and "0 run(s) left" in lines[-1]


def test_second_invocation_skips_finished_runs(grid, cifar10_dir, tmp_path, capsys):
    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)  # copy2: modification times preserved
    files = [p for p in out.glob("runs/*/*") if p.is_file()] + list(out.glob("runs/*/checkpoints/*"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert main(sweep_args(cifar10_dir, out, *GRID)) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped, done before") == 4 and "training" not in printed
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    assert [r["status"] for r in json.loads((out / "results.json").read_text())["runs"]] == ["done"] * 4
    with pytest.raises(SystemExit):
        main(sweep_args(cifar10_dir, out, *GRID, "--epochs", "3"))
    assert (
        "holds a sweep at another budget: --epochs was 2, now 3; use another --out" in capsys.readouterr().err
    )


def test_results_md_names_the_k_each_run_took_where_they_differ(grid, cifar10_dir, tmp_path):
    """An evaluation written before the k taken was recorded holds the --knn-k asked (200, over a
    bank of 64): the report takes the bank's 64. Runs whose votes took different k say so."""
    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    for run, k in (("sigclr-seed0", 200), ("sigclr-seed1", 32)):
        record = json.loads((out / "runs" / run / "sweep-eval.json").read_text())
        record["knn"]["k"] = k
        (out / "runs" / run / "sweep-eval.json").write_text(json.dumps(record))
    assert main(sweep_args(cifar10_dir, out, *GRID)) == 0
    saved = json.loads((out / "results.json").read_text())
    assert [(r["setting"], r["seed"], r["knn_k"]) for r in saved["runs"]] == [
        ("sigclr", 0, 64),
        ("sigclr-fixed-b0", 0, 64),
        ("sigclr", 1, 32),
        ("sigclr-fixed-b0", 1, 64),
    ]
    table = (out / "results.md").read_text()
    assert "(k = 32, 64: the runs differ, each run's k is its knn_k in results.json; cosine)" in table


def test_the_k_of_the_report_is_the_k_the_vote_took():
    """knn_k: the recorded k, else --knn-k, at most the train split's images (limit_train)."""
    from fastsigclr.sweep_report import _knn_k_text, knn_k

    assert knn_k({"knn_k": 200, "limit_train": 64}, None) == 64
    assert knn_k({"knn_k": 200, "limit_train": None}, None) == 200
    assert knn_k({"knn_k": 20, "limit_train": 64}, 20) == 20 and knn_k({"limit_train": 100}, 150) == 100
    run = {"status": "done", "config": {"knn_k": 200}, "knn_k": 200}
    assert _knn_k_text({"runs": [run, {**run, "status": "pending", "knn_k": 7}]}) == "k = 200"
    assert _knn_k_text({"runs": [{**run, "knn_k": 50}]}) == (
        "k = 50: the train split has 50 images, fewer than --knn-k 200"
    )


def test_a_subset_rerun_keeps_the_other_finished_runs(grid, cifar10_dir, tmp_path, capsys):
    """Rerunning one setting and seed rewrote results.json/.md with that run alone."""
    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    assert main(sweep_args(cifar10_dir, out, "--settings", "sigclr", "--seeds", "0")) == 0
    printed = capsys.readouterr().out
    assert "skipped, done before" in printed and "the report keeps 3 finished run(s)" in printed
    saved = json.loads((out / "results.json").read_text())
    assert sorted((r["setting"], r["seed"], r["status"]) for r in saved["runs"]) == sorted(
        (s, seed, "done") for s in ("sigclr", "sigclr-fixed-b0") for seed in (0, 1)
    )
    assert saved["grid"]["seeds"] == [0, 1] and set(saved["grid"]["settings"]) == {
        "sigclr",
        "sigclr-fixed-b0",
    }
    assert saved["table"] == json.loads((grid[0] / "results.json").read_text())["table"]
    assert "sigclr-fixed-b0" in (out / "results.md").read_text()


def test_interrupted_grid_continues(grid, cifar10_dir, tmp_path, monkeypatch):
    """The first sweep dies before the run's first checkpoint, the second after it; the third
    restarts nothing and ends with exactly the run of the uninterrupted grid."""
    real_save = checkpoint.save_atomic
    out = tmp_path / "broken"

    def crash_at(call):
        calls = []

        def save(*args, **kw):
            calls.append(1)
            if len(calls) == call:
                raise RuntimeError("simulated crash")
            real_save(*args, **kw)

        monkeypatch.setattr(checkpoint, "save_atomic", save)

    run_dir = out / "runs" / "sigclr-seed0"
    crash_at(1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_grid(cifar10_dir, out, "--settings", "sigclr", "--seeds", "0")
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "checkpoints" / "last.pt").exists()
    assert json.loads((out / "results.json").read_text())["runs"][0]["status"] == "pending"
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "epo')  # a record cut short by the kill
    crash_at(2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_grid(cifar10_dir, out, "--settings", "sigclr", "--seeds", "0")
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    payload, lines = run_grid(cifar10_dir, out, "--settings", "sigclr", "--seeds", "0")
    assert "resuming from its checkpoint" in lines[0] and "resumed" in lines[1]
    whole = grid[0] / "runs" / "sigclr-seed0"
    a = checkpoint.load(whole / "checkpoints" / "last.pt")["model"]
    b = checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in read_metrics(d) if r["kind"] == "step"] for d in (whole, run_dir)]
    assert losses[0] == losses[1]
    assert payload["runs"][0]["knn_acc"] == grid[1]["runs"][0]["knn_acc"]


def test_a_preempted_sweep_says_to_run_the_sweep_again(cifar10_dir, tmp_path, monkeypatch, capsys):
    """A preempted run inside a sweep told to add --resume auto, which `sweep` does not take: the
    sweep's own command continues it (its run is resumed from the checkpoint just written)."""
    import fastsigclr.train
    from fastsigclr.preempt import PREEMPTED_EXIT

    monkeypatch.setattr(fastsigclr.train.Epochs, "_stopping", lambda self: True)  # a signal came
    with pytest.raises(SystemExit) as exc:
        run_grid(cifar10_dir, tmp_path / "s", "--settings", "sigclr", "--seeds", "0")
    err = capsys.readouterr().err
    assert exc.value.code == PREEMPTED_EXIT and "after batch 1" in err, err
    assert "the same sweep command continues it" in err and "--resume auto" not in err


def test_ctrl_c_in_a_sweep_says_to_run_the_sweep_again(cifar10_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C in a sweep's run after its first checkpoint: the note names the sweep's own
    command, not `train --resume`."""
    import fastsigclr.train

    calls = {"n": 0}
    step = fastsigclr.train.train_step

    def interrupted_at_step_3(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2 (2 batches an epoch): epoch 1's checkpoint is on disk
            raise KeyboardInterrupt
        return step(*args, **kw)

    monkeypatch.setattr(fastsigclr.train, "train_step", interrupted_at_step_3)
    assert main(sweep_args(cifar10_dir, tmp_path / "s", "--settings", "sigclr", "--seeds", "0")) == 130
    err = capsys.readouterr().err
    assert "its checkpoint (epoch 1) is kept; the same sweep command continues it" in err, err
    assert "--resume" not in err, err


def test_bad_grids_fail_before_any_run(tmp_path, capsys):
    cases = [
        (["--settings", "sigclr,nope"], "nope not allowed; choose from sigclr, simclr"),
        (["--seeds", "0,0"], "--seeds must list at least one value, each once"),
        (["--width", "0"], "--width must be ≥ 1"),
        (["--linear-epochs", "0"], "--linear-epochs must be ≥ 1"),
        (["--limit-train", "64", "--batch-size", "128"], "--batch-size 128 is larger than the 64 images"),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit):
            main(["sweep", "--out", str(tmp_path / "s"), "--device", "cpu", *extra])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    cfg = build(SweepConfig, {"out": str(tmp_path / "s")})
    assert cfg.settings == tuple(SETTINGS) and cfg.seeds == (0, 1, 2) and cfg.budget() == {}


def test_a_run_folder_the_sweep_cannot_tell_is_its_own_is_never_removed(cifar10_dir, tmp_path):
    """A grid's run folder without a checkpoint used to be deleted as an interrupted start: the
    trainer decides now, under the run's lock, and refuses files that are not a run's."""
    out = tmp_path / "s"
    run_dir = out / "runs" / "sigclr-seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "mine.pt").write_bytes(b"someone else's weights")
    (run_dir / "config.json").write_text('{"mine": 1}')
    payload, lines = run_grid(cifar10_dir, out, "--settings", "sigclr", "--seeds", "0")
    assert "FAILED" in lines[-1] and "is not a fastsigclr run" in lines[-1], lines
    assert (run_dir / "checkpoints" / "mine.pt").read_bytes() == b"someone else's weights"
    assert (run_dir / "config.json").read_text() == '{"mine": 1}'
    assert payload["runs"][0]["status"] == "failed"


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path, capsys):
    from fastsigclr.runlock import lock_dir
    from fastsigclr.sweep import SWEEP_LOCK

    out = tmp_path / "s"
    out.mkdir()
    held = lock_dir(out, name=SWEEP_LOCK, user="sweep")  # the first sweep
    try:
        with pytest.raises(SystemExit):
            main(["sweep", "--out", str(out), "--device", "cpu", "--settings", "sigclr", "--seeds", "0"])
    finally:
        os.close(held)
    err = capsys.readouterr().err
    assert f"{out} is in use by another sweep (pid {os.getpid()}" in err, err
    assert not (out / "sweep.json").exists()


@pytest.mark.parametrize("name", ["sweep.json", "sweep-eval.json"])
def test_a_damaged_sweep_file_is_named(grid, tmp_path, cifar10_dir, capsys, name):
    out = tmp_path / "copy"
    shutil.copytree(grid[0], out, symlinks=True)
    damaged = out / name if name == "sweep.json" else out / "runs" / "sigclr-seed0" / name
    damaged.write_text('{"knn": ')
    with pytest.raises(SystemExit):
        main(sweep_args(cifar10_dir, out, *GRID))
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("fastsigclr: error: "), err
    assert f"{damaged} is damaged" in err and "restore it" in err


def test_the_same_data_folder_named_another_way_is_the_same_budget(tmp_path, monkeypatch, capsys):
    """sweep.json records --data-dir whole; one saved with a ~ or a relative path (as earlier
    versions wrote it) is the same budget as the whole path, and another folder is not."""
    from fastsigclr.sweep_checks import check_budget

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s"
    out.mkdir()
    for saved in ("~/data", "data", str(tmp_path / "data")):
        (out / "sweep.json").write_text(json.dumps({"data_dir": saved}))
        for given in ("~/data", "data", str(tmp_path / "data")):  # as typed on the command line
            args = build_parser().parse_args(["sweep", "--out", str(out), "--data-dir", given])
            check_budget(from_args(SweepConfig, args))
    (out / "sweep.json").unlink()
    check_budget(build(SweepConfig, {"out": str(out), "data_dir": "data"}))
    assert json.loads((out / "sweep.json").read_text()) == {"data_dir": str(tmp_path / "data")}
    (out / "sweep.json").write_text(json.dumps({"data_dir": "data"}))
    with pytest.raises(Exception, match="another budget: --data-dir was 'data', now '.*other'; use"):
        check_budget(build(SweepConfig, {"out": str(out), "data_dir": "other"}))


def edit_config(run_dir, edit) -> None:
    """Apply ``edit`` to the settings ("config") of a run's config.json, as a user's hand would."""
    saved = json.loads((run_dir / "config.json").read_text())
    edit(saved["config"])
    (run_dir / "config.json").write_text(json.dumps(saved))


def test_a_finished_run_is_counted_only_if_it_is_the_grids(grid, cifar10_dir, tmp_path, capsys):
    """Finished (evaluated) runs were skipped without a check: another sweep's run copied into a
    planned folder, or a run of the grid at another --epochs (sweep.json deleted), was averaged
    with the rest; a folder named sigclr-seed00 was read as seed 0's run and counted twice."""
    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    runs = out / "runs"
    edit_config(runs / "sigclr-seed1", lambda config: config.update(epochs=3))
    shutil.copytree(runs / "sigclr-seed0", runs / "sigclr-seed00")
    shutil.copytree(runs / "sigclr-seed1", runs / "sigclr-seed7")  # outside the grid: left out too
    assert main(sweep_args(cifar10_dir, out, *GRID)) == 1
    printed = capsys.readouterr().out
    assert "sigclr seed 1: FAILED: " in printed and "--epochs 3 (the sweep's: 2)" in printed, printed
    assert "left out of the report: " in printed and "sigclr-seed7 holds a finished run" in printed, printed
    saved = json.loads((out / "results.json").read_text())
    assert [(r["setting"], r["seed"], r["status"]) for r in saved["runs"]] == [
        ("sigclr", 0, "done"),
        ("sigclr-fixed-b0", 0, "done"),
        ("sigclr", 1, "failed"),
        ("sigclr-fixed-b0", 1, "done"),
    ]
    assert (
        saved["table"][0]["done"] == 1
        and "| sigclr | method=sigclr | 1/2 |" in (out / "results.md").read_text()
    )


def test_a_finished_run_is_checked_before_the_first_report(grid, cifar10_dir, tmp_path, monkeypatch):
    """The first report, written before any run trains, already leaves out a finished run that is
    not the grid's (it counted it until the loop reached it: hours, or for ever if stopped); a run
    whose config.json predates an option (no store_size) is the grid's, read as the trainer
    resumes it."""
    from fastsigclr import sweep

    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    runs = out / "runs"
    edit_config(runs / "sigclr-seed1", lambda config: config.update(epochs=3))
    edit_config(runs / "sigclr-seed0", lambda config: config.pop("store_size"))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # the first new run: the report on disk is the first one

    monkeypatch.setattr(sweep, "train", stopped)
    assert main(sweep_args(cifar10_dir, out, "--settings", "sigclr", "--seeds", "0,1,2")) == 130
    saved = json.loads((out / "results.json").read_text())
    status = {(r["setting"], r["seed"]): r["status"] for r in saved["runs"]}
    assert status[("sigclr", 0)] == "done" and status[("sigclr", 1)] == "failed", status


@pytest.mark.parametrize(
    "name,edit,message",
    [
        (
            "summary.json",
            {"final_logit_bias": "abc"},
            "summary.json is damaged (final_logit_bias is 'abc', not a",
        ),
        ("sweep-eval.json", {"knn": {"accuracy": "nan"}}, "sweep-eval.json is damaged (knn_acc is nan)"),
        ("config.json", {"config": {}}, None),
    ],
)
def test_a_hand_edited_run_file_is_one_line_or_its_run_fails(
    grid, cifar10_dir, tmp_path, capsys, name, edit, message
):
    """A value of the wrong type in a run's files ended the sweep's report in a TypeError traceback
    (summary.json, config.json), or was reported ("kNN nan%"). Damaged values are one line naming
    the file; a config.json that is not the planned run's fails that run alone."""
    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    path = out / "runs" / "sigclr-seed0" / name
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    args = sweep_args(cifar10_dir, out, *GRID)
    if message is None:
        assert main(args) == 1
        assert "sigclr seed 0: FAILED: " in capsys.readouterr().out
        assert json.loads((out / "results.json").read_text())["runs"][0]["status"] == "failed"
        return
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and message in err.splitlines()[-1], err


def test_the_sweep_passes_max_broken_to_its_runs(tmp_path):
    """A folder with a broken image told the sweep to "raise --max-broken", an option it lacked."""
    cfg = build(SweepConfig, {"out": str(tmp_path / "s"), "max_broken": 0.25, "settings": ("sigclr",)})
    assert cfg.budget()["max_broken"] == 0.25
    assert all(run.train_config.max_broken == 0.25 for run in plan(cfg))


def test_the_sweep_passes_image_and_store_sizes_to_its_runs(tmp_path):
    """A folder sweep was held at 224² crops: the sweep had no --image-size."""
    values = {"out": str(tmp_path / "s"), "dataset": "folder", "image_size": 64, "store_size": 72}
    cfg = build(SweepConfig, values)
    assert cfg.budget()["image_size"] == 64 and cfg.budget()["store_size"] == 72
    assert all((r.train_config.image_size, r.train_config.store_size) == (64, 72) for r in plan(cfg))
    assert "image_size" not in build(SweepConfig, {"out": str(tmp_path / "t")}).budget()  # older sweep.json


def test_what_the_data_cannot_give_fails_before_the_budget_is_kept(cifar10_dir, tmp_path, capsys):
    """A limit past the split's images failed each run alone, and sweep.json had already pinned it
    (the corrected command was refused as another budget); a folder without labelled val/ trained
    every run in full before each failed at its evaluation. Both stop at once, nothing written."""
    from folder_fixture import odd_images

    out, too_many = tmp_path / "s", ["--limit-train", "60000"]
    with pytest.raises(SystemExit):
        main([*sweep_args(cifar10_dir, out, "--settings", "sigclr", "--seeds", "0"), *too_many])
    assert "--limit-train 60000 is more than the 50000 train images" in capsys.readouterr().err
    assert not out.exists()  # not even its sweep.lock: a refused sweep leaves nothing, as train
    flat = tmp_path / "flat"
    flat.mkdir()
    for k, payload in enumerate(list(odd_images().values()) * 2):
        (flat / f"{k}.png").write_bytes(payload)
    argv = ["sweep", "--dataset", "folder", "--data-dir", str(flat), "--out", str(out), "--device", "cpu"]
    with pytest.raises(SystemExit):
        main([*argv, "--batch-size", "8", "--settings", "sigclr", "--seeds", "0"])
    err = capsys.readouterr().err
    assert "a sweep scores each run by kNN and a linear probe on labelled train and test images" in err, err
    assert not (out / "sweep.json").exists() and not (out / "runs").exists()


def test_a_finished_run_of_other_settings_in_the_grids_place_is_not_evaluated(grid, cifar10_dir, tmp_path,
                                                                               capsys):  # fmt: skip
    """A finished run put in a planned run's folder (trained, not yet evaluated by the sweep) was
    evaluated and averaged with the others: width 4 beside the grid's 8, said nowhere. Its planned
    twin, trained by the sweep itself, passes the same check."""
    from fastsigclr.sweep import SweepConfig, plan
    from fastsigclr.sweep_checks import check_finished

    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    foreign = out / "runs" / "sigclr-seed1"
    (foreign / "sweep-eval.json").unlink()  # trained, not evaluated: the sweep would evaluate it now
    edit_config(foreign, lambda config: config.update(width=4))
    assert main(sweep_args(cifar10_dir, out, *GRID)) == 1
    printed = capsys.readouterr().out
    assert (
        "sigclr seed 1: FAILED: " in printed
        and "holds a finished run with other settings than the "
        "sweep's sigclr seed 1: --width 4 (the sweep's: 8); move it out of"
        in printed
    ), printed
    args = build_parser().parse_args(sweep_args(cifar10_dir, out, *GRID))
    runs = plan(from_args(SweepConfig, args))
    check_finished(next(r for r in runs if (r.setting, r.seed) == ("sigclr", 0)))


def test_ctrl_c_while_a_run_is_evaluated_says_how_to_go_on(grid, cifar10_dir, tmp_path, monkeypatch, capsys):
    """The trainer says how to continue an interrupted run; an interrupted evaluation said only
    "interrupted"."""
    from fastsigclr import sweep

    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    (out / "runs" / "sigclr-seed1" / "sweep-eval.json").unlink()  # trained: the sweep evaluates it

    def interrupted(cfg, run):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_evaluate", interrupted)
    assert main(sweep_args(cifar10_dir, out, *GRID)) == 130
    err = capsys.readouterr().err
    assert f"the evaluation of {out / 'runs' / 'sigclr-seed1'} was interrupted: the run is trained" in err
    assert "the same sweep command evaluates it" in err and err.rstrip().endswith("interrupted"), err


def test_sigterm_while_a_run_is_evaluated_says_how_to_go_on(grid, cifar10_dir, tmp_path, monkeypatch, capsys):
    """SIGTERM outside a training step (here in a sweep's evaluation; a Slurm job's time limit)
    ended the process at once with status 143 and no word: now it says what was stopped and how
    to go on, as after Ctrl-C, still with status 143, and the handler it replaced comes back."""
    import signal
    import sys

    from fastsigclr import entry, sweep

    out = tmp_path / "grid"
    shutil.copytree(grid[0], out)
    (out / "runs" / "sigclr-seed1" / "sweep-eval.json").unlink()  # trained: the sweep evaluates it
    monkeypatch.setattr(sweep, "_evaluate", lambda cfg, run: signal.raise_signal(signal.SIGTERM))
    monkeypatch.setattr(sys, "argv", ["fastsigclr", *sweep_args(cifar10_dir, out, *GRID)])
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    assert entry.main() == 143
    assert signal.getsignal(signal.SIGTERM) is before
    err = capsys.readouterr().err
    assert f"the evaluation of {out / 'runs' / 'sigclr-seed1'} was interrupted: the run is trained" in err
    assert err.rstrip().endswith("terminated (SIGTERM)"), err
