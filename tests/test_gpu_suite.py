"""tools/gpu_suite.sh: stages that fit their time limits, a record on disk after every step, an
exit status that no failure escapes, and every stage run end to end at tiny sizes (--smoke)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shared_dir

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tools" / "gpu_suite.sh"


@pytest.fixture
def tools(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import gpu_suite
    import stage_runner

    return gpu_suite, stage_runner


@pytest.mark.parametrize("smoke", [False, True])
def test_stages_fit_the_device_budget(tools, smoke):
    gpu_suite, _ = tools
    stages = gpu_suite.build_stages(smoke)
    assert [s.key for s in stages] == ["1", "2", "3", "4", "5"]
    assert sum(s.limit_s for s in stages) <= gpu_suite.SUITE_LIMIT_S == 25 * 60
    for stage in stages:
        assert stage.expected_s <= stage.limit_s <= gpu_suite.STAGE_LIMIT_S == 8 * 60, stage.name
        assert all(step.timeout_s <= stage.limit_s for step in stage.steps), stage.name
    assert stages[0].limit_s <= 6 * 60  # a first GPU run of ~15 minutes keeps time to rerun stage 1
    first = {step.name: step.command for step in stages[0].steps}
    pytest_steps = [s for st in stages for s in st.steps if "-m pytest" in s.command]
    assert len(pytest_steps) == len(
        {id(st) for st in stages if any("-m pytest" in s.command for s in st.steps)}
    )
    assert "data" not in first  # stage 1 does not use the converted CIFAR-10
    for path in ("tests/test_gpu.py", "tests/test_sigmoid_loss.py", "tests/test_contrastive_losses.py"):
        assert any(path in command for command in first.values()), path
    if not smoke:
        assert "--sizes 1024,8192,16384 --dims 128 --dtypes bf16" in first["bench-loss"]
        assert "--providers eager,triton" in first["bench-loss"]


def test_every_test_file_is_in_a_stage_or_says_why_not(tools):
    """A new test file must be placed: run by a stage on the GPU, or named in NOT_THERE with why."""
    gpu_suite, _ = tools
    assert gpu_suite.unplaced_tests(gpu_suite.build_stages()) == []
    assert all((ROOT / path).is_file() for path in gpu_suite.NOT_THERE), "NOT_THERE names a missing file"


def test_header_says_how_to_run_each_stage(tools):
    """The script's header gives every stage's command and its limit, for any GPU machine."""
    gpu_suite, _ = tools
    header = SUITE.read_text()
    for stage in gpu_suite.build_stages():
        line = (
            rf"^#   OUT=results bash tools/gpu_suite.sh {stage.key}\s+# limit {stage.limit_s / 60:.1f} min$"
        )
        assert re.search(line, header, re.M), f"no command with its limit for stage {stage.key}"
    assert "PACK/tools/cifar10-from-jpeg shared-data/tools/" in header
    out = subprocess.run(
        ["bash", str(SUITE), "list"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    for stage in gpu_suite.build_stages():
        assert re.search(rf"^{stage.key}\s+{stage.name}\s+[\d.]+ min\s+[\d.]+ min", out.stdout, re.M), (
            out.stdout
        )
    total = sum(s.limit_s for s in gpu_suite.build_stages()) / 60
    assert re.search(rf"^all\s+{total:.1f} min", out.stdout, re.M), out.stdout
    assert "not in the suite: test_loaders.py (DALI and FFCV)" in out.stdout
    assert re.search(r"^test files in no stage: ", out.stdout, re.M), out.stdout


def run_probe(stage_runner, tmp_path, limit_s, steps):
    stage = stage_runner.Stage("9", "probe", "runner check", 1, limit_s, tuple(steps))
    fmt = {"py": sys.executable, "data": "-", "shared": "-"}
    header = {"commit": "abc", "environment": {"cuda_devices": 0}}
    rc = stage_runner.StageRun(stage, tmp_path, header, fmt, dict(os.environ)).run()
    return rc, json.loads((tmp_path / "stage-9.json").read_text())


def test_failed_timed_out_and_unreached_steps_fail_the_stage(tools, tmp_path):
    _, runner = tools
    Step = runner.Step
    # The second step reads the record while the stage runs: it is on disk, the first step in it.
    check = "import json, sys; r = json.load(open(sys.argv[1])); assert r['steps'][0]['status'] == 'ok', r"
    steps = [
        Step("ok", "{py} -c pass", 30),
        Step("sees-record", f'{{py}} -c "{check}" {{record}}', 30),
        Step("two-gpus", "{py} -c pass", 30, gpus=2),
        Step("fails", "{py} -c \"print('boom'); raise SystemExit(3)\"", 30, group="g"),
        Step("hangs", '{py} -c "import time; time.sleep(120)"', 30, group="g"),
        Step("late", "{py} -c pass", 30),
    ]
    start = time.monotonic()
    rc, record = run_probe(runner, tmp_path, 8, steps)
    assert time.monotonic() - start < 30  # "hangs" ended at the stage's limit, not its own
    status = {s["name"]: s["status"] for s in record["steps"]}
    assert status == {
        "ok": "ok",
        "sees-record": "ok",
        "two-gpus": "skipped",
        "fails": "failed",
        "hangs": "timeout",
        "late": "not run",
    }
    fails = next(s for s in record["steps"] if s["name"] == "fails")
    assert fails["rc"] == 3 and fails["last_line"] == "boom" and (tmp_path / fails["log"]).is_file()
    assert rc == 1 and record["status"] == "failed" and record["commit"] == "abc" and record["finished"]
    rc, record = run_probe(runner, tmp_path, 30, steps[:1] + steps[2:3])
    assert rc == 0 and record["status"] == "ok"


def test_a_terminated_stage_records_what_ran(tmp_path):
    """A time limit outside the suite ends it with SIGTERM: the record says what was running."""
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / "tools")!r})
import stage_runner as r
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
steps = (r.Step("ok", "{{py}} -c pass", 30), r.Step("sleeps", "sleep 60", 90))
stage = r.Stage("9", "probe", "", 1, 120, steps)
header, fmt = {{"environment": {{"cuda_devices": 0}}}}, {{"py": sys.executable}}
sys.exit(r.StageRun(stage, r.Path(sys.argv[1]), header, fmt, dict(os.environ)).run())
"""
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    record = tmp_path / "stage-9.json"
    for _ in range(300):  # until "sleeps" runs
        time.sleep(0.1)
        if record.is_file() and json.loads(record.read_text())["steps"][1]["status"] == "running":
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    steps = {s["name"]: s["status"] for s in json.loads(record.read_text())["steps"]}
    assert steps == {"ok": "ok", "sleeps": "interrupted"}
    assert json.loads(record.read_text())["status"] == "failed"


@pytest.mark.slow
def test_smoke_runs_every_stage(cifar10_dir, tmp_path):
    """Every stage at tiny sizes on the CPU; any failing step fails this test."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "COMMIT": "0123abc",
        "PYTHON": sys.executable,
        "FASTSIGCLR_SUITE_DATA": str(cifar10_dir),
        "FASTSIGCLR_SHARED": str(shared_dir()),
    }
    out = subprocess.run(["bash", str(SUITE), "--smoke", "all"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    for key in "12345":
        record = json.loads((tmp_path / f"stage-{key}.json").read_text())
        assert record["status"] == "ok" and record["smoke"] and record["commit"] == "0123abc"
        env_record = record["environment"]
        assert env_record["versions"]["torch"] and env_record["date"] and env_record["device"]["type"]
        assert "nvidia_smi" in env_record and record["command"] == "tools/gpu_suite.sh --smoke all"
        skipped = [s["name"] for s in record["steps"] if s["status"] != "ok"]
        assert skipped == (["torchrun-2-ranks"] if key == "4" else []), record["steps"]
    for name in ("1/loss", "3/grid/loss", "3/chunked/loss", "3/compiled/loss", "4/dist", "4/train"):
        for suffix in (".json", ".png"):
            assert (tmp_path / f"stage-{name}-cpu{suffix}").is_file(), name
    # The given commit names what the steps' own records measured, not the checkout's git.
    assert json.loads((tmp_path / "stage-1" / "loss-cpu.json").read_text())["commit"] == "0123abc"
    run = tmp_path / "stage-5" / "run-cifar10"
    assert {"summary.json", "eval-knn.json", "eval-linear.json"} <= {p.name for p in run.iterdir()}
    assert not (run / "checkpoints").exists()
    # Stage 5 again into the same $OUT (a rerun): it trains anew instead of refusing to resume
    # records whose checkpoints drop-weights removed.
    again = subprocess.run(["bash", str(SUITE), "--smoke", "5"], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    assert json.loads((tmp_path / "stage-5.json").read_text())["status"] == "ok"


def compile_report(path: Path, **fields) -> Path:
    report = {"compile_seconds": 61.5, "variants": 40, "commit": "0123456789ab"}
    report["compiled_on"] = {"type": "cpu", "name": "x86_64", "threads": 2, "cores": 2}
    path.write_text(json.dumps({**report, **fields}))
    return path


def test_stage1_expected_time_reads_the_compile_report(tools, tmp_path, monkeypatch):
    """Stage 1's expected time is the measured compile seconds plus the estimate of the rest; a
    missing or damaged report gives the fallback estimate and a line that says why."""
    gpu_suite, _ = tools
    seconds, what = gpu_suite.stage1_compile(compile_report(tmp_path / "ok.json"))
    assert seconds == 61.5
    assert what == "61.5 s compiling 40 kernel variants, measured on a 2-core x86_64 CPU at 0123456"
    monkeypatch.setattr(gpu_suite, "STAGE1_COMPILE", tmp_path / "ok.json")
    assert gpu_suite.stage1_expected()[0] == 62 + gpu_suite.STAGE1_REST_S
    assert gpu_suite.build_stages()[0].expected_s == 62 + gpu_suite.STAGE1_REST_S
    monkeypatch.setattr(gpu_suite, "STAGE1_COMPILE", tmp_path / "missing.json")
    expected, what = gpu_suite.stage1_expected()
    assert expected == gpu_suite.STAGE1_FALLBACK_S
    assert "missing.json is missing (run tools/launch_inventory.py" in what
    for damaged in ("{not json", json.dumps({"variants": 3}), json.dumps([1])):
        (tmp_path / "bad.json").write_text(damaged)
        seconds, what = gpu_suite.stage1_compile(tmp_path / "bad.json")
        assert seconds is None and "bad.json is unreadable (" in what, what


def test_list_shows_stage1_expected_from_the_committed_report(tools):
    """The committed report: under a quarter of stage 1's limit, each variant of the committed
    inventory compiled once, its sum the rows' sum; `list` shows the expected time from it."""
    gpu_suite, _ = tools
    report = json.loads(gpu_suite.STAGE1_COMPILE.read_text())
    inventory = json.loads((ROOT / "benchmarks" / "results" / "stage1-launches.json").read_text())
    rows = report["kernels"]
    assert report["variants"] == len(rows) == inventory["variant_count"] == len(inventory["variants"])
    assert not [r for r in rows if "error" in r]
    assert abs(sum(r["seconds"] for r in rows) - report["compile_seconds"]) < 0.1 * len(rows)
    assert report["compile_seconds"] < 0.25 * gpu_suite.FIRST_STAGE_LIMIT_S == report["budget_s"]
    assert {json.dumps(r["constexprs"], sort_keys=True) for r in rows} == {
        json.dumps(v["constexprs"], sort_keys=True) for v in inventory["variants"]
    }
    out = subprocess.run(
        ["bash", str(SUITE), "list"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    expected = round(report["compile_seconds"]) + gpu_suite.STAGE1_REST_S
    assert re.search(rf"^1\s+correctness\s+5.5 min\s+{expected / 60:.1f} min", out.stdout, re.M), out.stdout
    line = f"stage 1 expected: {report['compile_seconds']:.1f} s compiling {len(rows)} kernel variants"
    assert line in out.stdout and f"+ {gpu_suite.STAGE1_REST_S} s estimated for the rest" in out.stdout


def test_a_given_commit_names_what_the_steps_measure(monkeypatch):
    """A copied checkout may carry an older .git than its files (the first GPU run's records named
    db4b003 for code at 5211000): a commit given to the suite reaches every record through
    FASTSIGCLR_COMMIT, which runinfo prefers; without it, git's own."""
    from fastsigclr.runinfo import git_commit

    monkeypatch.delenv("FASTSIGCLR_COMMIT", raising=False)
    own = git_commit()
    assert own is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", own)
    monkeypatch.setenv("FASTSIGCLR_COMMIT", "5211000ef4b4f21b203dae7f05f7c0d666b18e45")
    assert git_commit() == "5211000ef4b4f21b203dae7f05f7c0d666b18e45"
