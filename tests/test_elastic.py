"""Restarts that resume: ``--resume auto`` under ``torchrun --max-restarts`` (two network hosts on
one machine, tests/netns.py), and a kill during a checkpoint write, in one process and in a
two-node job. Each killed run must end with the per-step records and final weights of an
uninterrupted run, bitwise (CPU, same world size, one thread per rank).

Faults come from tests/faults/sitecustomize.py: the command under test is unchanged."""

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from netns import ADDRS, RDZV_PORT, HostPair, Node, Unavailable, torchrun_argv

from fastsigclr import checkpoint, cluster, runlock
from fastsigclr.config import FastSigCLRError
from fastsigclr.runconfig import TrainConfig
from fastsigclr.runlog import read_metrics

ROOT = Path(__file__).resolve().parents[1]
FAULTS = ROOT / "tests" / "faults"
NPROC = 2  # ranks per node: 4 in all, 8 images per rank per step
RESTARTS = 2
RDZV = {"join_timeout": 120, "read_timeout": 30}
STEPS_PER_EPOCH = 4  # 128 images / batch 32
EPOCHS = 3
TIMING = ("img_per_s", "seconds")  # the only fields a restart may change
# torchrun's environment on every node of a restarting job (fastsigclr.cluster.check_restartable).
RESTART_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
PORTS = itertools.count(RDZV_PORT + 1)  # the uninterrupted job uses RDZV_PORT


def train_args(data_dir: Path, out: Path) -> list[str]:
    return (
        f"train --dataset cifar10 --data-dir {data_dir} --device cpu --limit-train 128 --limit-test 100 "
        f"--width 8 --proj-dims 64,32 --batch-size 32 --epochs {EPOCHS} --log-every 1 --knn-every 0 "
        f"--no-progress --no-tensorboard --lr 0.05 --seed 5 --resume auto --out {out}"
    ).split()


def records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run_dir)]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The same records (one per step, in order) and bitwise the same final weights."""
    got, want = records(run_dir), records(reference)
    steps = [r["step"] for r in got if r["kind"] == "step"]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), steps
    assert got == want
    a, b = (checkpoint.load(d / "checkpoints" / "last.pt") for d in (run_dir, reference))
    assert a["epoch"] == b["epoch"] == EPOCHS
    for part in ("model", "criterion", "probe"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def fault_env(fault: str, once: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH")) if p)
    return {"FSC_FAULT": fault, "FSC_FAULT_ONCE": str(once), "PYTHONPATH": path}


def one_process(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastsigclr", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(cifar10_dir, tmp_path):
    """One process, anywhere: killed halfway through writing epoch 2's checkpoint, the run keeps
    epoch 1's; the same command (--resume auto) removes the half-written file, continues from
    epoch 1 and ends exactly as an uninterrupted run; run again, it is complete and changes nothing."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    done = one_process(train_args(cifar10_dir, whole))
    assert done.returncode == 0, done.stderr[-3000:]
    killed = one_process(train_args(cifar10_dir, broken), fault_env("checkpoint:2", tmp_path / "fired"))
    assert killed.returncode == -9, killed.stderr[-3000:]
    (partial,) = (broken / "checkpoints").glob(".last.pt.*.tmp")
    assert partial.stat().st_size > 0
    with pytest.raises(Exception):  # noqa: B017 - torch's error for a cut file varies
        torch.load(partial, weights_only=True)
    assert checkpoint.load(broken / "checkpoints" / "last.pt")["epoch"] == 1
    resumed = one_process(train_args(cifar10_dir, broken))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"removed {partial}" in resumed.stderr, resumed.stderr
    assert "after epoch 1 (step 4)" in resumed.stderr, resumed.stderr
    assert not list((broken / "checkpoints").glob(".*.tmp"))
    assert_same_run(broken, whole)
    before = (broken / "metrics.jsonl").read_bytes(), (broken / "checkpoints" / "last.pt").read_bytes()
    again = one_process(train_args(cifar10_dir, broken))
    assert again.returncode == 0 and "already complete" in again.stderr, again.stderr[-3000:]
    after = (broken / "metrics.jsonl").read_bytes(), (broken / "checkpoints" / "last.pt").read_bytes()
    assert before == after
    assert json.loads((broken / "config.json").read_text())["config"]["resume"] == "yes"


# Two hosts (network namespaces), 2 ranks each, torchrun restarting the job.


@pytest.fixture(scope="module")
def hosts():
    try:
        pair = HostPair.create()
    except Unavailable as err:
        pytest.skip(str(err))
    yield pair.hosts
    pair.destroy()


@pytest.fixture
def launch(hosts, tmp_path, request):
    """launch(node_rank, out, env=...) starts that node's restarting agent; each test has its own
    rendezvous port, so that none waits for the last one's to be free."""
    nodes: list[Node] = []
    port = next(PORTS)
    data_dir = request.getfixturevalue("cifar10_dir")

    def start(node_rank: int, out: Path, env: dict[str, str] | None = None) -> Node:
        host = hosts[node_rank]
        argv = torchrun_argv(node_rank, NPROC, f"{ADDRS[0]}:{port}", host.addr, RDZV, RESTARTS)
        log = tmp_path / f"node{node_rank}-{len(nodes)}.log"
        node = Node(
            host, [*argv, "-m", "fastsigclr", *train_args(data_dir, out)], log, {**RESTART_ENV, **(env or {})}
        )
        nodes.append(node.start())
        return node

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture(scope="module")
def uninterrupted(hosts, cifar10_dir, tmp_path_factory) -> Path:
    """The two-node job that nothing interrupts: what every killed job must end as."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    nodes = []
    for node_rank in (0, 1):
        argv = torchrun_argv(
            node_rank, NPROC, f"{ADDRS[0]}:{RDZV_PORT}", hosts[node_rank].addr, RDZV, RESTARTS
        )
        log = out.parent / f"node{node_rank}.log"
        argv = [*argv, "-m", "fastsigclr", *train_args(cifar10_dir, out)]
        nodes.append(Node(hosts[node_rank], argv, log, RESTART_ENV))
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            assert node.wait(timeout=400) == 0, node.tail()
    finally:
        for node in nodes:
            node.stop()
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2 * NPROC
    return out


def wait_for_step(run_dir: Path, step: int, nodes: list[Node], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and any(
            r.get("step") == step for r in _readable(run_dir / "metrics.jsonl")
        ):
            return
        assert all(n.proc.poll() is None for n in nodes), [n.tail() for n in nodes]
        time.sleep(0.1)
    raise TimeoutError(f"step {step} not logged within {timeout} s")


def _readable(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written
            continue
    return out


def restarted(nodes: list[Node]) -> str:
    """Every node's output, once each has finished with status 0."""
    for node in nodes:
        assert node.wait(timeout=500) == 0, node.tail()
    return "\n".join(node.output() for node in nodes)


@pytest.mark.parametrize(
    "fault",
    # rank 3 (node 1's second rank) dies after the 2nd step of epoch 2; rank 0 dies halfway
    # through writing epoch 2's checkpoint.
    [f"step:3:{STEPS_PER_EPOCH + 2}", "checkpoint:2"],
)
def test_a_killed_rank_is_restarted_and_the_job_ends_as_if_uninterrupted(
    launch, uninterrupted, tmp_path, fault
):
    out = tmp_path / "run"
    env = fault_env(fault, tmp_path / "fired")
    nodes = [launch(r, out, env) for r in (0, 1)]
    text = restarted(nodes)
    assert (tmp_path / "fired").exists(), text[-4000:]
    assert "after epoch 1 (step 4)" in text, text[-4000:]
    if fault.startswith("checkpoint"):
        assert "last.pt." in text and "left by a writer that was stopped" in text, text[-4000:]
    assert_same_run(out, uninterrupted)


def test_a_killed_node_started_again_resumes_the_job(launch, uninterrupted, tmp_path):
    """Node 1's agent and workers SIGKILLed mid-epoch 2; node 0's agent restarts its workers and
    waits in the rendezvous; node 1 started again with the same command joins, and the job
    resumes from epoch 1's checkpoint."""
    out = tmp_path / "run"
    nodes = [launch(r, out) for r in (0, 1)]
    wait_for_step(out, STEPS_PER_EPOCH + 1, nodes)
    nodes[1].kill()
    again = launch(1, out)
    text = restarted([nodes[0], again])
    assert "after epoch 1 (step 4)" in text, text[-4000:]
    assert_same_run(out, uninterrupted)


def test_a_restarting_job_needs_its_own_store_per_attempt(monkeypatch):
    """torchrun --max-restarts with the agent's store shared would fail its restarts: refused."""
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    with pytest.raises(FastSigCLRError, match="set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the environment"):
        cluster.check_restartable()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # what that variable gives
    cluster.check_restartable()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # no restart: the shared store is fine
    cluster.check_restartable()


def test_readme_runs_the_tested_restart_commands():
    """The README's restart commands are these tests', modulo hosts, port, ranks per node and
    timeouts, and end with --resume auto."""
    readme = re.sub(r"\\\n\s*", "", (ROOT / "README.md").read_text())  # join continued lines

    def normal(text: str) -> str:
        text = text.replace(ADDRS[0], "HOST0").replace(ADDRS[1], "HOST1")
        text = re.sub(r"(--nproc_per_node) \d+", r"\1 N", text)
        text = re.sub(r"(_timeout)=\d+", r"\1=N", text)
        return re.sub(r":\d+\b", ":PORT", text)

    env = " ".join(f"{name}={value}" for name, value in RESTART_ENV.items())
    for node_rank in (0, 1):
        argv = torchrun_argv(node_rank, NPROC, f"{ADDRS[0]}:{RDZV_PORT}", ADDRS[node_rank], RDZV, RESTARTS)
        command = normal(" ".join([env, *argv, "-m", "fastsigclr", "train"]))
        lines = [line for line in normal(readme).splitlines() if command in line]
        assert lines, f"README lacks: {command}"
        assert all(line.endswith(" --resume auto") for line in lines), lines


HOLD = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.write(fd, b'pid 7 on old'); "
    "print('locked', flush=True); time.sleep(float(sys.argv[2]))"
)


def hold_lock(run_dir: Path, seconds: float) -> subprocess.Popen:
    """A worker of the previous attempt, still dying: it holds the run's lock for ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir / runlock.LOCK), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_restarted_rank_0_waits_for_a_dying_workers_lock(tmp_path, monkeypatch, capsys):
    """Under torchrun restarts rank 0 waits up to --dist-timeout / 2 for the lock; a holder that
    outlives the wait is the usual error, naming it."""
    cfg = TrainConfig(dist_timeout=60)
    assert runlock.lock_wait(cfg) == 0  # outside torchrun's restarts: no wait
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "2")
    assert runlock.lock_wait(cfg) == 30
    holder = hold_lock(tmp_path, 1.0)
    start = time.monotonic()
    os.close(runlock.lock_dir(tmp_path, runlock.lock_wait(cfg)))
    assert 0.3 < time.monotonic() - start < 30  # measured: the holder's exit, about 1 s
    assert "is locked by pid 7 on old: waiting up to 30 s" in capsys.readouterr().err
    holder.wait()
    holder = hold_lock(tmp_path, 60)
    try:
        with pytest.raises(FastSigCLRError, match=r"in use by another training \(pid 7 on old\) for 0.5 s"):
            runlock.lock_dir(tmp_path, 0.5)
    finally:
        holder.kill()
        holder.wait()
