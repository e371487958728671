"""The losses' torch path with 16-bit inputs and under CPU autocast, zero rows, and the dtypes the
Triton kernels refuse, each against a float64 reference computed on the same rounded input."""

import pytest
import torch
import torch.nn.functional as F
from helpers import KERNEL_DEVICE, assert_close_rel

from fastsigclr.losses import nt_xent_loss, sigmoid_pairwise_loss, tcl_loss

# Worst errors measured over the cases below, relative to the largest reference value: bf16 5.5e-3
# (dz; loss 2.3e-4), fp16 7.4e-4 (dz), fp32 under autocast 1e-6. bf16's tolerance is four bf16
# units (2⁻⁸ each), ~3x the measurement; fp16's is the kernel tests' 4e-3, ~5x.
TOL = {torch.bfloat16: 1.5e-2, torch.float16: 4e-3, torch.float32: 5e-6}


def reference(zhat: torch.Tensor, t, b, n_views: int = 2) -> torch.Tensor:
    """float64 sigmoid loss of already-normalised rows: explicit ±1 labels and logsigmoid."""
    m = zhat.shape[0]
    image = torch.arange(m) % (m // n_views)
    y = (image[:, None] == image[None, :]).double() * 2 - 1
    off_diagonal = ~torch.eye(m, dtype=torch.bool)
    return -F.logsigmoid(y * (t * zhat @ zhat.T + b))[off_diagonal].sum() / m


def loss_and_grads(fn, z: torch.Tensor, dtype: torch.dtype, autocast: torch.dtype | None, **kw):
    """(loss, dL/dz, dL/dt, dL/db) with learnable t = 3, b = −1.5 (fp32, or fp64 for the reference)."""
    scalar = torch.float64 if dtype == torch.float64 else torch.float32
    x = z.detach().to(z.device, dtype).clone().requires_grad_()
    t = torch.tensor(3.0, dtype=scalar, device=z.device, requires_grad=True)
    b = torch.tensor(-1.5, dtype=scalar, device=z.device, requires_grad=True)
    with torch.autocast(z.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = fn(x, t, b, **kw)
    loss.backward()
    return loss.detach(), x.grad, t.grad, b.grad


@pytest.mark.parametrize("m,d", [(6, 3), (74, 17), (258, 130)])
@pytest.mark.parametrize(
    "dtype,autocast",
    [
        (torch.bfloat16, None),
        (torch.float16, None),
        (torch.bfloat16, torch.bfloat16),  # the trainer's --precision bf16: bf16 z under autocast
        (torch.float32, torch.bfloat16),
        (torch.float16, torch.float16),
    ],
    ids=["bf16", "fp16", "bf16-autocast", "fp32-autocast-bf16", "fp16-autocast"],
)
def test_sigmoid_torch_path_16_bit_and_autocast(m, d, dtype, autocast):
    """Under CPU autocast the loss used to fail (`Expected out tensor to have dtype BFloat16`)."""
    z = torch.randn(m, d, generator=torch.Generator().manual_seed(m + d), dtype=torch.float64)
    z_in = z.to(dtype).double()  # the oracle sees exactly the rounded input
    expected = loss_and_grads(
        lambda x, t, b: reference(x / x.norm(dim=1, keepdim=True), t, b), z_in, torch.float64, None
    )
    actual = loss_and_grads(sigmoid_pairwise_loss, z_in, dtype, autocast, impl="torch")
    assert actual[0].dtype == torch.float32 and actual[1].dtype == dtype
    for name, a, e in zip(("loss", "dz", "dt", "db"), actual, expected, strict=True):
        assert_close_rel(a, e, TOL[dtype], f"{dtype} autocast={autocast} {name}")


def test_other_losses_under_autocast_compute_in_fp32():
    """NT-Xent and TCL ran under autocast before, but with bf16 matmuls inside: now fp32."""
    z = torch.randn(40, 16, generator=torch.Generator().manual_seed(3))
    for fn in (lambda x: nt_xent_loss(x, 0.2, impl="torch"), lambda x: tcl_loss(x, torch.arange(20) % 4)):
        want = fn(z.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fn(z)
        assert_close_rel(got, want, 5e-6, "loss under autocast")


def zero_row_case(dtype: torch.dtype) -> torch.Tensor:
    z = torch.randn(8, 17, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z[3] = 0
    return z.to(dtype).double()


SIGMOID = lambda x, t, b, **kw: sigmoid_pairwise_loss(x, 10.0, -10.0, **kw)  # noqa: E731
NT_XENT = lambda x, t, b, **kw: nt_xent_loss(x, 0.2, **kw)  # noqa: E731
TCL = lambda x, t, b, **kw: tcl_loss(x, None, 0.1, 0.0, 1.0)  # noqa: E731  (k1 = 0: SupCon by views)


def zero_row_reference(name: str, zhat: torch.Tensor) -> torch.Tensor:
    if name == "sigmoid":
        return reference(zhat, 10.0, -10.0)
    logits = (zhat @ zhat.T / (0.2 if name == "nt_xent" else 0.1)).fill_diagonal_(float("-inf"))
    return F.cross_entropy(logits, torch.arange(8).roll(4))  # two views: the other view is the target


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
@pytest.mark.parametrize(
    "name,fn,impl",
    [
        ("sigmoid", SIGMOID, "torch"),
        ("sigmoid", SIGMOID, "triton"),
        ("nt_xent", NT_XENT, "torch"),
        ("nt_xent", NT_XENT, "triton"),
        ("tcl", TCL, None),
    ],
)
def test_zero_row_gets_a_bounded_gradient(name, fn, impl, dtype):
    """A zero row is divided by max(‖z‖, 1e-4), as F.normalize(eps=1e-4): its gradient is
    (∂L/∂ẑ)/1e-4, finite in every dtype, where eps = 1e-12 gave 1.8e12 (inf in fp16)."""
    z = zero_row_case(dtype)
    x = z.clone().requires_grad_()
    zhat = F.normalize(x, dim=1, eps=1e-4)
    zhat.retain_grad()
    zero_row_reference(name, zhat).backward()
    bound = zhat.grad[3].abs().max().item() / 1e-4
    kw = {"impl": impl} if impl else {}
    dev = KERNEL_DEVICE if impl == "triton" else torch.device("cpu")
    got = loss_and_grads(fn, z.to(dev), dtype, None, **kw)[1].double().cpu()
    assert torch.isfinite(got).all()
    assert got[3].abs().max().item() <= bound * (1 + TOL[dtype])
    assert_close_rel(got, x.grad, TOL[dtype], f"{name} {impl} {dtype} dz with a zero row")


@pytest.mark.parametrize("fn", [SIGMOID, NT_XENT], ids=["sigmoid", "nt_xent"])
def test_triton_refuses_float64_naming_the_supported_dtypes(fn):
    z = torch.randn(8, 4, dtype=torch.float64, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match=r"impl='triton' supports float32, float16 and bfloat16 .*float64"):
        fn(z, None, None, impl="triton")
    assert torch.isfinite(fn(z, None, None, impl="auto"))  # auto picks the torch path for float64


def test_fp8_products_cost_the_gradient_a_digit():
    """tools/fp8_products.py, whose figures docs/design.md gives for fp8 products: bf16 operands err
    about 10⁻³ of ∂L/∂x, e4m3 ones (per row, the positives apart) over ten times more once the
    negatives dominate the sum (t = 30)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "fp8_products.py"
    spec = importlib.util.spec_from_file_location("fp8_products", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    found = tool.errors(512, 96, 30.0, -10.0)
    assert 2e-4 < found["bf16"] < 4e-3, found
    assert found["e4m3, per row, positives apart"] > 10 * found["bf16"], found
