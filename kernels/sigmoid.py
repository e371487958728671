"""Fused sigmoid loss: forward and the whole backward in one blockwise pass (docs/design.md §3).

``_sigmoid_block_kernel`` (sigmoid_kernel.py) → ``sigmoid_block``, the launcher: one block of
the loss, rows against columns in one of three pair modes, returning the loss and every gradient →
``SigmoidLoss``, the autograd Function of the one-process SigCLR loss → ``sigmoid_loss``. Here also:
the schedule (which tiles, how many programs) and the autotune candidates; what
tools/compile_kernels.py compiles is in sigmoid_cases.py.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import triton
from triton.runtime.errors import OutOfResources

from fastsigclr.autograd_guard import first_derivative_only

from . import launches
from .checks import check_operand, check_scalars, check_views, grad_dtype
from .sigmoid_kernel import (
    MAX_BLOCK_D,
    PAIR_MODES,
    WIDE_BLOCK_K,
    _sigmoid_block_kernel,
)
from .sigmoid_strip import sigmoid_block_strips, strips_wanted
from .tiles import (
    H100_SMS,
    INTERPRET,
    Plan,
    check_plan,
    feature_tiling,
    needs_int64,
    plan_schedule,
    schedule_units,
    select_configs,
)

Pairs = Literal["self", "cross", "two_tower"]


def _dot_flags(dtype: torch.dtype, fp32_dot: str | None, interpret: bool = INTERPRET) -> dict:
    """PRECISION, CAST_BF16 and UPCAST. fp32 rows take TF32 by default ('tf32'; error against
    float64 in docs/design.md §3.4), 'bf16' rounds the operands to bf16 in the kernel, 'ieee' is
    exact (FMA units; a pinned tile, never autotuned: its candidates spilled 26-45 KB per thread
    and took 104-257 s each to compile). 16-bit rows ignore it. The interpreter holds 16-bit
    operands in fp32 (UPCAST): its bf16 tl.dot is wrong, its fp16 one runs without BLAS (76 ms
    for one 512×512×64 tile), and products of 16-bit values are exact in fp32 either way."""
    if fp32_dot not in (None, "ieee", "tf32", "bf16"):
        raise ValueError(f"fp32_dot must be None, 'ieee', 'tf32' or 'bf16', got {fp32_dot!r}")
    fp32 = dtype == torch.float32
    cast = fp32 and fp32_dot == "bf16"
    precision = "ieee" if (not fp32 or fp32_dot in ("ieee", "bf16")) else "tf32"
    return {"PRECISION": precision, "CAST_BF16": cast, "UPCAST": interpret and (cast or not fp32)}


def _configs(interpret: bool = INTERPRET) -> list[triton.Config]:
    """Autotune candidates: warps and stages only (the plan pins the tile). Never IEEE fp32."""
    if interpret:
        return [triton.Config({}, num_warps=4, num_stages=1)]
    # 128×128 with 3 stages needed 128 KiB of shared memory at D = 128 (sm_90): two stages only.
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((8, 2), (4, 2), (4, 3))]


# Non-constexpr parameters in launch order: what the pruning hook receives by name.
_ARGS = ("X", "Y", "DX", "DY", "PARTIALS", "LOGIT_SCALE", "LOGIT_BIAS", "M", "MC", "N_PER_VIEW", "D")
_ARGS += ("stride_x", "stride_y", "stride_dx", "stride_dy", "INV_M")
_KERNEL_PARAMS = frozenset(_sigmoid_block_kernel.arg_names)
# Every constexpr that selects a variant is in the key (a config tuned without the loss terms
# must not serve the variant that computes them: more registers).
_KEY = ["M", "MC", "D", "BLOCK_M", "BLOCK_K", "NUM_K", "BLOCK_DO", "PAIRS", "SYMMETRIC", "GRAD_ROWS"]
_KEY += ["GRAD_COLS", "COMPUTE_LOSS", "INT64", "PRECISION", "CAST_BF16"]


def _tile_configs(configs: list[triton.Config], block_m: int) -> list[triton.Config]:
    """The candidates with 4 warps per 64 rows of the tile (the first if none has)."""
    return [c for c in configs if c.num_warps == 4 * block_m // 64] or configs[:1]


def _max_shared_memory() -> int:
    """Shared memory per block on the current CUDA device, in bytes."""
    props = triton.runtime.driver.active.utils.get_device_properties(torch.cuda.current_device())
    return props["max_shared_mem"]


def _prune_configs(configs: list[triton.Config], named_args: dict, **constexprs) -> list[triton.Config]:
    """The candidates for this tile (4 warps per 64 rows) that load and spill nothing
    (select_configs): each is compiled here, as the autotuner would anyway."""
    configs = _tile_configs(configs, constexprs["BLOCK_M"])
    if len(configs) == 1:
        return configs
    args = [named_args[name] for name in _ARGS]
    # The autotuner passes its launch's keywords too (triton 3.6: grid and warmup, which warmup()
    # takes again: a TypeError on the first autotuned launch of a 64-row tile, 2N = 1,024 on an H200).
    constexprs = {name: value for name, value in constexprs.items() if name in _KERNEL_PARAMS}
    max_shared = _max_shared_memory()
    measured = []
    for cfg in configs:
        kernel = _sigmoid_block_kernel.warmup(*args, grid=(1,), **constexprs, **cfg.all_kwargs())
        try:
            kernel._init_handles()  # raises when it needs more shared memory than there is
        except OutOfResources:
            continue
        measured.append((cfg, constexprs["BLOCK_M"], kernel.metadata.shared, kernel.n_spills))
    kept = select_configs(measured, max_shared)
    if not kept:
        raise RuntimeError(
            f"no tile configuration of the sigmoid loss kernel fits this GPU's {max_shared} bytes of "
            f"shared memory at D = {named_args['D']}; use impl='torch' or bf16 inputs"
        )
    return kept


autotuned_kernel = triton.autotune(
    configs=_configs(),
    key=_KEY,
    reset_to_zero=["DX", "DY"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_sigmoid_block_kernel)


# The symmetric tile (S, G, G·Z_J in registers and Gᵀ·Z_I) spilled 756 bytes per thread at
# D = 128 bf16 (128×128, 8 warps), 236 with Gᵀ·Z_I in 64-feature slices, 72 at 64×64 (sm_90,
# triton 3.6). In 64-feature steps (_feature_tiling: both products added to memory per tile) it
# compiles without spilling and models 0.172 cycles per ordered pair with the loss terms and
# 0.107 without, against 0.193 and 0.125 for every ordered tile, but adds an fp32 atomic add per
# ordered pair that the model does not charge (docs/design.md §3). Until a GPU timing shows the
# gain, compiled launches take every ordered tile; the interpreter (the tests) runs both (its
# plans never ask this).
SYMMETRIC_COMPILED = False


def _blocks(d: int, fp32: bool) -> tuple[int, ...]:
    """Tile sizes the plan may choose: 64 rows for fp32 rows (a 128×128 TF32 tile needed 256 KiB
    of shared memory; IEEE: see _dot_flags), else 128 or 64. Past one feature tile 128×128 tiles
    compile without spilling in 64-feature steps (WIDE_BLOCK_K) and halve the loads and atomic
    adds per pair of 64×64 ones: 87 SASS per pair against 139 at D = 768 (bf16 SigCLR with the
    loss terms, sm_90, triton 3.6)."""
    return (64,) if fp32 else (128, 64)


# sigmoid_kernel.MAX_BLOCK_D when compiled: what a record of the compiled launch takes in the
# interpreter (kernels/launches.py; tests/test_launches.py checks the two agree).
COMPILED_MAX_BLOCK_D = 128


def _feature_tiling(d: int, symmetric: bool = False, interpret: bool = INTERPRET) -> tuple[int, int]:
    """(BLOCK_K, NUM_K): one feature tile up to MAX_BLOCK_D, else WIDE_BLOCK_K-feature steps;
    compiled symmetric tiles wider than WIDE_BLOCK_K take the steps too (see SYMMETRIC_COMPILED)."""
    block_k, num_k = feature_tiling(d, MAX_BLOCK_D if interpret else COMPILED_MAX_BLOCK_D)
    wide = num_k > 1 or (symmetric and not interpret and block_k > WIDE_BLOCK_K)
    return (WIDE_BLOCK_K, triton.cdiv(d, WIDE_BLOCK_K)) if wide else (block_k, num_k)


def _cols_by_second_sweep(d: int) -> bool:
    """Whether SigLIP's texts' gradient comes from a second sweep with the towers swapped rather than
    from atomic adds in the one sweep: where a row tile's gradient fits in registers (one compiled
    feature tile, D ≤ 128, decided the same in the interpreter). The one sweep adds G·Y and Gᵀ·X to
    memory for every tile, D/16 bytes of fp32 atomics per pair with 128 × 128 tiles, and on an H200
    both of its timed large cases ran at that traffic's rate (1.41 and 1.34 TB/s: 24.4 ms at
    B = 65,536, D = 128; 154 ms at D = 768; benchmarks/results/gpu-2026-12-04). Two sweeps do S and G
    twice (8·D instead of 6·D FLOPs and twice the exp2 per pair) but add nothing per tile. Past one
    feature tile each sweep adds its rows' slices per tile, the same traffic in all: one sweep."""
    return _feature_tiling(d, interpret=False)[1] == 1


def _plan(rows: torch.Tensor, mc: int, symmetric_ok: bool, tiles: dict, interpret: bool = INTERPRET) -> Plan:
    """The plan of a launch: the one given, tile overrides (tests; the symmetric schedule needs
    square tiles), one program per row unit of 64-row tiles in the interpreter, or the fastest
    schedule on this GPU, an H100's SMs where there is none (a compiled launch's record; IEEE
    fp32: 64-row tiles only, see _dot_flags)."""
    if tiles.get("plan") is not None:
        check_plan(tiles["plan"], symmetric_ok=symmetric_ok)
        return tiles["plan"]
    m = rows.shape[0]
    bm, bn = tiles.get("block_m"), tiles.get("block_n")
    if bm or bn or interpret:
        bm, bn = bm or bn or 64, bn or bm or 64
        plan = Plan(symmetric_ok and bm == bn, bm, bn, 1, 4, 1 if interpret else 2)
    else:
        cuda = rows.device.type == "cuda"
        sms = torch.cuda.get_device_properties(rows.device).multi_processor_count if cuda else H100_SMS
        d = rows.shape[1]
        blocks = _blocks(d, rows.dtype == torch.float32)
        plan = plan_schedule(
            m, mc, symmetric_ok=symmetric_ok and SYMMETRIC_COMPILED, sms=sms, blocks=blocks, d=d
        )
    if tiles.get("col_splits"):
        plan = dataclasses.replace(plan, programs=tiles["col_splits"])
    return plan


def _slice_width(block_k: int, num_k: int, two_tower_cols: bool = False) -> int:
    """dZ's slices past one feature tile: 64 features (see the kernel's _tile). Two-tower with
    ∂L/∂y takes them at one feature tile too, its S still one tile: at D = 128 bf16 (128×128, 8
    warps, sm_90, triton 3.6) it compiles without spilling at 40.6 SASS per pair (0.317 cycles),
    where dZ_I in registers spilled 424 bytes per thread (30.8 SASS before paying them; 424 too
    with Gᵀ·Z_I alone in slices, 40 at 128×64 tiles) and the 64-feature steps of S cost 43.6."""
    if num_k == 1 and not (two_tower_cols and block_k > WIDE_BLOCK_K):
        return block_k
    return min(WIDE_BLOCK_K, block_k)


def _operands(rows: torch.Tensor, cols: torch.Tensor, pairs: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns, checked, with unit stride in the features (what the loads assume)."""
    check_operand("rows", rows)
    if pairs != "self":
        check_operand("cols", cols)
    if pairs not in PAIR_MODES:
        raise ValueError(f"pairs must be one of {', '.join(map(repr, PAIR_MODES))}, got {pairs!r}")
    rows = rows if rows.stride(1) == 1 else rows.contiguous()
    if pairs == "self":
        return rows, rows
    cols = cols if cols.stride(1) == 1 else cols.contiguous()
    if cols.dtype != rows.dtype or cols.shape[1] != rows.shape[1]:
        raise ValueError(
            f"cols {cols.dtype} {tuple(cols.shape)} do not match rows {rows.dtype} {tuple(rows.shape)}"
        )
    return rows, cols


def sigmoid_block(
    rows: torch.Tensor,
    cols: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    n_per_view: int | None,
    inv_m: float,
    pairs: Pairs,
    grad_rows: bool = True,
    grad_cols: bool = False,
    compute_loss: bool = True,
    deterministic: bool = False,
    fp32_dot: str | None = None,
    out_dtype: torch.dtype | None = None,
    **tiles,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One block of the sigmoid loss: ``rows`` (M, D) against ``cols`` (MC, D), both normalised,
    logits logit_scale·⟨row, col⟩ + logit_bias, every term scaled by inv_m.

    pairs: "self" (cols is rows: no i = j term, positives where i ≡ j mod n_per_view; the
    symmetric schedule), "cross" (every pair a negative: another rank's rows), "two_tower"
    (SigLIP: positives where i = j; grad_cols gives ∂L/∂cols).
    deterministic: every sum in a fixed order (no atomics; "self" then takes every ordered tile)
    with a pinned plan: bitwise equal between runs.
    fp32_dot: how fp32 rows meet the tensor cores (see _dot_flags). out_dtype: of the gradients
    (default grad_dtype). tiles: plan (a Plan), or block_m, block_n, block_k, col_splits, or
    strip_rows (the weight strips of sigmoid_strip.py, which 16-bit CUDA rows past D = 128 take).
    Returns (loss | None, ∂L/∂rows | None, ∂L/∂cols | None, ∂L/∂logit_scale, ∂L/∂logit_bias).
    """
    rows, cols = _operands(rows, cols, pairs)
    check_scalars(rows, logit_scale=logit_scale, logit_bias=logit_bias)
    flags = _dot_flags(rows.dtype, fp32_dot)
    if strips_wanted(rows, cols, tiles):  # past one feature tile on a GPU: no per-tile adds
        return sigmoid_block_strips(
            rows, cols, logit_scale, logit_bias, n_per_view=n_per_view or rows.shape[0], inv_m=inv_m,
            pairs=pairs, grad_rows=grad_rows, grad_cols=grad_cols,
            compute_loss=compute_loss, flags=flags, out_dtype=out_dtype or grad_dtype(rows.dtype),
            height=tiles.get("strip_rows") or 0,
        )  # fmt: skip
    if pairs == "two_tower" and grad_cols and (deterministic or _cols_by_second_sweep(rows.shape[1])):
        # ∂L/∂y is the row gradient of the same loss with the towers swapped: no per-tile adds
        # (rows in registers add once per program; deterministic, into slots summed in order).
        kw = dict(n_per_view=None, inv_m=inv_m, pairs=pairs, deterministic=deterministic)
        kw.update(fp32_dot=fp32_dot)
        kw.update(out_dtype=out_dtype, **tiles)
        loss, d_rows, _, dt, db = sigmoid_block(rows, cols, logit_scale, logit_bias, grad_rows=grad_rows,
                                                compute_loss=compute_loss, **kw)  # fmt: skip
        d_cols = sigmoid_block(cols, rows, logit_scale, logit_bias, compute_loss=False, **kw)[1]
        return loss, d_rows, d_cols, dt, db
    symmetric_ok = pairs == "self" and not deterministic
    plan = _plan(rows, cols.shape[0], symmetric_ok, tiles)  # sigmoid_plan's, on the checked operands
    # What a compiled launch takes on an H100:
    compiled = (_plan(rows, cols.shape[0], symmetric_ok, tiles, False),
                _dot_flags(rows.dtype, fp32_dot, False)) if launches.recording() else None  # fmt: skip
    return _launch(rows, cols, logit_scale, logit_bias, plan, flags, deterministic, tiles.get("block_k"),
                   compiled, n_per_view=n_per_view or rows.shape[0], inv_m=inv_m, pairs=pairs,
                   grad_rows=grad_rows, grad_cols=grad_cols, compute_loss=compute_loss,
                   out_dtype=out_dtype)  # fmt: skip


def sigmoid_plan(
    rows: torch.Tensor, cols: torch.Tensor, *, pairs: Pairs, deterministic: bool = False,
    fp32_dot: str | None = None, **tiles,
) -> Plan:  # fmt: skip
    """The plan sigmoid_block would launch these operands with: record it (dataclasses.asdict)
    with a deterministic run and pass it back as ``plan=`` to reduce in the same order."""
    rows, cols = _operands(rows, cols, pairs)
    _dot_flags(rows.dtype, fp32_dot)  # checks it
    return _plan(rows, cols.shape[0], pairs == "self" and not deterministic, tiles)


def _grid(plan: Plan, m: int, mc: int, deterministic: bool) -> tuple[int, int, int]:
    """(row units, programs per unit, slots of the row-gradient buffer) of a plan."""
    units, length, _ = schedule_units(m, mc, plan.block_m, plan.symmetric, plan.block_n)
    programs = min(plan.programs, length)
    return units, programs, programs if deterministic else 1


def _constexprs(plan: Plan, rows, cols, block_k: int | None, interpret: bool, flags: dict, *, pairs: str,
                grad_rows: bool, two_tower_cols: bool, compute_loss: bool,
                deterministic: bool) -> dict:  # fmt: skip
    """The kernel's constexprs for a plan, interpreted or compiled (their widest feature tiles differ)."""
    (m, d), mc = rows.shape, cols.shape[0]
    tiling = _feature_tiling(d, plan.symmetric, interpret)
    block_k, num_k = tiling if block_k is None else (block_k, triton.cdiv(d, block_k))
    consts = dict(BLOCK_M=plan.block_m, BLOCK_N=plan.block_n, BLOCK_K=block_k, NUM_K=num_k)
    consts.update(BLOCK_DO=_slice_width(block_k, num_k, two_tower_cols), PAIRS=PAIR_MODES[pairs])
    consts.update(SYMMETRIC=plan.symmetric)
    consts.update(GRAD_ROWS=grad_rows, GRAD_COLS=two_tower_cols, COMPUTE_LOSS=compute_loss)
    int64 = needs_int64([rows, cols], _grid(plan, m, mc, deterministic)[2] * m * d)
    return dict(consts, ATOMIC_ROWS=not deterministic, INT64=int64, **flags)


def _launch(rows, cols, logit_scale, logit_bias, plan: Plan, flags: dict, deterministic: bool,
            block_k: int | None, compiled: tuple[Plan, dict] | None, *, n_per_view: int, inv_m: float,
            pairs: str, grad_rows: bool, grad_cols: bool, compute_loss: bool,
            out_dtype: torch.dtype | None) -> tuple:  # fmt: skip
    (m, d), mc = rows.shape, cols.shape[0]
    units, programs, slots = _grid(plan, m, mc, deterministic)
    f32 = dict(dtype=torch.float32, device=rows.device)
    dx = torch.zeros((slots, m, d), **f32) if grad_rows else rows.new_empty(0)
    two_tower_cols = pairs == "two_tower" and grad_cols
    dy = dx[0] if plan.symmetric and grad_rows else torch.zeros((mc, d), **f32) if two_tower_cols else dx
    partials = torch.zeros((units * programs, 3), **f32)
    scalars = [s.detach().to(torch.float32).reshape(1).contiguous() for s in (logit_scale, logit_bias)]
    args = (rows, cols, dx, dy, partials, *scalars, m, mc, n_per_view, d, rows.stride(0), cols.stride(0))
    args += (d, d, float(inv_m))
    grid = (units, programs)
    what = dict(pairs=pairs, grad_rows=grad_rows, two_tower_cols=two_tower_cols, compute_loss=compute_loss)
    what.update(deterministic=deterministic)
    consts = _constexprs(plan, rows, cols, block_k, INTERPRET, flags, **what)
    exact = rows.dtype == torch.float32 and flags["PRECISION"] == "ieee" and not flags["CAST_BF16"]
    pinned = deterministic or exact or not launches.autotune()
    if compiled is not None:  # record the launch a compiled run would make (kernels/launches.py)
        plan_c, flags_c = compiled
        consts_c = _constexprs(plan_c, rows, cols, block_k, False, flags_c, **what)
        tuned = _tile_configs(_configs(False), plan_c.block_m) if not pinned else [plan_c]
        launches.record("sigmoid", args, consts_c, [(c.num_warps, c.num_stages) for c in tuned])
    if launches.record_only():
        pass
    elif pinned or INTERPRET:
        _sigmoid_block_kernel[grid](*args, num_warps=plan.num_warps, num_stages=plan.num_stages, **consts)
    else:
        autotuned_kernel[grid](*args, **consts)
    loss, db, dt = partials.sum(dim=0).unbind()
    out = out_dtype or grad_dtype(rows.dtype)
    d_rows = (dx.sum(dim=0) if slots > 1 else dx[0]).to(out) if grad_rows else None
    d_cols = dy.to(out) if two_tower_cols else None
    return (loss if compute_loss else None), d_rows, d_cols, dt, db


class SigmoidLoss(torch.autograd.Function):
    """The one-process SigCLR loss of normalised rows: the kernel forms the loss and every
    gradient in forward; backward only scales them by grad_output. Without compute_loss the
    value is NaN (a value never computed cannot pass for a loss in a log)."""

    @staticmethod
    def forward(ctx, zhat, logit_scale, logit_bias, n_views, compute_loss, deterministic):
        m = zhat.shape[0]
        loss, dz, _, ds, db = sigmoid_block(
            zhat, zhat, logit_scale, logit_bias, n_per_view=m // n_views, inv_m=1.0 / m, pairs="self",
            grad_rows=ctx.needs_input_grad[0], compute_loss=compute_loss, deterministic=deterministic,
        )  # fmt: skip
        ctx.save_for_backward(dz, ds, db)
        ctx.dtypes = (zhat.dtype, logit_scale.dtype, logit_bias.dtype)
        return loss if loss is not None else torch.full((), float("nan"), device=zhat.device)

    @staticmethod
    @first_derivative_only
    def backward(ctx, grad_out):
        grads = [
            None if saved is None or not wanted else (saved * grad_out).to(dtype)
            for saved, wanted, dtype in zip(ctx.saved_tensors, ctx.needs_input_grad, ctx.dtypes, strict=False)
        ]
        return (*grads, None, None, None)


def sigmoid_loss(
    zhat: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    n_views: int = 2,
    *,
    compute_loss: bool = True,
    deterministic: bool = False,
) -> torch.Tensor:
    """SigCLR loss of normalised view-major rows zhat (n_views·N, D) → fp32 scalar; logit_scale
    and logit_bias are 0-d tensors on zhat's device and receive gradients."""
    check_operand("zhat", zhat)
    check_views(zhat, n_views)
    return SigmoidLoss.apply(zhat, logit_scale, logit_bias, n_views, compute_loss, deterministic)
