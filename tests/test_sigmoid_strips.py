"""The weight strips (kernels/sigmoid_strip.py), which 16-bit CUDA blocks past one feature tile take:
each pair mode against the float64 reference of test_sigmoid_block.py, loss and every gradient, at
odd sizes (a tail strip, tile tails, a strip of one tile, D past 64-feature steps); positives at
σ(a) → 1 without cancellation; the order of programs; which launches take the strips; and the
strip's height."""

import pytest
import torch
import torch.nn.functional as F
from helpers import AS_ON_GPU, KERNEL_DEVICE, assert_close_rel, gpu_cases, max_rel_error, reversed_programs
from test_sigmoid_block import BIAS, SCALE, TOL, reference

from fastsigclr.kernels import fp32_products, launches, sigmoid_block, sigmoid_strip

# Relative to max |reference|, the weights and the operands rounded to the operand dtype:
# bf16 measured 1.6e-3 (∂L/∂rows) and 1.7e-3 (∂L/∂cols) in fp32 outputs, as the fused kernel's
# 1.3e-3 and 1.5e-3 on the same rows; fp16 1.8e-4 (fused 1.6e-4). The bounds leave 2.4x and 2.8x.
ROUNDED_TOL = {torch.bfloat16: 4e-3, torch.float16: 5e-4}

# (pairs, rows, cols, D, strip rows, dtype): fp32 (exact dots) checks the arithmetic at the
# reference's own tolerance; 16-bit the rounding of the weights. The strips' fp32 tiles are 64
# rows (16-bit: 128): 75 rows in strips of 32 end in an 11-row strip (SELF's strips round up to whole tiles:
# 64 and 11), 75 rows and 45 columns leave tile tails; D = 130 and 200 take three and four
# 64-feature steps, the last partial. 200 SigCLR rows in strips of 64 (positives 100 rows on, in
# another strip) take three strips' mirror pairs and an 8-row last strip.
CASES = [
    ("self", 75, 75, 130, 32, torch.float32),
    ("self", 200, 200, 130, 64, torch.float32),
    ("self", 66, 66, 200, 66, torch.float32),
    ("cross", 70, 45, 130, 64, torch.float32),
    ("cross", 70, 128, 130, 64, torch.float32),  # whole column tiles: the untested path
    ("two_tower", 70, 61, 200, 32, torch.float32),
    ("two_tower", 37, 37, 130, 37, torch.float32),
    ("two_tower", 70, 70, 200, 64, torch.bfloat16),
    ("self", 66, 66, 130, 64, torch.float16),
    ("self", 140, 140, 150, 64, torch.bfloat16),
]
# Compiled: one launch per pair mode that a GPU hands the strips itself (16-bit, D > 128, no tiles),
# and SigCLR in three strips of 128 rows, whose mirror pairs cuBLAS takes from transposed slices of
# the weights (sizes whose integers fall in the same specialisations: the same compiled variant).
# Every tile of those holds a positive, i = j or a column tail; 768 SigCLR rows in 3 views (256
# rows apart) and 390 two-tower rows leave tiles off their diagonals and tails, which take the
# untested path (_tested), in the same variants as 96 and 70 rows; in strips of 128 rows, the two
# towers' later strips add their products into ∂L/∂cols (put_product, addmm in place where probed).
GPU_CASES = [
    ("self", 96, 96, 160, 0, torch.bfloat16),
    ("two_tower", 70, 70, 160, 0, torch.bfloat16),
    ("self", 320, 320, 160, 128, torch.bfloat16),
    ("self", 768, 768, 160, 0, torch.bfloat16),
    ("two_tower", 390, 390, 160, 0, torch.bfloat16),
    ("two_tower", 390, 390, 160, 128, torch.bfloat16),  # four strips: the columns' products added
]


def _block(x, y, pairs, n_per_view, strip, **kw):
    dev = KERNEL_DEVICE
    kw = {"grad_cols": pairs == "two_tower", **kw}
    return sigmoid_block(
        x.to(dev), y.to(dev), torch.tensor(SCALE, device=dev), torch.tensor(BIAS, device=dev),
        n_per_view=n_per_view, inv_m=1.0 / x.shape[0], pairs=pairs, fp32_dot="ieee",
        out_dtype=torch.float32, **({"strip_rows": strip} if strip else {}), **kw,
    )  # fmt: skip


def _rows(pairs, m, mc, d, dtype):
    gen = torch.Generator().manual_seed(m * 100 + d)
    x = F.normalize(torch.randn(m, d, generator=gen), dim=1).to(dtype)
    y = x if pairs == "self" else F.normalize(torch.randn(mc, d, generator=gen), dim=1).to(dtype)
    return x, y, m // 3 if m % 3 == 0 else m // 2


@pytest.mark.parametrize("pairs,m,mc,d,strip,dtype", gpu_cases(CASES, GPU_CASES))
def test_strips_match_float64(pairs, m, mc, d, strip, dtype, monkeypatch):
    x, y, n_per_view = _rows(pairs, m, mc, d, dtype)
    taken = []
    launch = sigmoid_strip.weight_strip
    monkeypatch.setattr(sigmoid_strip, "weight_strip", lambda *a, **k: taken.append(1) or launch(*a, **k))
    got = _block(x, y, pairs, n_per_view, strip)
    want = reference(x.float(), y.float(), pairs, n_per_view, 1.0 / m)
    block = sigmoid_strip._config(x, False)["block"]
    height = -(-strip // block) * block if pairs == "self" and strip else strip  # SELF: whole tiles
    assert len(taken) == -(-m // (height or m)), "the launch did not go through the strips"
    tol = ROUNDED_TOL.get(dtype, TOL)
    for name, a, e in zip(("loss", "d_rows", "d_cols", "d_scale", "d_bias"), got, want, strict=True):
        if e is None:
            assert a is None, name
        else:  # the sums stay fp32 of unrounded weights: the reference's tolerance for all dtypes
            assert_close_rel(a, e, tol if name in ("d_rows", "d_cols") else TOL, name)


def test_products_are_written_then_added():
    """put_product writes a·b where nothing has reached the rows yet and adds it afterwards, in fp32
    from 16-bit operands (exact here: small integers); off CUDA the addition goes through a product
    written apart, and addmm_accumulates answers no without asking torch."""
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randint(-3, 4, shape, generator=gen).to(torch.bfloat16) for shape in ((5, 7), (7, 3)))
    grad = torch.full((5, 3), float("nan"))
    fp32_products.put_product(grad, a, b, first=True)  # written over whatever was there
    exact = a.double() @ b.double()
    assert grad.dtype == torch.float32 and torch.equal(grad.double(), exact)
    fp32_products.put_product(grad, a.T.contiguous().T, b, first=False)  # strided operands, added
    assert torch.equal(grad.double(), 2 * exact)
    assert not fp32_products.addmm_accumulates(torch.device("cpu"))


def _addmm(rounding):
    """A stand-in for CUDA's addmm(out_dtype=float32) on the CPU, whose torch has none: ``rounding``
    says what it does to (C, A·B, C + A·B)."""

    def addmm(c, a, b, *, out_dtype, out):
        assert out_dtype == torch.float32 and out.data_ptr() == c.data_ptr()
        if rounding == "raises":
            raise RuntimeError("expected self to be of the operands' dtype")
        c16 = c.bfloat16().float() if rounding == "C" else c.clone()
        product = a.float() @ b.float()
        total = c16 + (product.bfloat16().float() if rounding == "product" else product)
        out.copy_(total.bfloat16().float() if rounding == "sum" else total)
        return out

    return addmm


@pytest.mark.parametrize("rounding,answer", [(None, True), ("sum", False), ("product", False),
                                             ("C", False), ("raises", False)])  # fmt: skip
def test_the_probe_tells_exact_sums_from_rounded_ones(rounding, answer, monkeypatch):
    """addmm_accumulates' probe answers yes only for fp32 sums of exact products into an fp32 C, in
    the strips' layouts (offset rows, transposed column slices, one row): a result, a product or
    a C rounded to bf16 anywhere answers no, as does an addmm that raises."""
    monkeypatch.setattr(torch, "addmm", _addmm(rounding))
    assert fp32_products._probe(torch.device("cpu")) is answer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; runs on the GPU machine")
def test_addmm_accumulates_in_place_on_cuda():
    """On a GPU whose torch has addmm(out_dtype): the probe answers yes (on a torch that raises it
    answers no, and the strips add through a product written apart), and a later strip's products
    go into an fp32 row block in place, equal to written-then-added ones."""
    dev = torch.device("cuda")
    if not hasattr(torch.ops.aten.addmm, "dtype_out"):
        pytest.skip("this torch has no addmm(out_dtype)")
    accumulates = fp32_products.addmm_accumulates(dev)
    gen = torch.Generator().manual_seed(2)
    a, b = (torch.randn(shape, generator=gen).to(dev, torch.bfloat16) for shape in ((256, 384), (384, 160)))
    grad = torch.randn(256, 160, generator=gen).to(dev)
    want = grad + fp32_products.mm_fp32(a, b)
    fp32_products.put_product(grad, a, b, first=False)
    assert_close_rel(grad, want, 1e-6, f"in place (addmm_accumulates: {accumulates})")


def test_gpu_cases_take_both_tile_paths():
    """The compiled cases reach both versions of a tile's weights, per pair mode: a tile (128 × 128,
    one strip) with a positive, i = j or a column past the last takes the tests per element, one
    with none the untested path; checked element by element, not by the kernel's own test."""
    block, found = 128, set()
    for pairs, m, mc, _, strip, _ in GPU_CASES:
        n_per_view = m // 3 if m % 3 == 0 else m // 2
        i, j = torch.arange(m)[:, None], torch.arange(-(-mc // block) * block)[None, :]
        special = (j >= mc) | ((j - i) % n_per_view == 0 if pairs == "self" else i == j)
        for r0 in range(0, m, block):
            for c0 in range(0, j.shape[1], block) if not strip else ():
                found.add((pairs, bool(special[r0 : r0 + block, c0 : c0 + block].any())))
    assert found == {("self", True), ("self", False), ("two_tower", True), ("two_tower", False)}


@pytest.mark.skipif(AS_ON_GPU, reason="interpreter: a forced strip height")
def test_positives_near_one_keep_their_digits():
    """Orthogonal rows at logit_scale 30, logit_bias −10: each positive has σ(a) = 1 − 2.1e-9 and
    is alone along its own direction of ∂L/∂x. Its weight −2¹⁵·σ(−a) and its term softplus(−a)
    come from x = a·log2 e directly. Rebuilt as 2¹⁵·σ(a) − 2¹⁵ in fp32 (spacing 2⁻⁸ at 2¹⁵), as the
    fused kernel's per-row correction does, the weight keeps none of its digits: that kernel errs
    4.5e-5 in ∂L/∂x, 1.1e-3 in the loss and 100% in ∂L/∂t here (interpreter, 16-row tiles); the
    strips 5.7e-9, 1.1e-7 and 1.4e-6."""
    x = torch.eye(12, 150)[torch.randperm(12, generator=torch.Generator().manual_seed(5))]
    got = sigmoid_block(
        x.to(KERNEL_DEVICE), x.to(KERNEL_DEVICE), torch.tensor(30.0), torch.tensor(-10.0), n_per_view=None,
        inv_m=1 / 12, pairs="two_tower", grad_cols=True, fp32_dot="ieee", strip_rows=5,
    )  # fmt: skip
    want = reference(x, x, "two_tower", None, 1 / 12, scale=30.0, bias=-10.0)
    for name, a, e in zip(("loss", "d_rows", "d_cols", "d_scale", "d_bias"), got, want, strict=True):
        assert_close_rel(a, e, TOL, name)


@pytest.mark.skipif(AS_ON_GPU, reason="interpreter: the order of its programs is reversed")
def test_strips_do_not_depend_on_program_order(monkeypatch):
    """No atomics: run in reverse, every result is bitwise the same."""
    x, y, n = _rows("two_tower", 70, 61, 200, torch.bfloat16)
    first = _block(x, y, "two_tower", n, 32)
    reversed_programs(monkeypatch)
    again = _block(x, y, "two_tower", n, 32)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_which_launches_take_the_strips(monkeypatch):
    """On CUDA (and in a record of its launches) 16-bit rows wider than one compiled feature tile
    take the strips unless a plan or tiles are given; a forced height takes them anywhere."""
    monkeypatch.delenv(launches.RECORD_ENV, raising=False)  # tools/launch_inventory.py sets it
    wanted = sigmoid_strip.strips_wanted
    wide, cpu = (
        torch.empty(8, 129, dtype=torch.bfloat16, device="meta"),
        torch.empty(8, 129, dtype=torch.bfloat16),
    )
    assert wanted(cpu, cpu, {"strip_rows": 4}) and not wanted(cpu, cpu, {})  # forced; a CPU launch
    monkeypatch.setenv(launches.RECORD_ENV, "record.jsonl")
    assert wanted(wide, wide, {}) and wanted(wide.half(), wide.half(), {})
    assert not wanted(wide.float(), wide.float(), {})  # fp32: the fused kernel's TF32
    assert not wanted(wide[:, :128], wide[:, :128], {})  # one feature tile: registers
    assert not wanted(wide, wide[:0], {"strip_rows": 4})  # an empty block: the fused kernel's zeros
    for given in ({"plan": object()}, {"block_m": 64}, {"col_splits": 2}):
        assert not wanted(wide, wide, given)
    monkeypatch.setattr(sigmoid_strip, "mm_has_out_dtype", lambda: False)  # torch < 2.8: fp32 products
    assert not wanted(wide, wide, {})


@pytest.mark.skipif(AS_ON_GPU, reason="interpreter: a forced strip height and SM count")
@pytest.mark.parametrize("pairs,m,strip", [("two_tower", 256, 192), ("self", 320, 192), ("self", 330, 64)])
def test_every_strips_sums_fit_their_buffer(pairs, m, strip, monkeypatch):
    """A strip of fewer row tiles, or (SigCLR) of fewer columns, takes another grid (about
    WAVES·SMs programs per strip). Sized by the first strip, a short last strip's sums ran past
    their buffer: with one SM, 256 rows in strips of 192 erred 6% in the loss, ∂L/∂t and ∂L/∂b.
    SigCLR's last strip of 320 rows in strips of 192, and a middle strip of 330 rows in strips of
    64, take more programs than the first. The buffer holds the largest grid's."""
    monkeypatch.setattr(sigmoid_strip, "H100_SMS", 1)
    x, y, n = _rows(pairs, m, m, 130, torch.float32)
    grids = [sigmoid_strip.strip_grid(h, m - c0, 64, 1) for _, h, c0 in sigmoid_strip._strips(m, strip, True)]
    assert pairs != "self" or max(a * b for a, b in grids) > grids[0][0] * grids[0][1]
    got = _block(x, y, pairs, n, strip)
    want = reference(x, y, pairs, n, 1 / m)
    for name, a, e in zip(("loss", "d_rows", "d_cols", "d_scale", "d_bias"), got, want, strict=True):
        assert (a is None) if e is None else max_rel_error(a, e) <= TOL, name


@pytest.mark.skipif(AS_ON_GPU, reason="interpreter: a forced strip height")
@pytest.mark.parametrize("grad_rows", [True, False])
def test_sigclr_strips_visit_each_pair_once(grad_rows, monkeypatch):
    """SigCLR's G is symmetric: a strip takes the columns from its own first row on, so 200 rows in
    strips of 64 visit 200²/2 + Σh²/2 = 26,176 pairs, not 40,000; the pairs past a strip's square
    count twice in the sums and reach the later rows' gradient by Wᵀ·X_strip, here in products of
    64 rows (MIRROR_BYTES shrunk), three for the first strip. With the loss alone nothing is stored
    and the strips still visit 65% of the pairs."""
    monkeypatch.setattr(sigmoid_strip, "MIRROR_BYTES", 4 * 130)  # one strip's height per product
    x, _, _ = _rows("self", 200, 200, 130, torch.float32)
    launched, products = [], []
    launch, mm = sigmoid_strip.weight_strip, fp32_products.mm_fp32
    monkeypatch.setattr(
        sigmoid_strip, "weight_strip", lambda *a, **k: launched.append((*a[5:7], k)) or launch(*a, **k)
    )
    monkeypatch.setattr(
        fp32_products, "mm_fp32", lambda a, b, out=None: products.append(a.shape) or mm(a, b, out)
    )
    got = _block(x, x, "self", 100, 64, grad_rows=grad_rows)
    want = reference(x, x, "self", 100, 1 / 200)
    assert [(row0, h, k["col0"], k["square"]) for row0, h, k in launched] == [
        (0, 64, 0, 64), (64, 64, 64, 64), (128, 64, 128, 64), (192, 8, 192, 8)
    ]  # fmt: skip
    assert sum(h * (200 - k["col0"]) for _, h, k in launched) == 26176
    assert all(k["store"] == grad_rows for *_, k in launched)
    # Each strip's rows, then its mirror pairs' rows in blocks of 64: 3 + 2 + 1 + 0 of them.
    expected = [(64, 200), (64, 64), (64, 64), (8, 64), (64, 136), (64, 64), (8, 64), (64, 72), (8, 64)]
    expected += [(8, 8)]
    assert products == (expected if grad_rows else [])
    for name, a, e in zip(("loss", "d_rows", "d_cols", "d_scale", "d_bias"), got, want, strict=True):
        if e is None or (name == "d_rows" and not grad_rows):
            assert a is None, name
        else:
            assert max_rel_error(a, e) <= TOL, name


@pytest.mark.skipif(AS_ON_GPU, reason="interpreter: a forced strip height")
def test_without_gradients_no_weight_is_stored(monkeypatch):
    """Loss and scalars only (no ∂L/∂rows): one strip of every row, no weights stored, the sums
    exact; and the gradients returned are plain tensors even for rows that require grad."""
    x, y, n = _rows("two_tower", 70, 61, 200, torch.float32)
    stores = []
    launch = sigmoid_strip.weight_strip
    monkeypatch.setattr(
        sigmoid_strip, "weight_strip", lambda *a, **k: stores.append(k["store"]) or launch(*a, **k)
    )
    got = _block(x, y, "two_tower", n, 32, grad_rows=False, grad_cols=False)
    want = reference(x, y, "two_tower", n, 1 / 70)
    assert stores == [False] and got[1] is None and got[2] is None
    for name, k in (("loss", 0), ("d_scale", 3), ("d_bias", 4)):
        assert max_rel_error(got[k], want[k]) <= TOL, name
    traced = _block(x.requires_grad_(), y.requires_grad_(), "two_tower", n, 32)
    assert not any(t.requires_grad for t in traced)


@pytest.mark.parametrize("height", [-4, 2.5, True])
def test_a_bad_strip_height_is_refused(height):
    x = torch.zeros(4, 130)
    with pytest.raises(ValueError, match="strip_rows must be a positive number of rows"):
        _block(x, x, "self", 2, None, strip_rows=height)


def test_strip_height_holds_the_weights_bound():
    """At most STRIP_BYTES of weights, a whole number of tiles, one tile at least, every row at most;
    SigCLR's at most a quarter of the rows but at least 4,096."""
    assert sigmoid_strip.strip_rows(65536, 65536, 2, 128) == 4096  # 512 MiB of bf16
    assert sigmoid_strip.strip_rows(131072, 131072, 2, 128) == 2048
    assert sigmoid_strip.strip_rows(8192, 8192, 2, 128) == 8192  # 128 MiB: one strip
    assert sigmoid_strip.strip_rows(1000, 2**31, 2, 128) == 128  # wider than the bound: one tile
    for m, mc in ((65536, 65536), (30000, 70000), (4096, 9000)):
        h = sigmoid_strip.strip_rows(m, mc, 2, 128)
        assert h == m or (h % 128 == 0 and h * mc * 2 <= sigmoid_strip.STRIP_BYTES)
    # SigCLR's strips: at most a quarter of the rows, at least SYMMETRIC_MIN_ROWS (4,096).
    assert sigmoid_strip.strip_rows(16384, 16384, 2, 128, symmetric=True) == 4096  # four strips
    assert sigmoid_strip.strip_rows(8192, 8192, 2, 128, symmetric=True) == 4096  # two
    assert sigmoid_strip.strip_rows(4096, 4096, 2, 128, symmetric=True) == 4096  # one
    assert sigmoid_strip.strip_rows(24576, 24576, 2, 128, symmetric=True) == 6144
    assert sigmoid_strip.strip_rows(65536, 65536, 2, 128, symmetric=True) == 4096  # the bytes' bound
    assert sigmoid_strip.strip_rows(40000, 40000, 2, 128, symmetric=True) == 6656  # the bytes' bound
    rows, ranges = sigmoid_strip.strip_grid(4096, 65536, 128, 132)
    assert sigmoid_strip.strip_grid(1024, 65536, 128, 132)[1] > ranges  # why the buffer fits the largest
    assert rows == 32 and 3.5 * 132 <= rows * ranges <= 4.5 * 132


@pytest.mark.skipif(AS_ON_GPU, reason="interpreter: every tile position in one launch per case")
def test_tiles_that_hold_positives_are_found():
    """SigCLR's strip kernel tests positives and i = j per element only on tiles that hold one
    (sigmoid_strip._holds_positives, a test of the tile's corners): against every pair of a tile
    at every position, odd offsets included, with views shorter and longer than a tile (n = 13
    and 17 > 2·block − 1, where a tile's last column alone can hold a positive: a corner one
    column short passed the even offsets), above and below the diagonal."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(OUT, R0, C0, MC, N, K: tl.constexpr, BLOCK: tl.constexpr):
        at = tl.arange(0, K)
        held = sigmoid_strip._holds_positives(tl.load(R0 + at), tl.load(C0 + at), MC, N, BLOCK, BLOCK)
        tl.store(OUT + at, held.to(tl.int32))

    block = 8
    for n, views in ((5, 3), (8, 2), (13, 2), (17, 2), (24, 3)):
        mc = n * views
        r0, c0 = (
            t.flatten().to(torch.int32)
            for t in torch.meshgrid(torch.arange(mc), torch.arange(mc), indexing="ij")
        )
        k = triton.next_power_of_2(len(r0))
        out = torch.zeros(k, dtype=torch.int32)
        padded = [torch.cat([t, t[:1].expand(k - len(t))]) for t in (r0, c0)]
        probe[(1,)](out, *padded, mc, n, K=k, BLOCK=block)
        steps = torch.arange(block)
        differences = (c0[:, None, None] + steps) - (r0[:, None, None] + steps[:, None])  # c − i
        want = (differences % n == 0).flatten(1).any(1)
        wrong = (out[: len(r0)].bool() != want).nonzero().flatten()
        assert len(wrong) == 0, (n, views, r0[wrong[:3]].tolist(), c0[wrong[:3]].tolist())
