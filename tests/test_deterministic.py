"""Deterministic mode above the kernel: the loss API's ``deterministic`` and ``plans`` reach the
kernel (results that do not depend on the order the interpreter runs programs in, where the default
path's do), NT-Xent's kernel sums in a fixed order as it is, and ``fastsigclr train
--deterministic`` records the kernel's tile plans in config.json and launches a resumed run with
them even where this GPU would pick others. The kernel's own test of the mode is in
test_sigmoid_block.py."""

import dataclasses
import json
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from helpers import AS_ON_GPU, KERNEL_DEVICE, assert_close_rel, fp32_tol, reversed_programs, tf32_dt_scale
from run_fixture import fails_with, tiny_args

from fastsigclr import kernels
from fastsigclr.checkpoint import load
from fastsigclr.cli import main
from fastsigclr.config import FastSigCLRError, to_dict
from fastsigclr.determinism import deterministic_torch
from fastsigclr.kernels import Plan
from fastsigclr.losses import (
    SigLipLoss,
    SigmoidPairwiseLoss,
    nt_xent_loss,
    sigmoid_blocks,
    sigmoid_pairwise_loss,
)
from fastsigclr.losses import sigmoid as sigmoid_module
from fastsigclr.preempt import PREEMPTED_EXIT
from fastsigclr.runconfig import TrainConfig, read_config, saved_plans

# AS_ON_GPU: skipped where the kernels are compiled, and so in a record of the GPU's launches.
interpreter_only = pytest.mark.skipif(AS_ON_GPU, reason="reorders the interpreter's programs")
# Two plans a deterministic launch can take (the interpreter runs any): 32-row tiles in 3 column
# ranges, and 16-row tiles in 2. Their sums run in different orders.
PLAN_A = Plan(symmetric=False, block_m=32, block_n=32, programs=3, num_warps=4, num_stages=1)
PLAN_B = Plan(symmetric=False, block_m=16, block_n=16, programs=2, num_warps=4, num_stages=1)


def _loss_and_grads(z: torch.Tensor, **options) -> list[torch.Tensor]:
    """The loss and the gradients of z, the logit scale and the bias, through the loss API."""
    x = z.to(KERNEL_DEVICE, copy=True).requires_grad_()
    t = torch.tensor(10.0, device=KERNEL_DEVICE, requires_grad=True)
    b = torch.tensor(-10.0, device=KERNEL_DEVICE, requires_grad=True)
    loss = sigmoid_pairwise_loss(x, t, b, impl="triton", **options)
    loss.backward()
    return [loss.detach(), x.grad, t.grad, b.grad]


@interpreter_only
@pytest.mark.parametrize("plans", [None, {"self": PLAN_A}], ids=["picked", "pinned"])
def test_loss_api_deterministic_does_not_depend_on_program_order(monkeypatch, plans):
    """deterministic=True through sigmoid_pairwise_loss: bitwise the same loss and gradients with
    the programs run in reverse. The default path, run the same way, changes dz in its last bits
    (its symmetric tiles add into other tiles' rows atomically): the check sees the order."""
    z = torch.randn(130, 40, generator=torch.Generator().manual_seed(4))
    runs = {}
    for order in ("forward", "reverse"):
        if order == "reverse":
            reversed_programs(monkeypatch)
        pinned = None if plans is None else dict(plans)
        runs[order, True] = _loss_and_grads(z, deterministic=True, plans=pinned)
        runs[order, False] = _loss_and_grads(z)
    assert all(map(torch.equal, runs["forward", True], runs["reverse", True]))
    assert not all(map(torch.equal, runs["forward", False], runs["reverse", False]))


def test_loss_api_deterministic_repeats_bitwise_and_matches_float64():
    """deterministic=True through sigmoid_pairwise_loss where it runs (compiled on a GPU, else the
    interpreter): two calls give bitwise the same loss and gradients, and they match the float64
    torch path on the same fp32 rows (TF32 on a GPU: helpers.fp32_tol)."""
    z = torch.randn(74, 17, generator=torch.Generator().manual_seed(8))
    first, again = (_loss_and_grads(z, deterministic=True) for _ in range(2))
    assert all(map(torch.equal, first, again))
    x = z.double().requires_grad_()
    t = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    sigmoid_pairwise_loss(x, t, b, impl="torch").backward()
    want = [sigmoid_pairwise_loss(x.detach(), 10.0, -10.0, impl="torch"), x.grad, t.grad, b.grad]
    scales = (None, None, tf32_dt_scale(z, 10.0, -10.0, 2), None)  # dt cancels to 0.0059
    for name, a, e, scale in zip(("loss", "dz", "dt", "db"), first, want, scales, strict=True):
        assert_close_rel(a, e, fp32_tol(2e-6), name, scale)  # measured ≤ 5.9e-7 (dt), interpreter


@interpreter_only
def test_siglip_deterministic_does_not_depend_on_program_order(monkeypatch):
    """SigLIP's kernel block: with deterministic=True (its texts' gradient from a second launch,
    not atomics) bitwise the same in reverse program order, where the default path's texts'
    gradient changes (D = 130: past one feature tile the default adds it atomically in its one
    sweep); the plan it launched with is kept by the module for a run to record."""
    gen = torch.Generator().manual_seed(7)
    x, y = (F.normalize(torch.randn(130, 130, generator=gen), dim=1) for _ in range(2))

    def run(deterministic):
        module = SigLipLoss(impl="triton", deterministic=deterministic)
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        bias = torch.tensor(-10.0, requires_grad=True)
        loss = module(xg, yg, torch.tensor(10.0), bias)
        loss.backward()
        return [loss.detach(), xg.grad, yg.grad, bias.grad], module.plans

    forward = {det: run(det) for det in (True, False)}
    reversed_programs(monkeypatch)
    again = {det: run(det) for det in (True, False)}
    assert all(map(torch.equal, forward[True][0], again[True][0]))
    assert not all(map(torch.equal, forward[False][0], again[False][0]))
    assert set(forward[True][1]) == {"two_tower"} and forward[False][1] == {}


@interpreter_only
def test_pinned_plans_are_launched_and_picked_ones_recorded(monkeypatch):
    """A plan per kind of block: a "self" and a "cross" block (another rank's rows) launch with
    the plans given, in any program order bitwise the same; a kind without a plan gets the one
    kernels.sigmoid_plan picks, written into the dict. Another plan sums in another order."""
    gen = torch.Generator().manual_seed(5)
    own, other = (F.normalize(torch.randn(70, 24, generator=gen), dim=1) for _ in range(2))
    launched = []
    launch = kernels.sigmoid_block

    def spy(*args, **kw):
        launched.append((kw["pairs"], kw.get("plan"), kw["deterministic"]))
        return launch(*args, **kw)

    monkeypatch.setattr(kernels, "sigmoid_block", spy)
    one = torch.tensor(10.0), torch.tensor(-10.0)

    def blocks(rows):
        return [(True, rows), (False, other)]

    def loss(plans):
        return sigmoid_blocks(
            own, *one, n_views=2, impl="triton", blocks=blocks, deterministic=True, plans=plans
        )

    pinned = loss({"self": PLAN_A, "cross": PLAN_B})
    assert launched == [("self", PLAN_A, True), ("cross", PLAN_B, True)]
    with monkeypatch.context() as mp:
        reversed_programs(mp)
        again = loss({"self": PLAN_A, "cross": PLAN_B})
    assert all(map(torch.equal, pinned, again))
    swapped = loss({"self": PLAN_B, "cross": PLAN_A})
    assert not torch.equal(swapped[1], pinned[1])  # the plan decides the order of the sums
    monkeypatch.setattr(kernels, "sigmoid_plan", lambda rows, cols, **kw: PLAN_B)
    plans = {"self": PLAN_A}
    loss(plans)
    assert plans == {"self": PLAN_A, "cross": PLAN_B}


def test_plans_are_checked_and_need_the_flag():
    """Plans read from a file as their fields become Plans; a bad one, or plans without
    deterministic=True, is one ValueError naming it."""
    module = SigmoidPairwiseLoss(deterministic=True, plans={"self": dataclasses.asdict(PLAN_A)})
    assert module.plans == {"self": PLAN_A}
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="pass deterministic=True"):
        sigmoid_pairwise_loss(z, 10.0, -10.0, impl="torch", plans={"self": PLAN_A})
    with pytest.raises(ValueError, match="'both' is not a kind of block; one of self, cross, two_tower"):
        SigmoidPairwiseLoss(deterministic=True, plans={"both": dataclasses.asdict(PLAN_A)})
    with pytest.raises(ValueError, match="not a plan's fields"):
        SigmoidPairwiseLoss(deterministic=True, plans={"self": {**dataclasses.asdict(PLAN_A), "programs": 0}})


@interpreter_only
def test_nt_xent_kernel_sums_in_a_fixed_order(monkeypatch):
    """NT-Xent's kernel has no atomics and no autotuning (each program owns its rows of dZ, the
    transposed pass adds to them after): bitwise the same loss and gradient with the programs run
    in reverse, so --deterministic needs nothing of it."""
    z = torch.randn(130, 40, generator=torch.Generator().manual_seed(6))

    def run():
        x = z.clone().requires_grad_()
        loss = nt_xent_loss(x, 0.2, impl="triton")
        loss.backward()
        return loss.detach(), x.grad

    forward = run()
    reversed_programs(monkeypatch)
    assert all(map(torch.equal, forward, run()))


def test_deterministic_is_a_train_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--deterministic" in capsys.readouterr().out.replace("\n", " ")
    assert "deterministic" in TrainConfig.__dataclass_fields__ and not TrainConfig().deterministic


def test_torch_settings_hold_for_the_run_only(monkeypatch, capsys):
    """deterministic_torch: CUBLAS_WORKSPACE_CONFIG set (one line when CUDA started before it
    could be), torch's deterministic algorithms and cuDNN's flags on inside, restored after."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # a GPU test run started CUDA
    with deterministic_torch(True):
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert capsys.readouterr().err == "" and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    for _ in range(2):  # each run warns: the first one's value does not stay behind to hide it
        with deterministic_torch(True):
            pass
        line = capsys.readouterr().err.strip()
        assert line.count("\n") == 0 and "set CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment" in line
    with deterministic_torch(False):
        assert not torch.are_deterministic_algorithms_enabled()


def test_a_config_written_before_the_option_loads(tmp_path):
    """config.json files written before --deterministic (no such key, no kernel_plans) load: the
    run is not deterministic and has no plans."""
    saved = to_dict(TrainConfig(out="runs/old"))
    del saved["deterministic"]
    (tmp_path / "config.json").write_text(json.dumps({"config": saved, "world_size": 1}))
    assert read_config(tmp_path, "cannot read", "restore it").deterministic is False
    assert saved_plans(tmp_path) == {}


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu", marks=interpreter_only, id="interpreter"),
        pytest.param("cuda", marks=pytest.mark.gpu, id="cuda"),
    ],
)
def test_resumed_run_launches_with_the_recorded_plans(cifar10_dir, tmp_path, monkeypatch, capsys, device):
    """A --deterministic run records the plan its first step launched with in config.json.
    Preempted in its second epoch and resumed (--resume auto) where kernels.sigmoid_plan picks
    another plan (another GPU), every launch takes the recorded one, and the run ends bitwise as
    an uninterrupted run. torch's deterministic algorithms are on during the run and off after it; a
    damaged record is one line naming the fix. On the CPU the kernel runs in the interpreter with
    two made-up plans; on CUDA (bf16 autocast) the first plan is the GPU's own pick."""
    if device == "cpu":
        monkeypatch.setattr(sigmoid_module, "resolve_impl", lambda impl, z: "triton")
    launched, preempt_at = [], {"launch": 0}
    launch, pick = kernels.sigmoid_block, kernels.sigmoid_plan

    def spy(*args, **kw):
        launched.append(kw.get("plan"))
        assert torch.are_deterministic_algorithms_enabled()
        if len(launched) == preempt_at["launch"]:
            os.kill(os.getpid(), signal.SIGUSR1)  # checkpoint after this step, exit 75
        return launch(*args, **kw)

    monkeypatch.setattr(kernels, "sigmoid_block", spy)
    this_gpu = {"plan": PLAN_A if device == "cpu" else None}
    monkeypatch.setattr(
        kernels, "sigmoid_plan", lambda rows, cols, **kw: this_gpu["plan"] or pick(rows, cols, **kw)
    )
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    args = ("--device", device, "--deterministic", "--epochs", "2")
    assert main(tiny_args(cifar10_dir, whole, *args)) == 0
    launched.clear()
    preempt_at["launch"] = 3  # the first step of epoch 2 (two steps per epoch)
    with pytest.raises(SystemExit) as stopped:
        main(tiny_args(cifar10_dir, cut, *args))
    assert stopped.value.code == PREEMPTED_EXIT and not torch.are_deterministic_algorithms_enabled()
    recorded = json.loads((cut / "config.json").read_text())
    first = Plan(**recorded["kernel_plans"]["self"])
    assert set(recorded["kernel_plans"]) == {"self"} and set(launched) == {first}
    assert first == PLAN_A or device == "cuda"
    assert recorded["config"]["deterministic"] is True
    this_gpu["plan"] = PLAN_B if device == "cpu" else dataclasses.replace(first, programs=first.programs + 1)
    preempt_at["launch"] = 0
    launched.clear()
    assert main(tiny_args(cifar10_dir, cut, *args, "--resume", "auto")) == 0  # a requeued job
    assert "in epoch 2 after batch 1" in capsys.readouterr().err
    assert launched and set(launched) == {first}
    assert saved_plans(cut) == recorded["kernel_plans"]
    a, b = (load(run / "checkpoints" / "last.pt")["model"] for run in (whole, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((cut / "config.json").read_text())
    (cut / "config.json").write_text(json.dumps({**config, "kernel_plans": {"self": {"block_m": 32}}}))
    error = fails_with(tiny_args(cifar10_dir, cut, *args, "--resume", "--epochs", "3"), capsys)
    assert "kernel_plans of its config.json are unreadable" in error and "remove that entry" in error


@pytest.mark.parametrize(
    "fields,problem",
    [
        (dict(symmetric=True), "only non-deterministic 'self' launches take"),
        (dict(block_m=48, block_n=48), "48×48 tiles (each side a power of two"),
        (dict(num_warps=3), "3 warps (a power of two"),
    ],
)
def test_a_hand_edited_plan_is_refused_before_it_launches(tmp_path, fields, problem):
    """Well-typed plans the kernel cannot launch as they say: a symmetric plan made deterministic
    self-blocks' row gradients 46-60% wrong without an error, 48-row tiles ended in a Triton
    traceback. Recorded ones stop the resume with one line, given ones (plan=) with a ValueError."""
    plan = dataclasses.replace(PLAN_A, **fields)
    config = {"config": to_dict(TrainConfig()), "kernel_plans": {"self": dataclasses.asdict(plan)}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FastSigCLRError, match="kernel_plans of its config.json are unreadable") as err:
        saved_plans(tmp_path)
    assert problem in str(err.value) and "\n" not in str(err.value)
    x = F.normalize(torch.randn(45, 8, generator=torch.Generator().manual_seed(0)), dim=1).to(KERNEL_DEVICE)
    one = [torch.tensor(v, device=KERNEL_DEVICE) for v in (10.0, -10.0)]
    with pytest.raises(ValueError, match=problem.split(" (")[0]):
        kernels.sigmoid_block(
            x, x, *one, n_per_view=15, inv_m=1 / 45, pairs="self", deterministic=True, plan=plan
        )
