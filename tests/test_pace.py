"""A run's pace: img/s per logged step, the run's time left on the progress bar, and what a CPU
run of a GPU-sized job says at its start."""

import json
import re
from pathlib import Path

import pytest
import torch

import fastsigclr.train
from fastsigclr.cli import main
from fastsigclr.pace import SMALL_CPU_RUN, Pace, cpu_notice, format_duration
from fastsigclr.runlog import read_metrics


def tiny_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(
            f"train --dataset cifar10 --data-dir {data_dir} --device cpu --width 8 --proj-dims 64,32 "
            f"--limit-test 50 --batch-size 32 --log-every 1 --knn-every 0 --no-tensorboard --out {out}"
        ).split(),
        *extra,
    ]


def test_step_img_per_s_counts_steps_without_a_progress_bar(cifar10_dir, tmp_path):
    """The last step's img/s covers the same steps as the epoch's, over a little less time."""
    out = tmp_path / "run"
    assert main(tiny_args(cifar10_dir, out, "--limit-train", "128", "--epochs", "1", "--no-progress")) == 0
    records = read_metrics(out)
    last_step = [r for r in records if r["kind"] == "step"][-1]
    epoch = next(r for r in records if r["kind"] == "epoch")
    assert last_step["step"] == 4
    assert 1.0 <= last_step["img_per_s"] / epoch["img_per_s"] <= 1.2, (last_step, epoch)


def test_a_resumed_epochs_img_per_s_counts_this_sessions_steps(cifar10_dir, tmp_path):
    """Resumed after 1 of its 4 batches, an epoch's record counted all 4 batches' images over the
    time of the 3 this session ran (2515 img/s on a 2-core CPU for one batch of 32)."""
    from fastsigclr import checkpoint

    out = tmp_path / "run"
    assert main(tiny_args(cifar10_dir, out, "--limit-train", "128", "--epochs", "1", "--no-progress")) == 0
    last = out / "checkpoints" / "last.pt"
    state = checkpoint.load(last)  # as if stopped after batch 1 of epoch 2
    state.update(step=5, position={"batch": 1, "loss_sum": 0.0, "loss_steps": 0, "probe_correct": 0.0})
    checkpoint.save_atomic(state, last)
    argv = tiny_args(cifar10_dir, out, "--limit-train", "128", "--epochs", "2", "--no-progress", "--resume")
    assert main(argv) == 0
    records = [r for r in read_metrics(out) if r["epoch"] == 1]
    steps, epoch = (
        [r for r in records if r["kind"] == "step"],
        next(r for r in records if r["kind"] == "epoch"),
    )
    assert [r["step"] for r in steps] == [6, 7, 8]
    assert 1.0 <= steps[-1]["img_per_s"] / epoch["img_per_s"] <= 1.2, (steps[-1], epoch)
    assert epoch["img_per_s"] == pytest.approx(3 * 32 / epoch["seconds"])
    summary = json.loads((out / "summary.json").read_text())  # the session's 3 batches, not 4
    assert summary["img_per_s_this_session"] * summary["seconds_this_session"] == pytest.approx(3 * 32)


def test_progress_bar_shows_the_time_left_of_the_run(cifar10_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(cifar10_dir, out, "--limit-train", "64", "--epochs", "2", "--progress")) == 0
    left = re.findall(r"run_left=(\d+s|\d+m\d\ds)", capsys.readouterr().err)
    assert len(left) >= 4, left  # one per logged step


@pytest.mark.parametrize(
    "seconds,text", [(4.6, "5s"), (425, "7m05s"), (11_100, "3h05m"), (4.2 * 86_400, "4.2 days")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_cpu_notice_only_for_gpu_sized_cpu_jobs():
    cpu = torch.device("cpu")
    default = cpu_notice(cpu, 50_000, 1000, "resnet18", 64)
    assert default and "1000 epochs of 50,000 images (resnet18, width 64)" in default
    assert SMALL_CPU_RUN in default
    assert cpu_notice(cpu, 5000, 10, "resnet18", 16) is None  # the suggested command itself
    assert cpu_notice(torch.device("cuda"), 50_000, 1000, "resnet18", 64) is None


def test_cpu_notice_names_bf16_where_the_cpu_has_matrix_units(monkeypatch):
    """A CPU with AMX trains in bf16 several times faster than in fp32 (its default): the notice
    says so, unless the run is bf16 already or oneDNN is capped below AMX."""
    import fastsigclr.pace as pace

    cpu = torch.device("cpu")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
        for precision in ("auto", "fp32", "bf16"):
            text = cpu_notice(cpu, 50_000, 1000, "resnet18", 64, precision)
            assert (pace.AMX_HINT in text) == (amx and precision != "bf16"), (amx, precision)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert pace.bf16_matrix_units()
    for isa, units in (("AVX512_CORE", False), ("AVX2", False), ("avx512_core_amx", True), ("ALL", True)):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        assert pace.bf16_matrix_units() == units, isa
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")  # the older name
    assert not pace.bf16_matrix_units()


def test_pace_estimates_the_run_from_step_one_then_from_the_steps_after_it():
    now = [0.0]
    pace = Pace(batch_size=128, steps_left=1000, estimate=True, clock=lambda: now[0])
    lines = []
    for duration in [10.0] + [2.0] * 6:  # a slow first step, then 2 s per step
        now[0] += duration
        lines.append(pace.step())
    # Step 1 at once (10 s a step: an upper bound, said so), the refined figure after step 4.
    assert "12.8 img/s" in lines[0] and "(step 1, with its one-time costs: at most)" in lines[0]
    assert "999 steps left take about 2h46m; refined after step 4" in lines[0]
    assert lines[1:3] == [None] * 2 and lines[4:] == [None] * 3
    assert "64.0 img/s" in lines[3] and "996 steps left take about 33m12s" in lines[3]
    assert "refined" not in lines[3]
    assert pace.run_left() == pytest.approx(22.0 / 7 * 993)
    quiet = Pace(batch_size=128, steps_left=1000, clock=lambda: now[0])
    assert all(quiet.step() is None for _ in range(6))


def test_the_default_job_on_a_cpu_says_how_long_it_takes(cifar10_dir, tmp_path, monkeypatch, capsys):
    """The default 1000-epoch CIFAR-10 job (narrowed to width 8 to keep this test short), stopped
    with Ctrl-C after its first steps: the notice at the start, the estimate from step 1, then the
    refined one, once each."""
    real_step, calls = fastsigclr.train.train_step, []

    def interrupt_at_step_six(*args, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real_step(*args, **kw)

    monkeypatch.setattr(fastsigclr.train, "train_step", interrupt_at_step_six)
    args = f"train --data-dir {cifar10_dir} --device cpu --width 8 --proj-dims 64,32 --batch-size 64"
    assert main([*args.split(), "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert err.count("note: 1000 epochs of 50,000 images (resnet18, width 8) on the CPU") == 1, err
    first = re.findall(r"estimate: [\d.]+ img/s on this CPU \(step 1.* 780,999 steps left take about", err)
    estimate = re.findall(r"estimate: [\d.]+ img/s on this CPU .* 780,996 steps left take about \S+", err)
    assert len(first) == 1 and len(estimate) == 1 and err.count(SMALL_CPU_RUN) == 3, err
    assert err.index("780,999 steps") < err.index("780,996 steps")
