"""Long epochs: a checkpoint inside an epoch (``--checkpoint-every``) resumes with exactly the
per-step losses and the bitwise weights of an uninterrupted run, after a kill or after SIGTERM
(which checkpoints at the next step and exits with status 75 for ``--resume auto``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from folder_fixture import smooth
from PIL import Image

import fastsigclr.train as trainer
from fastsigclr.cli import main
from fastsigclr.preempt import PREEMPTED_EXIT, parse_interval
from fastsigclr.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]


class Killed(BaseException):
    """The process dies here (the CLI handles Ctrl-C; nothing handles this)."""


def write_pngs(root: Path, classes: int = 2, per_class: int = 16, splits: tuple[str, ...] = ("train",)):
    for split in splits:
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            for k in range(per_class):
                seed = 100 * c + k + 1000 * (split != "train")
                Image.fromarray(smooth(32, 32, seed)).save(root / split / f"c{c}" / f"{k}.png")
    return root


def args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(
            f"train --dataset folder --data-dir {data} --device cpu --arch resnet18 --width 4 "
            f"--proj-dims 16,8 --batch-size 8 --epochs 2 --image-size 32 --log-every 1 --knn-every 0 "
            f"--no-progress --no-tensorboard --out {out}"
        ).split(),
        *extra,
    ]


def step_losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out) if r["kind"] == "step"]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    assert step_losses(a) == step_losses(b) and len(step_losses(a)) == 8
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("preempt")
    data = write_pngs(root / "data")
    assert main(args(data, root / "whole")) == 0
    return data, root / "whole"


def test_parse_interval():
    assert parse_interval("500") == (500, "steps") and parse_interval("30m") == (30.0, "minutes")
    assert parse_interval("1.5min") == (1.5, "minutes")
    for bad in ("0", "-3", "ten", "5h", "infm", "nanm", "1e999m"):  # "infm" was accepted: never
        with pytest.raises(ValueError, match="--checkpoint-every takes N steps"):
            parse_interval(bad)


def test_killed_mid_epoch_resumes_exactly(uninterrupted, tmp_path, monkeypatch, capsys):
    """Checkpoints every 3 steps (steps 3 and 6: inside epochs 1 and 2); a kill at step 8 (the
    last step) loses steps 7 and 8, which the resumed run recomputes."""
    data, whole = uninterrupted
    step = trainer.train_step
    calls = []

    def killed_at_8(*a, **kw):
        calls.append(1)
        if len(calls) == 8:
            raise Killed  # nothing after step 7 is written
        return step(*a, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "train_step", killed_at_8)
    with pytest.raises(Killed):
        main(args(data, out, "--checkpoint-every", "3"))
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"], state["position"]["batch"]) == (1, 6, 2)
    assert state["position"]["world_size"] == 1  # FFCV's order inside an epoch depends on it
    monkeypatch.setattr(trainer, "train_step", step)
    # Inside epoch 2, --epochs 1 is fewer than what it trained (it was declared complete, with
    # a batch of epoch 2 in its weights and a summary of 1 epoch).
    with pytest.raises(SystemExit):
        main(args(data, out, "--checkpoint-every", "3", "--resume", "--epochs", "1"))
    assert (
        "has already trained 1 epoch and 2 batches of epoch 2 and --epochs 1 is fewer; pass --epochs 2 "
        "or more" in capsys.readouterr().err
    )
    assert main(args(data, out, "--checkpoint-every", "3", "--resume")) == 0
    assert "resuming" in capsys.readouterr().err
    assert_same_run(whole, out)


def test_ctrl_c_while_the_first_checkpoint_is_written_keeps_it(uninterrupted, tmp_path, monkeypatch, capsys):
    """A Ctrl-C inside the first checkpoint's write lost the epoch (the temporary file was removed;
    "no checkpoint was written yet"), where SIGTERM's checkpoint kept it: now it waits for the write
    and then stops the run."""
    data, whole = uninterrupted
    real, calls = torch.save, []

    def interrupted_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C as the write begins
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted_save)
    out = tmp_path / "run"
    assert main(args(data, out)) == 130
    err = capsys.readouterr().err
    assert "(epoch 1) is kept" in err and "no checkpoint was written yet" not in err, err
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(torch, "save", real)
    assert main(args(data, out, "--resume")) == 0
    assert_same_run(whole, out)


def test_sigterm_checkpoints_mid_epoch_and_resume_auto_continues(uninterrupted, tmp_path):
    data, whole = uninterrupted
    out = tmp_path / "run"
    command = [sys.executable, "-m", "fastsigclr", *args(data, out, "--resume", "auto")]
    # The baseline ran in this process: the child uses as many threads (another test may have
    # set OMP_NUM_THREADS in os.environ, and a different thread count sums in another order).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    metrics = out / "metrics.jsonl"
    while not (metrics.is_file() and '"step": 1,' in metrics.read_text()):  # the first step is done
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first step"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED_EXIT, err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert 1 <= state["step"] < 8 and (state.get("position") or {}).get("batch", 0) >= 1, state["step"]
    assert "exiting with status 75: the same command with --resume auto continues it" in err
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "after batch" in done.stderr  # it resumed inside the epoch
    assert_same_run(whole, out)


def _foreign_handler(monkeypatch, signum: int) -> list:
    """signal.signal as Python behaves when a C library set ``signum``'s handler: the first call
    returns None (Python cannot read it), and None cannot be set again."""
    real, calls = signal.signal, []

    def fake(s, handler):
        if s != signum:
            return real(s, handler)
        if handler is None:
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable object")
        calls.append(handler)
        return None if len(calls) == 1 else real(s, handler)

    monkeypatch.setattr(signal, "signal", fake)
    return calls


def test_a_handler_set_outside_python_gives_way_to_the_default(monkeypatch):
    """Preemption and the FFCV worker watch replace a handler; one a C library set reads as None,
    and putting None back raised TypeError as training ended. The default action comes back."""
    from fastsigclr.data.ffcv_watch import WAKE, WorkerWatch
    from fastsigclr.preempt import Preemption

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, WAKE)}
    try:
        calls = _foreign_handler(monkeypatch, signal.SIGTERM)
        with Preemption():
            pass
        assert calls[-1] == signal.SIG_DFL
        monkeypatch.undo()
        calls = _foreign_handler(monkeypatch, WAKE)
        with WorkerWatch():
            pass
        assert calls[-1] == signal.SIG_DFL
    finally:
        monkeypatch.undo()
        for s, handler in before.items():
            signal.signal(s, handler)


def test_a_loader_whose_order_depends_on_the_ranks_resumes_inside_an_epoch_only_at_that_count():
    """FFCV deals an epoch by the rank count (one rank: a permutation of seed + epoch; several:
    DistributedSampler's): a checkpoint inside an epoch written by 2 ranks and resumed by 1 skipped
    the wrong batches, training 92 of 384 images twice and 108 not at all. Refused; between epochs,
    or with the other loaders (whose order is the same at any count), it goes on."""
    from types import SimpleNamespace

    from fastsigclr.config import FastSigCLRError
    from fastsigclr.data.dali_loader import DaliLoader
    from fastsigclr.data.ffcv_loader import FfcvLoader
    from fastsigclr.data.gpu_loader import GpuLoader
    from fastsigclr.recipe import check_position

    assert FfcvLoader.order_by_ranks and not GpuLoader.order_by_ranks and not DaliLoader.order_by_ranks
    ffcv, gpu, dali = (SimpleNamespace(loader=name) for name in ("ffcv", "gpu", "dali"))

    inside = {"epoch": 3, "position": {"batch": 5, "world_size": 2}}
    with pytest.raises(
        FastSigCLRError,
        match=r"inside epoch 4 \(after batch 5\), written by 2 ranks, and "
        r"--loader ffcv deals an epoch's images by the number of ranks: resume it on 2 ranks",
    ):
        check_position(ffcv, 1, inside)
    check_position(gpu, 1, inside)  # gpu, dali: the same order at any rank count
    check_position(dali, 1, inside)
    check_position(ffcv, 2, inside)
    check_position(ffcv, 1, {"epoch": 3, "position": None})  # between epochs
    check_position(ffcv, 1, {"epoch": 3, "position": {"batch": 5}})  # written before the count was
    check_position(ffcv, 1, None)  # a new run
    from fastsigclr.runfiles import wrong_types

    sums = {"batch": 5, "loss_steps": 5, "loss_sum": 1.0, "probe_correct": 0.0}
    state = {
        "epoch": 3,
        "step": 9,
        **{k: {} for k in ("model", "criterion", "probe", "optimizer", "probe_optimizer", "rng")},
    }
    assert not any("position" in w for w in wrong_types({**state, "position": {**sums, "world_size": 2}}))
    assert any("position" in w for w in wrong_types({**state, "position": {**sums, "world_size": "2"}}))


def _say_handler_then_sleep(writer) -> None:
    writer.send(str(signal.getsignal(signal.SIGTERM)))
    time.sleep(60)


def test_sigterm_outside_the_steps_raises_only_in_this_process(monkeypatch):
    """Outside the trainer's steps SIGTERM is a ``Terminated`` (a KeyboardInterrupt) in the
    command's process; a forked child (a loader's worker) still ends at once, as by default. For
    a rank of several nothing is replaced (torchrun's agent stops the other ranks with SIGTERM; a
    rank waiting for its peers would not return to Python until --dist-timeout), nor where SIGTERM
    is ignored."""
    import multiprocessing

    from fastsigclr.preempt import Terminated, terminate_raises

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    with terminate_raises():
        with pytest.raises(Terminated):
            signal.raise_signal(signal.SIGTERM)
        ctx = multiprocessing.get_context("fork")
        reader, writer = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_say_handler_then_sleep, args=(writer,))
        child.start()
        assert reader.poll(60) and reader.recv() == str(signal.SIG_DFL)  # reset as it was forked
        os.kill(child.pid, signal.SIGTERM)
        child.join(30)
        assert child.exitcode == -signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setenv("WORLD_SIZE", "2")  # one rank of several (torchrun's or by hand): nothing
    with terminate_raises():
        assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    with terminate_raises():
        assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ignored (nohup-like): left ignored
    try:
        with terminate_raises():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    """An uninterrupted run with a test split and the kNN monitor after every epoch."""
    root = tmp_path_factory.mktemp("monitored")
    data = write_pngs(root / "data", per_class=8, splits=("train", "val"))
    assert main(args(data, root / "whole", "--knn-every", "1", "--batch-size", "4")) == 0
    return data, root / "whole"


@pytest.mark.parametrize("epoch", [1, 2])
def test_sigterm_during_the_knn_monitor_checkpoints_and_resumes_exactly(
    monitored, tmp_path, monkeypatch, capsys, epoch
):
    """SIGTERM while an epoch's kNN monitor embeds the val split: the monitor ran to its end
    before the checkpoint (ImageNet's embeds 1.3 M images, past a scheduler's grace period), and
    after the last epoch the signal was ignored. Now the monitor stops at its next batch, the
    epoch is checkpointed (its record says the monitor was skipped) and the run exits with 75;
    the resumed run trains as if never stopped, and after the last epoch its monitor runs for the
    summary."""
    import fastsigclr.eval as evaluation

    data, whole = monitored
    real, calls, at = evaluation.batch_features, [], [2 * epoch]  # epoch's monitor's val split

    def signalled(*a, **kw):
        calls.append(1)
        if len(calls) == at[0]:
            signal.raise_signal(signal.SIGTERM)
        return real(*a, **kw)

    out, extra = tmp_path / "run", ("--knn-every", "1", "--batch-size", "4")
    monkeypatch.setattr(evaluation, "batch_features", signalled)
    with pytest.raises(SystemExit) as stopped:
        main(args(data, out, *extra))
    assert stopped.value.code == PREEMPTED_EXIT
    out_text, err = capsys.readouterr()
    assert f"epoch {epoch}/2" in out_text and "(kNN monitor skipped: preempted)" in out_text, out_text
    assert f"preempted: checkpointed after epoch {epoch}" in err, err
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == epoch
    assert not (out / "summary.json").exists()
    skipped = [r for r in read_metrics(out) if r["kind"] == "epoch" and r["epoch"] == epoch - 1]
    assert skipped[0]["knn_acc"] is None and skipped[0]["knn_skipped"] == "preempted"
    if epoch == 2:  # the next session owes only the monitor, for its summary: preempted again
        calls.clear()
        at[0] = 1
        with pytest.raises(SystemExit) as stopped:
            main(args(data, out, *extra, "--resume"))
        assert stopped.value.code == PREEMPTED_EXIT  # it ended 143 (Ctrl-C's way), no requeue
        assert "preempted: checkpointed after its last epoch" in capsys.readouterr().err
        assert not (out / "summary.json").exists()
    monkeypatch.setattr(evaluation, "batch_features", real)
    assert main(args(data, out, *extra, "--resume")) == 0
    assert step_losses(out) == step_losses(whole) and len(step_losses(out)) == 8
    wa, wb = weights(whole), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (whole, out)]
    assert summaries[1]["knn_acc"] == summaries[0]["knn_acc"] is not None


def test_an_image_repaired_between_sessions_stays_out(tmp_path, monkeypatch, capsys):
    """The gpu loader decodes the images before training and leaves out those that fail (within
    --max-broken). A file repaired before a resume was trained on: 32 images where the run had 31,
    its batches and losses another run's, without a word. The checkpoint records the ids left out
    and a resumed run keeps them out, unread, as a run that never stopped does."""
    data = write_pngs(tmp_path / "data")
    cut = data / "train" / "c1" / "5.png"
    whole_bytes = cut.read_bytes()
    cut.write_bytes(whole_bytes[: len(whole_bytes) // 2])  # its header reads, its pixels do not
    extra = ("--max-broken", "0.05")
    assert main(args(data, tmp_path / "whole", *extra)) == 0
    step, calls = trainer.train_step, []

    def killed_in_epoch_2(*a, **kw):
        calls.append(1)
        if len(calls) == 4:  # 31 images in batches of 8: 3 steps an epoch
            raise Killed
        return step(*a, **kw)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "train_step", killed_in_epoch_2)
    with pytest.raises(Killed):
        main(args(data, out, *extra))
    monkeypatch.setattr(trainer, "train_step", step)
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["undecoded"] == [
        27
    ]  # c1/5.png: 16 + its place in c1 by name
    cut.write_bytes(whole_bytes)  # repaired
    capsys.readouterr()
    assert main(args(data, out, *extra, "--resume")) == 0
    err = capsys.readouterr().err
    assert f"{cut}: left out: an earlier session of this run could not decode it" in err, err
    assert step_losses(out) == step_losses(tmp_path / "whole") and len(step_losses(out)) == 6
    wa, wb = weights(tmp_path / "whole"), weights(out)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (tmp_path / "whole", out)]
    assert summaries[0]["train_images"] == summaries[1]["train_images"] == 31
