"""Backbones, projector, optimiser groups, LARS and the learning-rate schedule."""

import itertools
import math

import pytest
import torch

from fastsigclr.models import SSLModel, projector
from fastsigclr.models.resnet import ResNet
from fastsigclr.optim import LARS, build_optimizer, param_groups, warmup_cosine


@pytest.mark.parametrize(
    "arch,width,dim", [("resnet18", 16, 128), ("resnet50", 8, 256), ("resnet18", 64, 512)]
)
def test_backbone_shapes_and_cifar_stem(arch, width, dim):
    net = ResNet(arch, width).to(memory_format=torch.channels_last)
    assert net.out_dim == dim
    first = net.stem[0]
    assert first.kernel_size == (3, 3) and first.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    assert net(x).shape == (2, dim)


def test_resnet18_width64_has_the_standard_parameter_count():
    # torchvision's resnet18 has 11,689,512 parameters; minus its 7×7 stem conv (9,408) and fc
    # (513,000), plus the 3×3 stem conv (1,728): 11,168,832.
    assert sum(p.numel() for p in ResNet("resnet18", 64).parameters()) == 11_168_832


def test_zero_init_residual_makes_blocks_start_as_identity():
    net = ResNet("resnet18", 8, zero_init_residual=True).eval()
    block = net.stages[0][0]
    x = torch.relu(torch.randn(2, 8, 16, 16))
    assert torch.allclose(block(x), x)


def test_projector_layout():
    head = projector(512, (2048, 2048, 64))
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 2048), (2048, 2048), (2048, 64)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head) == 2
    h, z = SSLModel("resnet18", 8, (32, 16), False)(torch.randn(4, 3, 32, 32))
    assert h.shape == (4, 64) and z.shape == (4, 16)
    with pytest.raises(ValueError, match="positive sizes"):
        projector(8, ())


def test_param_groups_exclude_bn_and_biases():
    model = SSLModel("resnet18", 8, (32, 16), False)
    bias = torch.nn.Parameter(torch.tensor(-10.0))
    holder = torch.nn.Module()
    holder.bias = bias
    decay, plain = param_groups([model, holder], 1e-4)
    assert (
        decay["weight_decay"] == 1e-4 and decay["adapt"] and plain["weight_decay"] == 0 and not plain["adapt"]
    )
    assert all(p.ndim > 1 for p in decay["params"]) and any(p is bias for p in plain["params"])
    bn = [m.weight for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert all(any(p is w for p in plain["params"]) for w in bn)
    n_all = sum(1 for p in [*model.parameters(), bias])
    assert len(decay["params"]) + len(plain["params"]) == n_all


def test_lars_trust_ratio_and_exclusions():
    w = torch.nn.Parameter(torch.full((4, 4), 2.0))
    b = torch.nn.Parameter(torch.ones(4))
    opt = LARS(
        [
            {"params": [w], "weight_decay": 0.1, "adapt": True},
            {"params": [b], "weight_decay": 0.0, "adapt": False},
        ],
        lr=1.0,
        momentum=0.0,
        eta=0.02,
    )
    w.grad = torch.full((4, 4), 0.5)
    b.grad = torch.full((4,), 0.5)
    opt.step()
    p_norm, g_norm = 8.0, 2.0  # ‖w‖ = 2·4, ‖g‖ = 0.5·4
    trust = 0.02 * p_norm / (g_norm + 0.1 * p_norm)
    assert torch.allclose(w, torch.full((4, 4), 2.0 - trust * (0.5 + 0.1 * 2.0)))
    assert torch.allclose(b, torch.full((4,), 0.5))  # plain SGD step, no decay, no adaptation
    assert isinstance(
        build_optimizer("sgd", param_groups([torch.nn.Linear(2, 2)], 0.1), 0.1, 0.9), torch.optim.SGD
    )
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("adamw", [], 0.1, 0.9)


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    values = [warmup_cosine(s, 100, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert warmup_cosine(3, 50, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 50)))
