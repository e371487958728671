"""DCL (decoupled contrastive loss): the chunked torch path against a float64 reference written
from the formula one anchor at a time, value and gradient at odd sizes; its reference, errors,
and a training run with --method dcl."""

import json

import pytest
import torch
from helpers import assert_close_rel

from fastsigclr.cli import main
from fastsigclr.losses.dcl import DCLLoss, dcl_chunked, dcl_loss, dcl_loss_reference
from fastsigclr.runlog import read_metrics


def dcl_formula(z: torch.Tensor, tau: float, n_views: int, normalize: bool = True) -> torch.Tensor:
    """ℓ_i = −mean_{p∈P(i)} s_ip/τ + log Σ_{k∉P(i)∪{i}} e^{s_ik/τ}, one anchor at a time (float64,
    independent of the package)."""
    m = len(z)
    zh = z / z.norm(dim=1, keepdim=True) if normalize else z
    s = zh @ zh.T
    image = torch.arange(m) % (m // n_views)
    losses = []
    for i in range(m):
        pos = (image == image[i]) & (torch.arange(m) != i)
        neg = image != image[i]
        losses.append(-(s[i, pos] / tau).mean() + torch.log(torch.exp(s[i, neg] / tau).sum()))
    return torch.stack(losses).mean()


def value_and_grad(fn, z):
    x = z.detach().clone().requires_grad_()
    loss = fn(x)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("m,d,n_views", [(6, 3, 2), (74, 17, 2), (75, 1, 3), (129, 130, 3), (130, 64, 2)])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_dcl_matches_the_formula(m, d, n_views, tau):
    gen = torch.Generator().manual_seed(m + d)
    z = torch.randn(m, d, dtype=torch.float64, generator=gen)
    want = value_and_grad(lambda x: dcl_formula(x, tau, n_views), z)
    got = value_and_grad(lambda x: dcl_loss(x, tau, n_views=n_views), z)
    ref = value_and_grad(lambda x: dcl_loss_reference(x, tau, n_views=n_views), z)
    # dL/dz = (I − ẑẑᵀ)(dL/dẑ)/‖z‖ cancels at small D (entirely at D = 1, where it is 0): errors
    # are measured against the size of (dL/dẑ)/‖z‖, as for TCL. Measured: loss 3.8e-16, dz 8.3e-16.
    norms = z.norm(dim=1, keepdim=True)
    dzhat = value_and_grad(lambda x: dcl_formula(x, tau, n_views, normalize=False), z / norms)[1]
    for name, pair in (("chunked", got), ("reference", ref)):
        assert_close_rel(pair[0], want[0], 1e-13, f"{name} loss")
        assert_close_rel(pair[1], want[1], 1e-12, f"{name} dz", scale=(dzhat / norms).abs().max().item())


@pytest.mark.parametrize("chunk_rows", [1, 7, 200])
def test_dcl_chunks_in_fp32_match_float64(chunk_rows):
    """The chunked fp32 path, chunks of 1, 7 (the last one short) and all rows, against float64."""
    gen = torch.Generator().manual_seed(5)
    z = torch.nn.functional.normalize(torch.randn(45, 19, dtype=torch.float64, generator=gen), dim=1)
    want_loss, want_dz = dcl_chunked(z, temperature=0.2, n_views=3)
    loss, dz = dcl_chunked(z.float(), temperature=0.2, n_views=3, chunk_rows=chunk_rows)
    # fp32 sums over 45 rows: measured ≤ 2.7e-7 relative (chunks of 1 row; 1.5e-7 with 7).
    assert_close_rel(loss, want_loss, 5e-6, "loss")
    assert_close_rel(dz, want_dz, 5e-6, "dz")


def test_dcl_is_not_nt_xent():
    """The decoupling matters: with the positive in the denominator the value differs."""
    from fastsigclr.losses import nt_xent_loss

    z = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert not torch.isclose(dcl_loss(z, 0.2), nt_xent_loss(z, 0.2, impl="torch"))


def test_dcl_errors():
    with pytest.raises(ValueError, match="at least 2 images"):
        dcl_loss(torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DCLLoss(0.0)
    with pytest.raises(ValueError, match="self-supervised"):
        DCLLoss()(torch.randn(4, 3), torch.arange(2))


def test_train_with_dcl(cifar10_dir, tmp_path):
    out = tmp_path / "dcl"
    args = (
        f"train --dataset cifar10 --data-dir {cifar10_dir} --device cpu --width 8 --proj-dims 64,32 "
        f"--limit-train 64 --limit-test 50 --batch-size 32 --epochs 1 --log-every 1 --knn-every 0 "
        f"--no-progress --no-tensorboard --method dcl --temperature 0.3 --out {out}"
    ).split()
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["method"] == "dcl" and config["temperature"] == 0.3
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert all(r["temperature"] == 0.3 for r in steps)
