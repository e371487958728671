"""The distributed sigmoid loss with 2 and 3 gloo processes on the CPU: value and every gradient
(z, logit bias, learnable logit scale) equal the single-process loss on the concatenated batch, for
both modes, 2 and 3 views, the torch path and the Triton kernel (interpreter without CUDA)."""

import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import KERNEL_DEVICE, assert_close_rel, fp32_tol
from test_sigmoid_loss import error_scales, reference

from fastsigclr import checkpoint, runlock
from fastsigclr.cli import main
from fastsigclr.kernels import sigmoid_block
from fastsigclr.losses import (
    LOSSES,
    DistributedCriterion,
    sigmoid_block_chunked,
    sigmoid_pairwise_loss,
    sigmoid_pairwise_loss_distributed,
)
from fastsigclr.losses.ranks import gather_rows
from fastsigclr.models.sync_bn import GlobalBatchNorm
from fastsigclr.runlog import read_metrics

N_PER_RANK = 5  # odd, and 2N = 10 per rank: no size is a multiple of any block
D = 19
T0, B0 = 7.0, -3.0
# The gloo workers hold CPU tensors: the kernel takes them only in the interpreter. With CUDA present
# it needs device tensors, which gloo cannot gather and two ranks cannot share one GPU with NCCL; the
# kernel's cross-rank block is then checked by test_cross_rank_block_against_float64, the ranks by the
# GPU suite's two-GPU torchrun step.
IMPLS = ("torch",) if torch.cuda.is_available() else ("torch", "triton")
CASES = [
    (mode, n_views, impl)
    for mode in ("ring", "gather")
    for n_views in (2, 3)
    for impl in IMPLS
    if impl == "torch" or n_views == 2  # the kernel: once per mode (the interpreter is slow)
]


def global_batch(world: int, n_views: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 * world + n_views)
    return torch.randn(n_views * world * N_PER_RANK, D, generator=gen, dtype=torch.float64).to(dtype)


def local_rows(z: torch.Tensor, rank: int, world: int, n_views: int) -> torch.Tensor:
    """Rank r's rows of the global view-major batch: rows v·K·n + r·n … + n − 1 for each view v."""
    n = N_PER_RANK
    return torch.cat([z[v * world * n + rank * n : v * world * n + (rank + 1) * n] for v in range(n_views)])


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        for mode, n_views, impl in CASES:
            z = local_rows(global_batch(world, n_views), rank, world, n_views).requires_grad_()
            log_t = torch.tensor(math.log(T0), requires_grad=True)
            b = torch.tensor(B0, requires_grad=True)
            loss = sigmoid_pairwise_loss_distributed(z, log_t.exp(), b, n_views=n_views, mode=mode, impl=impl)
            loss.backward()
            results[(mode, n_views, impl)] = (loss.detach(), z.grad, log_t.grad, b.grad)
        # The other losses through DistributedCriterion (gathered rows, gradient to the owner).
        z = local_rows(global_batch(world, 2), rank, world, 2).requires_grad_()
        labels = torch.arange(rank * N_PER_RANK, (rank + 1) * N_PER_RANK) % 3
        for kind in ("simclr", "supcon"):
            crit = DistributedCriterion(LOSSES[kind].build(temperature=0.2, n_views=2), LOSSES[kind])
            z.grad = None
            loss = crit(z, labels) if kind == "supcon" else crit(z)
            loss.backward()
            results[kind] = (loss.detach(), z.grad.clone())
        # compute_loss=False through the wrapper: NaN value, the same gradients.
        sig = LOSSES["sigclr"]
        crit = DistributedCriterion(sig.build(n_views=2, **{**sig.defaults(), "logit_scale": T0}), sig)
        for compute_loss in (True, False):
            z.grad = None
            loss = crit(z, compute_loss=compute_loss)
            loss.backward()
            results[("compute_loss", compute_loss)] = (loss.detach(), z.grad.clone())
        # A shape mismatch is an error on every rank, not a hang.
        try:
            sigmoid_pairwise_loss_distributed(torch.randn(4 + 2 * rank, D), 10.0, -10.0)
            results["mismatch"] = "no error"
        except ValueError as err:
            results["mismatch"] = str(err)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, tmp_path: Path) -> list[dict]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_loss_equals_single_process(world, tmp_path):
    per_rank = run_ranks(world, tmp_path)
    for mode, n_views, impl in CASES:
        what = f"K={world} {mode} V={n_views} {impl}"
        z = global_batch(world, n_views).double().requires_grad_()
        log_t = torch.tensor(math.log(T0), dtype=torch.float64, requires_grad=True)
        b = torch.tensor(B0, dtype=torch.float64, requires_grad=True)
        expected = reference(z, log_t.exp(), b, n_views)
        expected.backward()
        dz_scale, dt_scale = error_scales(z.detach(), T0, B0, n_views)
        for rank, results in enumerate(per_rank):
            loss, dz, dlog_t, db = results[(mode, n_views, impl)]
            assert_close_rel(loss, expected, 5e-6, f"{what} loss on rank {rank}")
            rows = local_rows(z.grad, rank, world, n_views)
            assert_close_rel(dz, rows, 5e-6, f"{what} dz on rank {rank}", scale=dz_scale)
            # d/dt' = t·dL/dt, so its error scale is t·Σ|g|.
            assert_close_rel(dlog_t, log_t.grad, 5e-6, f"{what} dt on rank {rank}", scale=T0 * dt_scale)
            assert_close_rel(db, b.grad, 5e-6, f"{what} db on rank {rank}")
        # Equal to the package's own single-process loss too (not only to the oracle).
        single = sigmoid_pairwise_loss(global_batch(world, n_views), T0, B0, n_views=n_views, impl="torch")
        assert_close_rel(per_rank[0][(mode, n_views, impl)][0], single, 2e-6, f"{what} vs single process")

    z = global_batch(world, 2).requires_grad_()
    labels = torch.arange(world * N_PER_RANK) % 3
    for kind in ("simclr", "supcon"):
        z.grad = None
        crit = LOSSES[kind].build(temperature=0.2, n_views=2)
        expected = crit(z, labels) if kind == "supcon" else crit(z)
        expected.backward()
        for rank, results in enumerate(per_rank):
            loss, dz = results[kind]
            assert_close_rel(loss, expected, 2e-6, f"{kind} loss rank {rank}")
            assert_close_rel(dz, local_rows(z.grad, rank, world, 2), 2e-5, f"{kind} dz rank {rank}")
    for results in per_rank:
        assert "same shape" in results["mismatch"], results["mismatch"]
        (loss, dz), (skipped, dz_skipped) = results[("compute_loss", True)], results[("compute_loss", False)]
        assert torch.isfinite(loss) and torch.isnan(skipped) and torch.equal(dz, dz_skipped)


def test_distributed_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        sigmoid_pairwise_loss_distributed(torch.randn(4, 3), 10.0, -10.0)
    with pytest.raises(ValueError, match="mode"):
        sigmoid_pairwise_loss_distributed(torch.randn(4, 3), 10.0, -10.0, mode="allreduce")
    with pytest.raises(RuntimeError, match="init_process_group"):
        gather_rows(torch.randn(4, 3), 2)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cross_rank_block_against_float64(impl):
    """A block of another rank's columns: rectangular, every pair a negative, scaled by 1/M."""

    gen = torch.Generator().manual_seed(3)
    rows = torch.nn.functional.normalize(torch.randn(13, 37, generator=gen, dtype=torch.float64), dim=1)
    cols = torch.nn.functional.normalize(torch.randn(29, 37, generator=gen, dtype=torch.float64), dim=1)
    t, b, inv_m = 6.0, -2.0, 1 / 90
    a = t * rows @ cols.T + b
    g = torch.sigmoid(a) * inv_m
    want = (
        torch.nn.functional.softplus(a).sum() * inv_m,
        2 * t * g @ cols,
        (g * (rows @ cols.T)).sum(),
        g.sum(),
    )
    args = dict(n_per_view=13, inv_m=inv_m)
    if impl == "torch":
        loss, dz, _, dt, db = sigmoid_block_chunked(
            rows.float(), cols.float(), torch.tensor(t), torch.tensor(b), chunk_rows=5, pairs="cross", **args
        )
        got = (loss, dz, dt, db)
    else:
        dev = KERNEL_DEVICE
        loss, dz, _, dt, db = sigmoid_block(
            rows.float().to(dev),
            cols.float().to(dev),
            torch.tensor(t, device=dev),
            torch.tensor(b, device=dev),
            block_m=16,
            block_n=16,
            block_k=16,
            pairs="cross",
            **args,
        )
        got = (loss, dz, dt, db)
    for name, x, y in zip(("loss", "dz", "dt", "db"), got, want, strict=True):
        assert_close_rel(x, y, fp32_tol(5e-6) if impl == "triton" else 5e-6, f"{impl} {name}")


BN_SHAPES = {1: (2 * 3, 4), 2: (2 * 3, 4, 2, 3)}  # (global rows, channels, ...): BatchNorm1d, 2d


def _bn_case(dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
    """A float64 global batch, the weights of a loss on it, and a BatchNorm with affine parameters."""
    gen = torch.Generator().manual_seed(dim)
    x = torch.randn(BN_SHAPES[dim], generator=gen, dtype=torch.float64) * 3 + 1
    weights = torch.randn(BN_SHAPES[dim], generator=gen, dtype=torch.float64)
    bn = (torch.nn.BatchNorm1d if dim == 1 else torch.nn.BatchNorm2d)(4, momentum=0.3).double()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
        bn.bias.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    return x, weights, bn


def _bn_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Two steps of a GlobalBatchNorm on this rank's rows; the loss's share of its rows."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for dim in BN_SHAPES:
                x, weights, bn = _bn_case(dim)
                gbn = GlobalBatchNorm(4, momentum=0.3).double()
                gbn.load_state_dict(bn.state_dict())
                rows = slice(rank * 3, (rank + 1) * 3)
                for step in range(2):
                    mine = (x[rows] * (step + 1)).requires_grad_()
                    y = gbn(mine)
                    (y * weights[rows]).sum().backward()
                    grads = (mine.grad, gbn.weight.grad.clone(), gbn.bias.grad.clone())
                    results[(dim, step)] = (y.detach(), *grads)
                    gbn.weight.grad = gbn.bias.grad = None
                results[(dim, "buffers")] = {k: v.clone() for k, v in gbn.state_dict().items()}
        results["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_global_batch_norm_equals_batch_norm_on_the_whole_batch(tmp_path):
    """2 gloo ranks × 3 rows = one BatchNorm on the 6 rows, in float64: the output, both steps'
    running statistics, and the gradients: the input's (the backward all-reduce: without it each
    rank misses the other's share of d(mean) and d(var)), and the weight's and bias's summed over
    the ranks (as DDP sums them). No rank warns (torch 2.13 deprecates
    torch.distributed.nn.functional.all_reduce with a FutureWarning on every rank)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_bn_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank, results in enumerate(per_rank):
        assert results["warnings"] == [], (rank, results["warnings"])
    for dim in BN_SHAPES:
        x, weights, bn = _bn_case(dim)
        for step in range(2):
            whole = (x * (step + 1)).requires_grad_()
            y = bn(whole)
            (y * weights).sum().backward()
            for rank, results in enumerate(per_rank):
                got_y, got_dx, _, _ = results[(dim, step)]
                rows = slice(rank * 3, (rank + 1) * 3)
                torch.testing.assert_close(got_y, y.detach()[rows], rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(got_dx, whole.grad[rows], rtol=1e-10, atol=1e-12)
            for i, (name, param) in enumerate((("weight", bn.weight), ("bias", bn.bias))):
                summed = per_rank[0][(dim, step)][2 + i] + per_rank[1][(dim, step)][2 + i]
                torch.testing.assert_close(summed, param.grad, rtol=1e-10, atol=1e-12, msg=name)
            bn.weight.grad = bn.bias.grad = None
        for results in per_rank:
            for key, value in bn.state_dict().items():
                torch.testing.assert_close(results[(dim, "buffers")][key], value, rtol=1e-12, atol=0)


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += [f"--master_port={port}", "-m", "fastsigclr", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(
            f"train --dataset cifar10 --data-dir {data_dir} --device cpu --limit-train 256 --limit-test 200 "
            f"--width 8 --proj-dims 64,32 --batch-size 64 --epochs 1 --log-every 1 --knn-every 0 "
            f"--no-progress --no-tensorboard --lr 0.05 --out {out}"
        ).split(),
        *extra,
    ]


def test_torchrun_matches_one_process(cifar10_dir, tmp_path):
    """2 ranks × 32 images with global batch norm = 1 process × 64 images: same step losses and
    weights; then the 2-rank run resumes in 1 process and the 1-process run in 2 ranks."""
    one, two = tmp_path / "one", tmp_path / "two"
    single = torchrun(1, *train_args(cifar10_dir, one))
    assert single.returncode == 0, single.stderr[-3000:]
    double = torchrun(2, *train_args(cifar10_dir, two))
    assert double.returncode == 0, double.stderr[-3000:]
    # torch 2.13's deprecations (DDP's broadcast_buffers, torch.distributed.nn's all_reduce) warned
    # on every rank.
    assert "FutureWarning" not in double.stderr, double.stderr[-3000:]
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
        assert (two / name).is_file(), name
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2
    # The kNN monitor's vote, each rank holding half of both splits, is one process's on the same
    # checkpoint (eval: the whole bank in one process).
    assert main(["eval", "knn", "--run", str(two), "--no-progress"]) == 0
    assert json.loads((two / "eval-knn.json").read_text())["accuracy"] == summary["knn_acc"] > 0.1
    a = [r["loss"] for r in read_metrics(one) if r["kind"] == "step"]
    b = [r["loss"] for r in read_metrics(two) if r["kind"] == "step"]
    assert len(a) == len(b) == 4
    # Step 1 sees the same data and weights: only the fp32 summation order differs (measured
    # 1.2e-6 relative). Step 2 sees the first update: measured 1.0e-4 apart, and a one-process
    # run with 2 threads instead of 1 differs from it by 1.3e-4, so fp32 noise is that large;
    # gradients averaged instead of summed over ranks put step 2 2.8e-3 away. Later steps
    # amplify fp32 noise (5e-3 at step 4 between thread counts) and are not compared.
    assert abs(a[0] - b[0]) <= 1e-5 * abs(a[0]), (a, b)
    assert abs(a[1] - b[1]) <= 1e-3 * abs(a[1]), (a, b)
    # Different world sizes on resume: the data and the loss do not depend on them.
    more = ["--epochs", "2", "--resume"]
    assert torchrun(1, *train_args(cifar10_dir, two, *more)).returncode == 0
    resumed_two = torchrun(2, *train_args(cifar10_dir, one, *more))
    assert resumed_two.returncode == 0, resumed_two.stderr[-3000:]
    a = [r["loss"] for r in read_metrics(one) if r["kind"] == "step"]
    b = [r["loss"] for r in read_metrics(two) if r["kind"] == "step"]
    assert len(a) == len(b) == 8 and all(map(math.isfinite, a + b))
    state = checkpoint.load(one / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 8


def test_torchrun_needs_an_out_dir_and_a_divisible_batch(cifar10_dir, tmp_path):
    """Errors of the command line, the same on every rank, are said once per node (each rank said
    them), and a warning about the node's files too (the data's md5); every rank still fails."""
    no_out = [a for a in train_args(cifar10_dir, tmp_path / "x") if a not in ("--out", str(tmp_path / "x"))]
    runs = [
        (torchrun(2, *no_out), "fastsigclr: error: torchrun runs need --out DIR"),
        (torchrun(3, *train_args(cifar10_dir, tmp_path / "y")), "not divisible by the 3 ranks"),
        (
            torchrun(2, *train_args(cifar10_dir, tmp_path / "z", "--batch-size", "63")),
            "fastsigclr: error: batch size 63 is not divisible by the 2 ranks; choose a --batch-size",
        ),
        (torchrun(2, *train_args(cifar10_dir, tmp_path / "w", "--bogus")), "error: unrecognized arguments"),
    ]
    for proc, said in runs:
        text = proc.stderr + proc.stdout
        assert proc.returncode != 0 and text.count(said) == 1, text[-3000:]
        assert "failed (exitcode: 2) local_rank: 0" in text, text[-3000:]  # rank 0 said it and failed
        assert "error: rank" not in text, text[-3000:]  # no rank waited out its turn to say it
    assert "usage:" not in runs[3][0].stderr  # one line, no usage block
    # The test data is a JPEG re-encoding of CIFAR-10: its md5 warning, said once.
    assert runs[2][0].stderr.count("data_batch_1, data_batch_2") == 1, runs[2][0].stderr[-3000:]


@pytest.mark.parametrize("loader", ["dali", "ffcv"])
def test_torchrun_shards_every_loader(loader, cifar10_dir, tmp_path):
    """Two ranks with the DALI and FFCV backends: each rank takes half of every global batch."""
    out = tmp_path / loader
    proc = torchrun(2, *train_args(cifar10_dir, out, "--loader", loader, "--limit-train", "128"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)  # 128 images / batch 64
    assert proc.stdout.count("done: 1 epoch,") == 1, proc.stdout  # rank 0 says it for the run


def test_torchrun_on_a_locked_run_directory_stops_every_rank(cifar10_dir, tmp_path):
    """Rank 0 alone takes the run directory's lock; its refusal reaches the other rank, which
    would otherwise wait for rank 0 forever."""
    out = tmp_path / "run"
    out.mkdir()
    fd = runlock.lock_dir(out)  # a training in progress
    try:
        proc = torchrun(2, *train_args(cifar10_dir, out))
    finally:
        os.close(fd)
    assert proc.returncode != 0
    # Rank 0's refusal, passed on to rank 1: said once.
    assert (proc.stderr + proc.stdout).count("is in use by another training") == 1, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]


def test_torchrun_stops_every_rank_on_rank_0s_failed_preparation(cifar10_dir, tmp_path):
    """Rank 0 alone writes the FFCV dataset; when it cannot, the other rank left the barrier on a
    broken connection and printed gloo's traceback ("Connection closed by peer"). Now every rank
    stops with rank 0's one line, said once."""
    (tmp_path / "file").write_text("not a folder")
    extra = ("--loader", "ffcv", "--ffcv-dir", str(tmp_path / "file" / "ffcv"))
    proc = torchrun(2, *train_args(cifar10_dir, tmp_path / "run", *extra))
    assert proc.returncode != 0
    said = proc.stderr + proc.stdout
    assert said.count("fastsigclr: error: cannot write the FFCV dataset") == 1, said[-3000:]
    assert "Connection closed by peer" not in said and "Connection reset" not in said, said[-3000:]


LEAVE = """
import atexit, sys, threading
from pathlib import Path
import fastsigclr.cluster
from fastsigclr.entry import _leave_distributed
marker = Path(sys.argv[1])
atexit.register(lambda: marker.write_text("exit handlers ran"))
# a thread that would take the GIL while the interpreter finalizes, as gloo's workers do
threading.Thread(target=lambda: threading.Event().wait(), daemon=True).start()
print("output flushed", end="")
_leave_distributed(0)  # not a rank: nothing happens
fastsigclr.cluster.joined = True
_leave_distributed(75)
raise SystemExit("not reached")
"""


def test_a_rank_ends_after_its_exit_handlers_without_finalization(tmp_path):
    """A finished rank was killed by SIGABRT as the interpreter finalized (a gloo worker, kept
    alive by DDP past destroy_process_group, releasing all_gather_object's tensors): ranks now end
    after their exit handlers with their own status, their output flushed."""
    marker = tmp_path / "marker"
    done = subprocess.run(
        [sys.executable, "-c", LEAVE, str(marker)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 75 and done.stdout == "output flushed", (done.returncode, done.stderr[-2000:])
    assert marker.read_text() == "exit handlers ran" and "not reached" not in done.stderr
