"""The CPU path avoids oneDNN's channels_last convolution backward, which kills the process on
AVX-512 CPUs (docs/upstream-onednn-crash.md); CUDA keeps channels_last.

The crash is a double free, not an exception, so the shape that triggers it runs in a subprocess:
a crash is a failed test, not a dead test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastsigclr.data import DATASETS
from fastsigclr.models.resnet import memory_format
from fastsigclr.recipe import TrainConfig, build_model
from tests.conftest import ROOT

# The reduced case: 16 channels_last inputs of 8 channels at 64² into a 1×1 stride-2 convolution,
# forward and backward three times. In ResNet-18 width 8 on 64² views that convolution is the
# shortcut of the first block of stage 2; 16 views are a batch of 8 with two views each.
SCRIPT = textwrap.dedent(
    """
    import torch
    from fastsigclr.data import DATASETS
    from fastsigclr.recipe import TrainConfig, build_model

    cfg = TrainConfig(dataset="cifar10", width=8, arch="resnet18", device="cpu").resolved()
    model, criterion, _ = build_model(cfg, DATASETS["cifar10"], torch.device("cpu"))
    shortcut = model.backbone.stages[1][0].shortcut[0]
    seen = []
    shortcut.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    assert (shortcut.in_channels, shortcut.kernel_size, shortcut.stride) == (8, (1, 1), (2, 2))
    views = torch.randn(16, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(8)
    for _ in range(3):
        model.zero_grad()
        h, z = model(views)
        criterion(z, None).backward()
    assert seen == [(16, 8, 64, 64)] * 3, seen
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    print("survived")
    """
)


# oneDNN picks its convolution kernels by the CPU's ISA (the crash was on an AVX-512 path): each
# cap runs the paths of a lesser CPU; a cap above this CPU's runs its own.
@pytest.mark.parametrize("isa", [None, "SSE41", "AVX2", "AVX512_CORE", "AVX512_CORE_AMX"])
def test_trainer_model_survives_the_onednn_crash_shape(isa):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_cpu_model_and_views_are_contiguous_cuda_keeps_channels_last():
    assert memory_format(torch.device("cpu")) is torch.contiguous_format
    assert memory_format(torch.device("cuda")) is torch.channels_last
    cfg = TrainConfig(dataset="cifar10", width=8, device="cpu").resolved()
    model, _, _ = build_model(cfg, DATASETS["cifar10"], torch.device("cpu"))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous() for c in convs)
    seen = []
    convs[0].register_forward_hook(lambda m, i, o: seen.append(i[0].is_contiguous()))
    model(torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert seen == [True]  # the loaders' channels_last views enter the first convolution contiguous
