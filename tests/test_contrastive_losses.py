"""NT-Xent, SupCon and TCL: the chunked torch path and the Triton NT-Xent kernel against float64
references at odd sizes, value and gradient."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from helpers import KERNEL_DEVICE, assert_close_rel, gpu_cases, interpreter_tiles

from fastsigclr.bench.memory import TensorAllocations
from fastsigclr.kernels import nt_xent_triton
from fastsigclr.losses import common as loss_common
from fastsigclr.losses import nt_xent_loss, supcon_loss, tcl_loss


def tcl_reference(
    z: torch.Tensor, labels: torch.Tensor, tau: float, k1: float, k2: float, normalize: bool = True
) -> torch.Tensor:
    """float64, written from the formula one anchor at a time (independent of the package)."""
    zh = z / z.norm(dim=1, keepdim=True) if normalize else z
    s = zh @ zh.T
    losses = []
    for i in range(len(z)):
        others = torch.arange(len(z)) != i
        pos = others & (labels == labels[i])
        neg = labels != labels[i]
        if not pos.any():
            continue
        d = (
            torch.exp(s[i, pos] / tau).sum()
            + k1 * torch.exp(-s[i, pos]).sum()
            + k2 * torch.exp(s[i, neg] / tau).sum()
        )
        losses.append(-torch.log(torch.exp(s[i, pos] / tau) / d).mean())
    return torch.stack(losses).mean()


def value_and_grad(fn, z, **kw):
    x = z.detach().clone().requires_grad_()
    loss = fn(x, **kw)
    loss.backward()
    return loss.detach(), x.grad


CASES = [(6, 3, 2), (74, 17, 2), (75, 1, 3), (129, 130, 3), (130, 64, 2)]


@pytest.mark.parametrize("m,d,n_views", CASES)
@pytest.mark.parametrize("supervised", [False, True])
@pytest.mark.parametrize("k1,k2,tau", [(5000.0, 1.0, 0.1), (0.0, 1.0, 0.2), (3.0, 0.5, 0.5)])
def test_tcl_matches_reference(m, d, n_views, supervised, k1, k2, tau):
    gen = torch.Generator().manual_seed(m + d)
    z = torch.randn(m, d, dtype=torch.float64, generator=gen)
    # Supervised: 5 classes drawn per row, so some anchors may have no positive (they are skipped).
    labels = torch.randint(0, 5, (m,), generator=gen) if supervised else None
    ref_labels = labels if supervised else torch.arange(m) % (m // n_views)
    want = value_and_grad(lambda x: tcl_reference(x, ref_labels, tau, k1, k2), z)
    got = value_and_grad(lambda x: tcl_loss(x, labels, tau, k1, k2, n_views=n_views), z)
    # Measured over all cases: loss 2e-16, dz 1.3e-15 (fp64 throughout).
    assert_close_rel(got[0], want[0], 1e-13, "loss")
    # dL/dz = (I − ẑẑᵀ)(dL/dẑ)/‖z‖ cancels at small D (entirely at D = 1, where it is 0): errors
    # are measured against the size of (dL/dẑ)/‖z‖.
    norms = z.norm(dim=1, keepdim=True)
    dzhat = value_and_grad(lambda x: tcl_reference(x, ref_labels, tau, k1, k2, normalize=False), z / norms)[1]
    assert_close_rel(got[1], want[1], 1e-12, "dz", scale=(dzhat / norms).abs().max().item())


@pytest.mark.parametrize("m,d,n_views", [(74, 17, 2), (129, 64, 3)])
def test_tcl_fp32_chunks_match_fp64(m, d, n_views, monkeypatch):
    z = torch.randn(m, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = value_and_grad(tcl_loss, z, n_views=n_views)
    monkeypatch.setattr(loss_common, "CHUNK_ELEMENTS", 7 * m)  # 7-row chunks
    got = value_and_grad(tcl_loss, z.float(), n_views=n_views)
    # Measured: loss 5e-8, dz 3e-7 (fp32 with the k1 = 5000 terms).
    assert_close_rel(got[0], want[0], 5e-7, "loss")
    assert_close_rel(got[1], want[1], 2e-6, "dz")


def test_supcon_is_tcl_with_k1_0_k2_1():
    z = torch.randn(40, 8, dtype=torch.float64)
    labels = torch.randint(0, 4, (20,))
    a = value_and_grad(supcon_loss, z, labels=labels)
    b = value_and_grad(tcl_loss, z, labels=labels, k1=0.0, k2=1.0)
    c = value_and_grad(supcon_loss, z, labels=labels.repeat(2))  # per-row labels: the same loss
    for x, y, w in zip(a, b, c, strict=True):
        assert torch.allclose(x, y, rtol=1e-12) and torch.allclose(x, w, rtol=1e-12)


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("m,d", gpu_cases([(2, 1), (74, 17), (130, 130)], [(74, 17)]))
def test_nt_xent_is_cross_entropy(impl, m, d):
    """Two views: each anchor's target is its other view among all other rows."""
    z = torch.randn(m, d, generator=torch.Generator().manual_seed(m), dtype=torch.float64)

    def direct(x):
        zh = F.normalize(x, dim=1)
        logits = (zh @ zh.T / 0.2).masked_fill(torch.eye(m, dtype=torch.bool), float("-inf"))
        return F.cross_entropy(logits, torch.arange(m).roll(m // 2))

    want = value_and_grad(direct, z)
    dev = KERNEL_DEVICE if impl == "triton" else torch.device("cpu")
    dtype = torch.float32 if impl == "triton" else torch.float64
    got = value_and_grad(lambda x: nt_xent_loss(x, 0.2, impl=impl), z.to(dev, dtype))
    tol = 5e-6 if impl == "triton" else 1e-12  # measured: fp32 kernel 4.2e-7, fp64 torch path ~1e-15
    assert_close_rel(got[0], want[0], tol, "loss")
    assert_close_rel(got[1], want[1], tol, "dz")


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 5e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)]
)
@pytest.mark.parametrize("m,d,n_views", gpu_cases([(74, 17, 2), (75, 130, 3), (130, 3, 2)], [(74, 17, 2)]))
@pytest.mark.parametrize("blocks", gpu_cases([(64, 64, None), (16, 32, 16)], [(64, 64, None)]))
def test_nt_xent_kernel_against_float64(m, d, n_views, dtype, tol, blocks):
    """Tails in every tile; (16, 32, 16) also splits D across the K loop and across programs."""
    gen = torch.Generator().manual_seed(m * d)
    zh = F.normalize(torch.randn(m, d, dtype=torch.float64, generator=gen), dim=1).to(dtype)
    exact = zh.double()
    want = value_and_grad(
        lambda x: nt_xent_loss(x, 0.1, n_views=n_views, normalize=False, impl="torch"), exact
    )
    bm, bn, bk = blocks
    loss, dz = nt_xent_triton(
        zh.to(KERNEL_DEVICE), temperature=0.1, n_views=n_views, block_m=bm, block_n=bn, block_k=bk
    )
    # Measured in the interpreter: fp32 4.5e-7, fp16 2.6e-4. bf16 measures 3e-7 there because the
    # interpreter computes in fp32; on a GPU, G is rounded to bf16 (2⁻⁸ relative) for the second
    # dot, which is what its bound allows for.
    assert_close_rel(loss, want[0], tol, "loss")
    assert_close_rel(dz, want[1], tol, "dz")


def test_nt_xent_kernel_without_gradient():
    zh = F.normalize(torch.randn(40, 17), dim=1).to(KERNEL_DEVICE)
    loss, dz = nt_xent_triton(zh, temperature=0.2, n_views=2, compute_grad=False)
    assert dz is None
    assert_close_rel(loss, nt_xent_loss(zh.cpu(), 0.2, normalize=False, impl="torch"), 1e-5)


def test_gradcheck_tcl_torch_path(monkeypatch):
    monkeypatch.setattr(loss_common, "CHUNK_ELEMENTS", 7)  # TCL: 1-row chunks; NT-Xent (4×): 2-row
    z = torch.randn(10, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 3, 0, 1, 4])
    assert torch.autograd.gradcheck(lambda x: tcl_loss(x, labels, 0.5, 3.0, 1.5), (z,))
    assert torch.autograd.gradcheck(lambda x: nt_xent_loss(x, 0.3, n_views=2, impl="torch"), (z,))


def test_tcl_allocates_nothing_quadratic():
    m = 4096
    z = torch.randn(m, 32, requires_grad=True)
    with TensorAllocations() as mode:
        tcl_loss(z).backward()
    assert mode.largest_numel < m * m // 4, (mode.largest_numel, mode.largest_op)


@pytest.mark.parametrize("n_views", [2, 3])
@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_nt_xent_chunks_match_the_cross_entropy_reference(n_views, chunk_rows):
    """One chunk (the default at this size) or 7-row chunks: the same loss and gradient."""
    from fastsigclr.losses import nt_xent_chunked, nt_xent_loss_reference

    z = torch.randn(25 * n_views, 9, generator=torch.Generator().manual_seed(n_views), dtype=torch.float64)
    want = value_and_grad(nt_xent_loss_reference, z, temperature=0.3, n_views=n_views)
    zh = F.normalize(z, dim=1)
    loss, dzhat = nt_xent_chunked(zh, temperature=0.3, n_views=n_views, chunk_rows=chunk_rows)
    dz = (dzhat - (dzhat * zh).sum(1, keepdim=True) * zh) / z.norm(dim=1, keepdim=True)  # through the norm
    assert_close_rel(loss, want[0], 1e-13, "loss")
    assert_close_rel(dz, want[1], 1e-12, "dz")


def nt_xent_peak(fn, m, d=128):
    z = torch.randn(m, d, requires_grad=True)
    with TensorAllocations() as mode:
        fn(z, 0.2).backward()
    return mode


def test_nt_xent_torch_path_allocates_nothing_quadratic():
    m = 8192
    mode = nt_xent_peak(partial(nt_xent_loss, impl="torch"), m, d=32)
    assert mode.largest_numel < m * m // 4, (mode.largest_numel, mode.largest_op)


@pytest.mark.parametrize("m", [2048, 4096])
def test_nt_xent_torch_path_needs_less_memory_than_cross_entropy(m):
    """Against the plain F.cross_entropy version (the bench's eager reference), which keeps about
    three M×M matrices. Measured peaks: 20.1 / 49.0 MiB at 2048 rows, 39.1 / 194.0 MiB at 4096
    (6.0 / 12.5 at 1024, where the (M × D) copies of z weigh more)."""
    from fastsigclr.losses import nt_xent_loss_reference

    ours = nt_xent_peak(partial(nt_xent_loss, impl="torch"), m).peak_bytes
    plain = nt_xent_peak(nt_xent_loss_reference, m).peak_bytes
    assert ours < 0.5 * plain, (ours, plain)


def test_contrastive_errors():
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="labels has 3 entries; z has 8 rows"):
        tcl_loss(z, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no anchor has a positive"):
        supcon_loss(z, torch.arange(8))
    with pytest.raises(TypeError, match="1-D integer tensor"):
        tcl_loss(z, torch.zeros(8))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent_loss(z, 0.0)
    with pytest.raises(ValueError, match="k1 and k2 must be ≥ 0"):
        tcl_loss(z, k1=-1.0)
    with pytest.raises(ValueError, match="not divisible by n_views=3"):
        nt_xent_loss(z, n_views=3)


@pytest.mark.parametrize("n_views", [2, 3])
def test_materialised_nt_xent_reference_agrees(n_views):
    """The benchmark's eager baseline computes the same loss as the package."""
    from fastsigclr.losses import nt_xent_loss_reference

    z = torch.randn(12 * n_views, 9, dtype=torch.float64)
    a = value_and_grad(nt_xent_loss_reference, z, temperature=0.3, n_views=n_views)
    b = value_and_grad(nt_xent_loss, z, temperature=0.3, n_views=n_views, impl="torch")
    assert_close_rel(a[0], b[0], 1e-12, "loss")
    assert_close_rel(a[1], b[1], 1e-10, "dz")


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)])
def test_nt_xent_kernel_16_bit_negative_weights_below_fp16s_normal_range(dtype, tol):
    """A negative pair's weight is about 1/(τ·M²): 7.5e-8 at M = 2048, τ = 3.2 (as at M = 8192,
    τ = 0.2), at fp16's subnormal floor (5.96e-8). Scaled by 1/(τM) before the 16-bit dot, the
    gradient erred 2.1e-2 here (emulated in torch; 5.0e-3 at M = 8192), 10× the fp16 tolerance;
    applied after it, 3.7e-5. Tiles of 256 and D = 16 keep the interpreter to 8 × 8 tile steps."""
    m, d, temperature = 2048, 16, 3.2
    gen = torch.Generator().manual_seed(2048)
    zh = F.normalize(torch.randn(m, d, dtype=torch.float64, generator=gen), dim=1).to(dtype)
    want = value_and_grad(lambda x: nt_xent_loss(x, temperature, normalize=False, impl="torch"), zh.double())
    tiles = interpreter_tiles(block_m=256, block_n=256)
    loss, dz = nt_xent_triton(zh.to(KERNEL_DEVICE), temperature=temperature, n_views=2, **tiles)
    assert_close_rel(loss, want[0], tol, "loss")
    assert_close_rel(dz, want[1], tol, "dz")
