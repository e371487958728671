"""The losses as a library calls them: what autograd cannot give (a second derivative) is refused,
not silently wrong; a fixed temperature is refused as a learnable one; SupCon and TCL stay finite
at small τ and take any label ids; fp64 inputs keep fp64 scalars; SigLipLoss takes open_clip's
constructor; the kernel's own entry point checks its arguments."""

import numpy as np
import pytest
import torch
from helpers import KERNEL_DEVICE, fp32_tol

from fastsigclr import kernels
from fastsigclr.bench.open_clip_loss import open_clip_siglip
from fastsigclr.losses import (
    SigLipLoss,
    dcl,
    nt_xent_loss,
    siglip_loss,
    sigmoid_pairwise_loss,
    sigmoid_pairwise_loss_reference,
    supcon_loss,
    tcl_loss,
    tcl_loss_reference,
)
from fastsigclr.losses.ntxent import NTXentLoss

ALL_FUSED = {
    "sigclr": lambda z, impl: sigmoid_pairwise_loss(z, 10.0, -10.0, impl=impl),
    "siglip": lambda z, impl: siglip_loss(*z.chunk(2), 10.0, -10.0, impl=impl),
    "ntxent": lambda z, impl: nt_xent_loss(z, 0.2, impl=impl),
    "tcl": lambda z, impl: tcl_loss(z),
    "dcl": lambda z, impl: dcl.dcl_loss(z),
}


@pytest.mark.parametrize(
    ("name", "impl"),
    [(name, "torch") for name in ALL_FUSED] + [(name, "triton") for name in ("sigclr", "siglip", "ntxent")],
)
def test_a_second_derivative_is_refused(name, impl):
    """A gradient penalty through a fused loss got a gradient 86-101% off its float64 value, with
    no word: their backward returns gradients formed in the forward pass, which carry no graph.
    (TCL and DCL have the torch path only.)"""
    dtype = torch.float32 if impl == "triton" else torch.float64
    z = torch.randn(10, 8, dtype=dtype, device=KERNEL_DEVICE, requires_grad=True)
    if name == "siglip":
        z = torch.nn.functional.normalize(z, dim=1)
    loss = ALL_FUSED[name](z, impl)
    (first,) = torch.autograd.grad(loss, z, retain_graph=True)  # one derivative: as before
    assert first.isfinite().all()
    with pytest.raises(RuntimeError, match="no second derivative.*create_graph=True.*_reference"):
        torch.autograd.grad(loss, z, create_graph=True)


def _materialised_tcl(z, labels, tau, k1, k2):
    """TCL by its definition over unnormalised rows, each row's terms summed by logsumexp."""
    s = z @ z.T
    m = len(z)
    eye = torch.eye(m, dtype=torch.bool)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    neg = labels[:, None] != labels[None, :]
    inf = torch.tensor(float("-inf"), dtype=z.dtype)
    terms = [torch.where(pos, s / tau, inf), torch.where(neg, s / tau + np.log(k2), inf)]
    if k1:
        terms.append(torch.where(pos, -s + np.log(k1), inf))
    log_denom = torch.logsumexp(torch.cat(terms, 1), 1)
    n_pos = pos.sum(1)
    row = -(s * pos).sum(1) / tau / n_pos.clamp_min(1) + log_denom
    return row[n_pos > 0].mean()


@pytest.mark.parametrize("tau", [0.005, 0.002])
def test_supcon_and_tcl_are_finite_at_small_temperatures(tau):
    """A constant shift of 1/τ took log 0 = −inf (NaN gradients) at τ ≤ 0.007 for random fp32
    rows, a model at initialisation; each row now shifts by its own largest exponent."""
    torch.manual_seed(0)
    z = torch.randn(24, 16, requires_grad=True)
    z64 = z.detach().double().requires_grad_()
    labels = torch.arange(24) % 5
    for loss_fn, ref in (
        (lambda x: supcon_loss(x, labels, tau), lambda x: tcl_loss_reference(x, labels, tau, 0.0, 1.0)),
        (lambda x: tcl_loss(x, labels, tau), lambda x: tcl_loss_reference(x, labels, tau)),
    ):
        got = loss_fn(z)
        (grad,) = torch.autograd.grad(got, z)
        want = ref(z64)
        (want_grad,) = torch.autograd.grad(want, z64)
        assert torch.isfinite(got) and torch.isfinite(want), (got, want)
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=0)
        torch.testing.assert_close(
            grad.double(), want_grad, rtol=1e-3, atol=1e-3 * want_grad.abs().max().item()
        )


def test_tcl_without_negatives_shifts_by_its_positives():
    """k2 = 0: a negative far closer than the positives set the shift, and at τ = 0.005 every
    positive term underflowed in fp32 (−inf); the negatives weigh nothing, so they set nothing."""
    e = torch.eye(4, dtype=torch.float64)
    v = 0.2 * e[0] + 0.96**0.5 * e[1]  # s = 0.2 with its positive
    w = 0.9 * e[0] + 0.19**0.5 * e[2]  # s = 0.9 with a negative
    z64 = torch.stack([e[0], v, w, 0.9 * w + 0.1 * e[3]])
    labels = torch.tensor([0, 0, 1, 1])
    for k1 in (0.0, 5000.0):
        got = tcl_loss(z64.float(), labels, 0.005, k1, 0.0)
        want = tcl_loss_reference(z64, labels, 0.005, k1, 0.0)
        assert torch.isfinite(got), k1
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_tcl_of_unnormalised_rows_does_not_overflow():
    """normalize=False with similarities past 1/τ·700: the fixed shift overflowed to inf."""
    torch.manual_seed(1)
    z = 6 * torch.randn(18, 8, dtype=torch.float64)
    labels = torch.arange(18) % 4
    got = tcl_loss(z, labels, 0.05, normalize=False)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, _materialised_tcl(z, labels, 0.05, 5000.0, 1.0), rtol=1e-10, atol=0)


def test_supcon_takes_any_label_ids():
    """−1 (embed's label of an image without a class) gave a bincount error, 10¹² an 8 TB
    allocation: the loss depends only on which labels are equal."""
    torch.manual_seed(2)
    z = torch.randn(12, 8, dtype=torch.float64)
    plain = torch.tensor([0, 1, 2, 0, 1, 2])
    expected = supcon_loss(z, plain)
    for ids in ([-1, 7, 10**12, -1, 7, 10**12], [5, -3, 2, 5, -3, 2]):
        assert supcon_loss(z, torch.tensor(ids)) == expected


def test_a_learnable_temperature_is_refused_not_ignored():
    """τ as a tensor that requires grad was turned into a float: it never got a gradient."""
    z = torch.randn(8, 4)
    tau = torch.tensor(0.2, requires_grad=True)
    for call in (
        lambda: nt_xent_loss(z, tau),
        lambda: supcon_loss(z, torch.arange(4), tau),
        lambda: tcl_loss(z, None, tau),
        lambda: dcl.dcl_loss(z, tau),
        lambda: NTXentLoss(tau),
    ):
        with pytest.raises(ValueError, match="fixed hyper-parameter.*temperature.detach"):
            call()
    expected = nt_xent_loss(z, 0.2)
    for same in (tau.detach(), np.float32(0.2), np.float64(0.2), torch.tensor([0.2])):
        torch.testing.assert_close(nt_xent_loss(z, same), expected)
    for bad, error in ((True, TypeError), ("0.2", TypeError), (0.0, ValueError), (float("inf"), ValueError)):
        with pytest.raises(error, match="temperature"):
            nt_xent_loss(z, bad)


def test_scalars_as_numpy_numbers_and_bools():
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    expected = sigmoid_pairwise_loss(z, 10.0, -10.0)
    torch.testing.assert_close(sigmoid_pairwise_loss(z, np.float32(10.0), np.float64(-10.0)), expected)
    with pytest.raises(TypeError, match="logit_scale must be a float or a 0-d tensor, got bool"):
        sigmoid_pairwise_loss(z, True, -10.0)


def test_float64_inputs_keep_float64_python_scalars():
    """A Python-float scale became an fp32 tensor: fp64 inputs then erred 1e-8 against fp64."""
    torch.manual_seed(3)
    z = torch.nn.functional.normalize(torch.randn(14, 6, dtype=torch.float64), dim=1)
    t, b = 10.123456789, -9.87654321
    got = sigmoid_pairwise_loss(z, t, b)
    assert got.dtype == torch.float64
    want = sigmoid_pairwise_loss_reference(z, torch.tensor(t, dtype=torch.float64), b)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    x, y = z.chunk(2)
    t64 = torch.tensor(t, dtype=torch.float64)
    assert abs(float(siglip_loss(x, y, t, b)) - float(siglip_loss(x, y, t64, b))) < 1e-13


def test_siglip_loss_takes_open_clips_constructor_and_a_missing_bias():
    """open_clip's create_loss builds SigLipLoss(rank=..., world_size=..., dist_impl=...); its
    cache_labels comes first; its get_logits leaves the bias out when it is None."""
    torch.manual_seed(4)
    x, y = (torch.nn.functional.normalize(torch.randn(9, 5, dtype=torch.float64), dim=1) for _ in range(2))
    t = torch.tensor(7.0, dtype=torch.float64)
    theirs = open_clip_siglip()(True, 0, 1, "bidir")
    for ours in (SigLipLoss(True, 0, 1, "bidir"), SigLipLoss(rank=0, world_size=1, dist_impl="gather")):
        for bias in (None, torch.tensor(-3.0, dtype=torch.float64)):
            torch.testing.assert_close(ours(x, y, t, bias), theirs(x, y, t, bias), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="dist_impl must be one of bidir, shift, reduce, gather"):
        SigLipLoss(dist_impl="ring")


def test_plans_must_be_a_dict_the_loss_fills():
    z = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    with pytest.raises(ValueError, match="plans must be a dict .* got list; pass {} to record them"):
        sigmoid_pairwise_loss(z, 10.0, -10.0, deterministic=True, plans=[])


def test_the_kernels_entry_point_checks_its_arguments():
    """fastsigclr.kernels.sigmoid_loss took rows not divisible by n_views (positives misplaced)
    and int64 rows silently, and failed deep inside on a Python float scale or a 1-D tensor."""
    z = torch.nn.functional.normalize(torch.randn(9, 8, device=KERNEL_DEVICE), dim=1)
    t, b = (torch.tensor(v, device=KERNEL_DEVICE) for v in (10.0, -10.0))
    cases = [
        ((z, t, b, 2), "n_views must be an integer ≥ 2 that divides zhat's 9 rows"),
        ((z[:8].long(), t, b, 2), "zhat must be a 2-D float32, float16 or bfloat16 tensor"),
        ((z[0], t, b, 2), "zhat must be a 2-D"),
        ((z[:8], 10.0, b, 2), "logit_scale must be a one-element float tensor"),
        (
            (z[:8], t, torch.zeros(2, device=KERNEL_DEVICE), 2),
            "logit_bias must be a one-element float tensor",
        ),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            kernels.sigmoid_loss(*args)
    good = kernels.sigmoid_loss(z[:8], t, b, 2)
    expected = sigmoid_pairwise_loss_reference(z[:8].double().cpu(), 10.0, -10.0)
    torch.testing.assert_close(good.double().cpu(), expected, rtol=fp32_tol(1e-5), atol=0)
