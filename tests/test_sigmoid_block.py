"""The sigmoid kernel's block contract (``sigmoid_block``): its three pair modes against a float64
reference of the loss and of every gradient at odd sizes (rows not a multiple of the tile, the
symmetric schedule's tiles straddling the diagonal, a single tile, several feature tiles, several
column ranges); the deterministic mode, which must not depend on the order programs run in; the
launcher's 64-bit offset decision at its boundary; and the schedule's wave efficiency."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    AS_ON_GPU,
    KERNEL_DEVICE,
    assert_close_rel,
    fp32_tol,
    gpu_cases,
    interpreter_tiles,
    max_rel_error,
    reversed_programs,
)

from fastsigclr.kernels import Plan, grad_dtype, plan_schedule, sigmoid_block, sigmoid_loss, sigmoid_plan
from fastsigclr.kernels.tiles import (
    SYMMETRIC_TILE,
    bf16_values,
    flush_cost,
    needs_int64,
    schedule_efficiency,
)

SCALE, BIAS = 3.0, -1.5
# Worst error measured over the cases below, interpreter, fp32, relative to max |reference|:
# 3.0e-7 (∂L/∂rows). The bound leaves 7x.
TOL = 2e-6


def reference(x, y, pairs: str, n_per_view: int | None, inv_m: float, scale=SCALE, bias=BIAS):
    """float64 loss and gradients from autograd over the materialised logits. "cross" is one
    rank's block of a loss symmetric in rows and columns: its rows' gradient counts each pair
    twice (∂L/∂ẑ_i = 2t·Σ_j g_ij ẑ_j, the contract); the two towers' are plain autograd."""
    x = x.double().requires_grad_()
    y = x if pairs == "self" else y.double().requires_grad_()
    t = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    logits = t * x @ y.T + b
    m, mc = logits.shape
    sign = -torch.ones(m, mc, dtype=torch.float64)
    keep = torch.ones(m, mc, dtype=torch.bool)
    if pairs == "self":
        image = torch.arange(m) % n_per_view
        sign[image[:, None] == image[None, :]] = 1.0
        keep = ~torch.eye(m, dtype=torch.bool)
    elif pairs == "two_tower":
        k = min(m, mc)
        sign[torch.arange(k), torch.arange(k)] = 1.0
    loss = -F.logsigmoid(sign * logits)[keep].sum() * inv_m
    loss.backward()
    d_rows = x.grad * (2 if pairs == "cross" else 1)
    return loss.detach(), d_rows, (y.grad if pairs == "two_tower" else None), t.grad, b.grad


# (pairs, rows, cols, D, block, block_k or None, column ranges): 74 rows in 32-row tiles end in a
# 10-row tail; 16-row tiles put 5 tiles on each side of the diagonal; 20 rows fit one 64-row
# tile; block_k = 16 at D = 40 sweeps three feature tiles (S in a loop, dZ slice by slice); D = 300
# without block_k takes the launcher's own 64-feature steps (five, the last 44 wide); two-tower
# at D = 130 one feature tile for S and both products in 64-feature slices (three). "self" at
# D = 300 with 24 rows: 26 rows (seed 2,900) would put ∂L/∂logit_scale at 1/175 of Σ|g·s|, where
# fp32 itself errs 2.0e-6 of it (torch, S in fp32) and the kernel 2.4-3.7e-6 (1.3e-5 when the
# sweep still added i = j and the correction removed it).
CASES = [
    ("self", 74, 74, 17, 32, None, 1),
    ("self", 75, 75, 17, 16, None, 3),
    ("self", 20, 20, 9, 64, None, 1),
    ("self", 66, 66, 40, 16, 16, 2),
    ("cross", 70, 45, 33, 32, None, 2),
    ("cross", 30, 50, 40, 16, 16, 3),
    ("two_tower", 70, 70, 20, 16, None, 2),
    ("two_tower", 37, 37, 40, 16, 16, 1),
    ("two_tower", 40, 29, 12, 16, None, 3),
    ("two_tower", 24, 21, 300, 32, None, 1),
    ("self", 24, 24, 300, 32, None, 1),
    ("two_tower", 33, 30, 130, 32, None, 2),
]
# Where the kernel is compiled: each pair mode once at an odd size and D = 17 or 20 (one 32-feature
# tile; D = 33 took a 64-feature one, 4.7-5.0 s per mode to compile), with the launcher's own
# tiles (the overrides above only keep the interpreter fast; docs/design.md §11).
GPU_CASES = [
    ("self", 74, 74, 17, 32, None, 1),
    ("cross", 70, 45, 17, 32, None, 2),
    ("two_tower", 70, 70, 20, 16, None, 2),
]


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("pairs,m,mc,d,block,block_k,splits", gpu_cases(CASES, GPU_CASES))
def test_block_matches_float64(pairs, m, mc, d, block, block_k, splits, deterministic):
    gen = torch.Generator().manual_seed(m * 100 + d)
    x = F.normalize(torch.randn(m, d, generator=gen), dim=1)
    y = x if pairs == "self" else F.normalize(torch.randn(mc, d, generator=gen), dim=1)
    n_per_view = m // 3 if m % 3 == 0 else m // 2
    inv_m = 1.0 / m
    dev = KERNEL_DEVICE
    got = sigmoid_block(
        x.to(dev), y.to(dev), torch.tensor(SCALE, device=dev), torch.tensor(BIAS, device=dev),
        n_per_view=n_per_view, inv_m=inv_m, pairs=pairs, grad_cols=pairs == "two_tower",
        deterministic=deterministic, fp32_dot="ieee",  # fp32 on a GPU too (TF32 is the default)
        **interpreter_tiles(block_m=block, block_n=block, block_k=block_k, col_splits=splits),
    )  # fmt: skip
    want = reference(x, y, pairs, n_per_view, inv_m)
    for name, a, e in zip(("loss", "d_rows", "d_cols", "d_scale", "d_bias"), got, want, strict=True):
        if e is None:
            assert a is None, name
        else:
            assert_close_rel(a, e, TOL, f"{pairs} {name}")


# Compiled, exact fp32 at D = 300 (five feature steps) took 7.7-7.9 s per mode to compile for
# sm_90, a fifth of stage 1's compile budget: the interpreter's check (CI) only.
@pytest.mark.skipif(AS_ON_GPU, reason="interpreter only: D = 300 in exact fp32 compiles 7.7-7.9 s per mode")
@pytest.mark.parametrize("block,splits", [(32, 1), (16, 2)])
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_self_pairs_dropped_in_the_sweep(block, splits, deterministic):
    """Pairs "self" at SigLIP's initial logit_scale 10, logit_bias −10, D = 300: i = j (σ = 1/2) would
    be the largest term of each row's Σ g·s, the negatives' σ ≈ 5e-5. The sweep drops it on the
    tiles that hold it: ∂L/∂logit_scale within 1.1e-7 of its scale (interpreter, fp32), where
    adding it and removing it in the correction erred 2.1-8.6e-7."""
    gen = torch.Generator().manual_seed(2700)
    x = F.normalize(torch.randn(24, 300, generator=gen), dim=1)
    scale, bias = 10.0, -10.0
    got = sigmoid_block(
        x.to(KERNEL_DEVICE), x.to(KERNEL_DEVICE), torch.tensor(scale, device=KERNEL_DEVICE),
        torch.tensor(bias, device=KERNEL_DEVICE), n_per_view=8, inv_m=1 / 24, pairs="self",
        deterministic=deterministic, fp32_dot="ieee",
        **interpreter_tiles(block_m=block, block_n=block, col_splits=splits),
    )  # fmt: skip
    want = reference(x, x, "self", 8, 1 / 24, scale=scale, bias=bias)
    assert_close_rel(got[3], want[3], 3e-7, "d_scale")
    for name, k in (("loss", 0), ("d_rows", 1), ("d_bias", 4)):
        assert_close_rel(got[k], want[k], TOL, name)


def test_gradients_only_and_loss_only():
    """compute_loss=False returns no loss and the same gradients; grad_rows=False no gradient."""
    x = F.normalize(torch.randn(50, 24, generator=torch.Generator().manual_seed(1)), dim=1).to(KERNEL_DEVICE)
    one = torch.tensor(SCALE, device=KERNEL_DEVICE), torch.tensor(BIAS, device=KERNEL_DEVICE)
    kw = dict(n_per_view=25, inv_m=1 / 50, pairs="self", **interpreter_tiles(block_m=16, block_n=16))
    full = sigmoid_block(x, x, *one, **kw)
    no_loss = sigmoid_block(x, x, *one, compute_loss=False, **kw)
    no_grad = sigmoid_block(x, x, *one, grad_rows=False, **kw)
    assert no_loss[0] is None and no_grad[1] is None
    assert torch.equal(no_loss[1], full[1])
    assert_close_rel(no_grad[0], full[0], 1e-7, "loss")


@pytest.mark.skipif(AS_ON_GPU, reason="reorders the interpreter's programs")
def test_deterministic_result_does_not_depend_on_program_order(monkeypatch):
    """deterministic=True: bitwise the same result with the programs run in reverse. The atomic
    mode, run the same way, changes in its last bits: the check can see an order dependence."""
    gen = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(130, 40, generator=gen), dim=1)
    y = F.normalize(torch.randn(130, 40, generator=gen), dim=1)
    one = torch.tensor(SCALE), torch.tensor(BIAS)
    runs = {}
    for order in ("forward", "reverse"):
        if order == "reverse":
            reversed_programs(monkeypatch)
        for mode, det in (("atomic", False), ("deterministic", True)):
            kw = dict(inv_m=1 / 130, deterministic=det, block_m=32, block_n=32, col_splits=3)
            self_block = sigmoid_block(x, x, *one, n_per_view=65, pairs="self", **kw)
            towers = sigmoid_block(x, y, *one, n_per_view=None, pairs="two_tower", grad_cols=True, **kw)
            runs[order, mode] = [*self_block[:2], *self_block[3:], *towers[:3]]
    for a, b in zip(runs["forward", "deterministic"], runs["reverse", "deterministic"], strict=True):
        assert torch.equal(a, b)
    atomic = zip(runs["forward", "atomic"], runs["reverse", "atomic"], strict=True)
    assert any(not torch.equal(a, b) for a, b in atomic)


def test_64_bit_offsets_from_the_boundary():
    """The launcher's decision: 32-bit offsets while the furthest element is at 2³¹ − 1, 64-bit
    one element further, from shapes and strides alone (meta tensors, a row-strided view)."""
    limit = 2**31 - 1
    rows = torch.empty(2**20, 2048, device="meta")  # last offset 2³¹ − 1
    assert not needs_int64([rows])
    assert needs_int64([torch.empty(2**20 + 1, 2048, device="meta")])
    narrow = torch.empty(2**20, 2049, device="meta")[:, :128]  # 128 features, row stride 2049
    assert narrow.stride(0) == 2049 and needs_int64([narrow])
    assert not needs_int64([narrow[:1000]])
    assert not needs_int64([], limit + 1) and needs_int64([], limit + 2)  # elements: slots × M × D


@pytest.mark.parametrize("two_n", [1024, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 32768, 65536])
@pytest.mark.parametrize("d", [128, 768])
def test_schedule_fills_the_waves(two_n, d):
    """≥ 90% wave efficiency on 132 SMs (docs/design.md §3.4 has the table), and column ranges
    that keep dZ's flushes (fp32 atomics, or deterministic slots) within 9 × dZ's own bytes: the
    model without the flush cost split 2N = 65,536 into 256 ranges (8.6 GB of atomics) for a
    modelled 3%. The symmetric tile's transposed product flushes per tile (flush_cost 1.49 tiles
    at 128 rows), more than the 0.28 tile it saves: the model keeps every ordered tile."""
    plan = plan_schedule(two_n, two_n, symmetric_ok=True, d=d)
    assert schedule_efficiency(two_n, two_n, plan) >= 0.9, plan
    assert not plan.symmetric and flush_cost(128, d) > 2 - SYMMETRIC_TILE
    full = plan_schedule(two_n, two_n, symmetric_ok=False, d=d)
    assert not full.symmetric and schedule_efficiency(two_n, two_n, full) >= 0.9, full
    assert full.programs <= 9, full


def test_pinned_plan_and_modes():
    # D = 17: the feature tile of the other kernel tests (D = 8 compiled a 16-feature variant)
    x = F.normalize(torch.randn(40, 17, generator=torch.Generator().manual_seed(2)), dim=1).to(KERNEL_DEVICE)
    one = torch.tensor(SCALE, device=KERNEL_DEVICE), torch.tensor(BIAS, device=KERNEL_DEVICE)
    # A plan made for this device: one pipeline stage in the interpreter, two compiled (sigmoid_plan).
    stages = 2 if KERNEL_DEVICE.type == "cuda" else 1
    plan = Plan(symmetric=False, block_m=16, block_n=16, programs=2, num_warps=4, num_stages=stages)
    pinned = sigmoid_block(
        x, x, *one, n_per_view=20, inv_m=1 / 40, pairs="self", plan=plan, deterministic=True
    )
    free = sigmoid_block(
        x, x, *one, n_per_view=20, inv_m=1 / 40, pairs="self", **interpreter_tiles(block_m=32, block_n=32)
    )
    assert max_rel_error(pinned[1], free[1]) < TOL
    recorded = sigmoid_plan(x, x, pairs="self", deterministic=True, block_m=16, block_n=16, col_splits=2)
    assert recorded == plan
    again = sigmoid_block(
        x, x, *one, n_per_view=20, inv_m=1 / 40, pairs="self", plan=recorded, deterministic=True
    )
    assert all(torch.equal(a, b) for a, b in zip(pinned[:2] + pinned[3:], again[:2] + again[3:], strict=True))
    with pytest.raises(ValueError, match="pairs must be one of"):
        sigmoid_block(x, x, *one, n_per_view=20, inv_m=1 / 40, pairs="both")
    assert grad_dtype(torch.float16) == torch.float32 and grad_dtype(torch.bfloat16) == torch.bfloat16


def test_loss_function_backward_scales_the_fused_gradients():
    """SigmoidLoss (the kernel's autograd Function): value and the gradients of the rows, the
    logit scale and the bias against float64 autograd, scaled by a grad_output of 3."""
    gen = torch.Generator().manual_seed(9)
    zh = F.normalize(torch.randn(46, 17, generator=gen), dim=1)  # D = 17 as the others (was 12)
    x = zh.to(KERNEL_DEVICE, copy=True).requires_grad_()
    scale = torch.tensor(SCALE, device=KERNEL_DEVICE, requires_grad=True)
    bias = torch.tensor(BIAS, device=KERNEL_DEVICE, requires_grad=True)
    (3 * sigmoid_loss(x, scale, bias, 2, deterministic=True)).backward()
    _, d_rows, _, d_scale, d_bias = reference(zh, None, "self", 23, 1 / 46)
    assert_close_rel(x.grad, 3 * d_rows, fp32_tol(TOL), "rows")
    assert_close_rel(scale.grad, 3 * d_scale, fp32_tol(TOL), "logit_scale")
    assert_close_rel(bias.grad, 3 * d_bias, fp32_tol(TOL), "logit_bias")
    assert torch.isnan(sigmoid_loss(x.detach(), scale, bias, 2, compute_loss=False))


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """x cut to TF32 as the H200's tensor cores read fp32 operands: 10 mantissa bits, the 13 low
    bits dropped (helpers.TF32_UNIT: truncation, not rounding, matched the GPU's errors)."""
    bits = x.float().contiguous().view(torch.int32)
    return (bits & ~0x1FFF).view(torch.float32).double()


@pytest.mark.parametrize("m,d,scale,bias", [(130, 64, 10.0, -10.0), (512, 128, 10.0, -10.0)])
def test_tf32_error_against_float64(m, d, scale, bias):
    """fp32 rows take TF32 by default. The interpreter computes tf32 dots in fp32, so this
    measures the format on the kernel's arithmetic: S from TF32-cut rows, the weights 2¹⁵·σ cut
    to TF32 for G·Z. Measured dZ error 4.8e-4 / 6.5e-4 of its scale (error_scales; bf16 operands:
    1.9e-3) (docs/design.md §3.4)."""
    from test_sigmoid_loss import error_scales

    zh = F.normalize(
        torch.randn(m, d, generator=torch.Generator().manual_seed(m), dtype=torch.float64), dim=1
    )
    zt = _tf32(zh)
    image = torch.arange(m) % (m // 2)
    positive = (image[:, None] == image[None, :]).double()
    eye = torch.eye(m, dtype=torch.bool)
    r = torch.sigmoid(scale * zt @ zt.T + bias) * 2**15
    g = (_tf32(r) / 2**15 - positive).masked_fill(eye, 0) / m
    dz = 2 * scale * g @ zt
    exact = reference(zh, None, "self", m // 2, 1 / m, scale, bias)
    err = max_rel_error(dz, exact[1], error_scales(zh, scale, bias, 2)[0])
    assert 1e-4 < err < 8e-4  # errs (unlike fp32), by a third of bf16 operands' error


def test_the_interpreters_bf16_rounding_is_the_gpus():
    """In the interpreter the kernels hold bf16 values in fp32 (``tiles.bf16_values`` with
    UPCAST), rounded to nearest even by integer arithmetic, as a GPU's cast rounds: equal to
    torch's cast bit for bit, exact ties (low half 0x8000) above odd and even mantissas included,
    and the values beside them (0x7FFF, 0x8001) and exact bf16 (0x0000), of either sign. A tie
    rounded down passed every loss test."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(X, OUT, K: tl.constexpr):
        at = tl.arange(0, K)
        tl.store(OUT + at, bf16_values(tl.load(X + at), True))

    gen = torch.Generator().manual_seed(5)
    high = torch.randint(0x0080, 0x7F00, (1024,), generator=gen, dtype=torch.int32)  # normal, finite
    sign = torch.randint(0, 2, (1024,), generator=gen, dtype=torch.int32) << 31
    low = torch.tensor([0x8000, 0x7FFF, 0x8001, 0x0000], dtype=torch.int32).repeat(256)
    x = ((high << 16) | low | sign).view(torch.float32)
    out = torch.empty_like(x, device=KERNEL_DEVICE)
    probe[(1,)](x.to(KERNEL_DEVICE), out, K=1024)
    want = x.to(torch.bfloat16).float()
    wrong = (out.cpu() != want).nonzero().flatten()
    assert len(wrong) == 0, (x[wrong[:3]].tolist(), out.cpu()[wrong[:3]].tolist(), want[wrong[:3]].tolist())
