"""How the launchers choose a configuration (kernels/launches.py): autotuned by default, pinned to
the plan's first configuration under FASTSIGCLR_TUNE=off (the tests), and the record of the launch
a compiled run would make, taken on this CPU from meta tensors without running anything."""

import functools
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import triton
from helpers import assert_close_rel

from fastsigclr.kernels import Plan, launches, sigmoid, sigmoid_strip
from fastsigclr.kernels import augment as augment_kernel
from fastsigclr.kernels.augment import COLUMNS, two_view_augment
from fastsigclr.kernels.ntxent import nt_xent_triton
from fastsigclr.kernels.tiles import H100_SMS, plan_schedule
from fastsigclr.losses import sigmoid_blocks


def test_the_tests_run_pinned():
    """tests/conftest.py sets FASTSIGCLR_TUNE=off before any launch."""
    assert launches.autotune() is False


def test_tune_switch_values(monkeypatch):
    monkeypatch.setenv(launches.TUNE_ENV, "on")
    assert launches.autotune() is True
    monkeypatch.delenv(launches.TUNE_ENV)
    assert launches.autotune() is True  # the production default
    monkeypatch.setenv(launches.TUNE_ENV, "maybe")
    with pytest.raises(ValueError, match="FASTSIGCLR_TUNE must be 'on' or 'off', got 'maybe'"):
        launches.autotune()


class FakeKernel:
    """Stands in for a compiled kernel: notes how it was launched."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(kwargs)


@pytest.mark.parametrize(
    "tune,fp32_dot,tuned", [("on", None, True), ("off", None, False), ("on", "ieee", False)]
)
def test_compiled_launcher_autotunes_only_when_asked(monkeypatch, tune, fp32_dot, tuned):
    """The compiled path's decision (INTERPRET off, kernels faked): the autotuner by default, the
    plain kernel at the plan's warps and stages when pinned, and IEEE fp32 always pinned."""
    plain, autotuned = FakeKernel(), FakeKernel()
    monkeypatch.setattr(sigmoid, "INTERPRET", False)
    monkeypatch.setattr(sigmoid, "_sigmoid_block_kernel", plain)
    monkeypatch.setattr(sigmoid, "autotuned_kernel", autotuned)
    monkeypatch.setenv(launches.TUNE_ENV, tune)
    rows = torch.nn.functional.normalize(torch.randn(96, 32), dim=1)
    one = torch.tensor(1.0)
    plan = Plan(False, 64, 64, 2, 4, 3)
    sigmoid.sigmoid_block(rows, rows, one, one, n_per_view=48, inv_m=1 / 96, pairs="self", fp32_dot=fp32_dot,
                          plan=plan)  # fmt: skip
    assert (len(autotuned.calls), len(plain.calls)) == ((1, 0) if tuned else (0, 1))
    if not tuned:
        assert (plain.calls[0]["num_warps"], plain.calls[0]["num_stages"]) == (4, 3)
    else:
        assert "num_warps" not in autotuned.calls[0]


def test_autotuner_prunes_a_64_row_tile_with_its_own_keywords(monkeypatch):
    """The compiled path through Triton's own Autotuner where pruning compiles each candidate
    (a 64-row tile has two: 4 warps with 2 or 3 stages). Triton hands the pruning hook its launch
    keywords (grid, warmup), which warmup() then got twice: a TypeError at the first autotuned
    launch on an H200 (2N = 1,024, bf16). Compiling and timing are faked; the launch then runs in
    the interpreter with the chosen configuration and matches float64."""
    kernel = sigmoid._sigmoid_block_kernel
    compiled = []

    class Compiled:  # what warmup() returns: fits in shared memory, spills nothing
        metadata = types.SimpleNamespace(shared=0)
        n_spills = 0

        def _init_handles(self) -> None:
            pass

    def warmup(*args, grid, **kwargs):  # JITFunction.warmup's signature
        unknown = set(kwargs) - sigmoid._KERNEL_PARAMS - {"num_warps", "num_stages", "num_ctas", "maxnreg"}
        assert not unknown and len(args) == len(sigmoid._ARGS), unknown
        compiled.append((kwargs["num_warps"], kwargs["num_stages"]))
        return Compiled()

    monkeypatch.setattr(kernel, "warmup", warmup)
    monkeypatch.setattr(sigmoid, "_max_shared_memory", lambda: 232_448)
    tuner = triton.autotune(
        configs=sigmoid._configs(interpret=False),
        key=sigmoid._KEY,
        reset_to_zero=["DX", "DY"],
        prune_configs_by={"early_config_prune": sigmoid._prune_configs},
    )(kernel)
    monkeypatch.setattr(tuner, "_bench", lambda *args, config, **kwargs: [float(config.num_stages)] * 3)
    monkeypatch.setattr(sigmoid, "autotuned_kernel", tuner)
    monkeypatch.setattr(sigmoid, "INTERPRET", False)
    monkeypatch.setenv(launches.TUNE_ENV, "on")
    gen = torch.Generator().manual_seed(6)
    rows = torch.nn.functional.normalize(torch.randn(70, 24, generator=gen), dim=1)
    t, b = torch.tensor(5.0), torch.tensor(-4.0)
    got = sigmoid.sigmoid_block(rows, rows, t, b, n_per_view=35, inv_m=1 / 70, pairs="self",
                                plan=Plan(False, 64, 64, 2, 4, 2))  # fmt: skip
    assert sorted(compiled) == [(4, 2), (4, 3)] and tuner.best_config.num_stages == 2
    want = sigmoid_blocks(rows.double(), t.double(), b.double(), n_views=2)
    for name, x, y in zip(("loss", "dz", "dt", "db"), (got[0], got[1], got[3], got[4]), want, strict=True):
        assert_close_rel(x, y, 1e-5, name)


def recorded(monkeypatch, tmp_path, launch, tune="off", name="launches.jsonl") -> list[dict]:
    """The launches ``launch()`` records, run record-only."""
    path = tmp_path / name
    monkeypatch.setenv(launches.RECORD_ENV, str(path))
    monkeypatch.setenv(launches.RECORD_ONLY_ENV, "1")
    monkeypatch.setenv(launches.TUNE_ENV, tune)
    launch()
    return [json.loads(line) for line in path.read_text().splitlines()]


def meta_rows(m: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(m, d, dtype=dtype, device="meta")


def self_block(rows: torch.Tensor, n_views: int):
    """sigmoid_block on one process's rows, with meta scalars."""
    m, one = rows.shape[0], torch.ones((), device="meta")
    return sigmoid.sigmoid_block(rows, rows, one, one, n_per_view=m // n_views, inv_m=1 / m, pairs="self")


@pytest.mark.parametrize("tune,configs", [("off", [[8, 2]]), ("on", [[8, 2]])])
def test_sigmoid_record_is_the_compiled_launch(monkeypatch, tmp_path, tune, configs):
    """bf16 at 2N = 8192, D = 128 on meta tensors: the H100 plan (128-row tiles, 8 warps), one
    feature tile, no interpreter upcast, the one candidate of 8 warps either way."""
    run = functools.partial(self_block, meta_rows(8192, 128, torch.bfloat16), n_views=2)
    (entry,) = recorded(monkeypatch, tmp_path, run, tune)
    plan = plan_schedule(8192, 8192, symmetric_ok=False, sms=H100_SMS)
    consts = entry["constexprs"]
    assert (consts["BLOCK_M"], consts["BLOCK_N"], plan.block_m) == (128, 128, 128)
    assert (consts["BLOCK_K"], consts["NUM_K"], consts["UPCAST"], consts["SYMMETRIC"]) == (
        128,
        1,
        False,
        False,
    )
    assert entry["kernel"] == "sigmoid" and entry["configs"] == configs
    assert entry["args"][0] == {"tensor": "bfloat16", "aligned": True}
    assert entry["args"][7:11] == [16, 16, 16, 16]  # M, MC, N_PER_VIEW, D: multiples of 16


def test_sigmoid_record_of_fp32_rows(monkeypatch, tmp_path):
    """fp32 at D = 130: 64-row tiles, three 64-feature steps (the interpreter takes one tile of
    256); autotuned, both 4-warp candidates compile; pinned, the plan's (4, 3) only."""
    run = functools.partial(self_block, meta_rows(1026, 130, torch.float32), n_views=2)
    (tuned,) = recorded(monkeypatch, tmp_path, run, "on")
    (pinned,) = recorded(monkeypatch, tmp_path, run, "off", name="pinned.jsonl")
    assert tuned["configs"] == [[4, 2], [4, 3]] and pinned["configs"] == [[4, 3]]
    consts = pinned["constexprs"]
    tiles = (consts["BLOCK_M"], consts["BLOCK_K"], consts["NUM_K"], consts["BLOCK_DO"], consts["PRECISION"])
    assert tiles == (64, 64, 3, 64, "tf32")
    assert pinned["args"][7] == 17 and pinned["args"][10] == 17  # 1026 and 130: neither 1 nor % 16


def test_ntxent_and_augment_records(monkeypatch, tmp_path):
    """NT-Xent: forward and both backward passes at triton's default 4 warps and 3 stages, no
    upcast of bf16; augment: its warps for a 32² view."""
    zh = meta_rows(8192, 128, torch.bfloat16)
    entries = recorded(monkeypatch, tmp_path, lambda: nt_xent_triton(zh, temperature=0.2, n_views=2))
    assert [e["kernel"] for e in entries] == ["ntxent fwd", "ntxent bwd", "ntxent bwd"]
    assert all(e["configs"] == [[4, 3]] and e["constexprs"]["UPCAST"] is False for e in entries)
    assert [e["constexprs"]["TRANSPOSED"] for e in entries[1:]] == [False, True]
    data = torch.zeros(4, 40, 40, 3, dtype=torch.uint8)
    params = torch.zeros(2, 4, len(COLUMNS))
    columns = {name: i for i, name in enumerate(COLUMNS)}
    mean = std = (0.5, 0.5, 0.5)
    run = functools.partial(two_view_augment, data, torch.arange(4), params, 32, mean, std, torch.bfloat16)
    run = functools.partial(run, columns=columns)
    (entry,) = recorded(monkeypatch, tmp_path, run, name="augment.jsonl")
    block = triton.next_power_of_2(32 * 32)
    assert entry["kernel"] == "augment" and entry["configs"] == [[augment_kernel._warps(block), 3]]
    assert entry["constexprs"]["S"] == 32 and entry["args"][3] == {"tensor": "bfloat16", "aligned": True}


def test_integer_and_pointer_classes():
    """The JIT's specialisations: 1, multiples of 16, others; 64-bit integers; misaligned views."""
    spec = launches.specialised
    assert [spec(1), spec(32), spec(33), spec(2**31 + 16)] == [1, 16, 17, 2**32 + 16]
    assert spec(0.25) == 0.5 and spec(True) is True
    base = torch.zeros(64)
    assert spec(base[1:])["aligned"] is False and spec(base[4:])["aligned"] is True


def test_compile_tool_rebuilds_recorded_arguments(monkeypatch):
    """tools/compile_inventory.py passes a recorded tensor as its dtype (16-byte aligned, as the
    JIT assumes of torch's allocations) or as a misaligned stand-in; scalars as recorded."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    import compile_inventory

    assert compile_inventory.argument({"tensor": "bfloat16", "aligned": True}) is torch.bfloat16
    misaligned = compile_inventory.argument({"tensor": "float32", "aligned": False})
    assert misaligned.dtype == torch.float32 and misaligned.data_ptr() % 16 != 0
    assert [compile_inventory.argument(a) for a in (17, 0.5, True)] == [17, 0.5, True]
    kernels = {"sigmoid", "sigmoid strip", "ntxent fwd", "ntxent bwd", "augment"}
    assert set(compile_inventory.KERNELS) == kernels


def test_wide_16_bit_rows_record_weight_strips(monkeypatch, tmp_path):
    """bf16 SigCLR at 2N = 65,536, D = 768 on meta tensors: the compiled launch takes weight strips
    of 4,096 rows (16 launches of the strip kernel, its one configuration, 64-feature steps, no
    interpreter upcast), which compile_inventory turns back into compile cases of that kernel."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    import compile_inventory

    run = functools.partial(self_block, meta_rows(65536, 768, torch.bfloat16), n_views=2)
    entries = recorded(monkeypatch, tmp_path, run)
    assert len(entries) == 16 and {e["kernel"] for e in entries} == {"sigmoid strip"}
    consts = entries[0]["constexprs"]
    assert (consts["BLOCK_M"], consts["BLOCK_K"], consts["UPCAST"], consts["PAIRS"]) == (128, 64, False, 0)
    assert entries[0]["configs"] == [[8, 2]]
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps({"variants": [dict(entries[0], warps=8, stages=2, sources=[])]}))
    (case,) = compile_inventory.inventory_cases(str(path))
    assert case.fn is sigmoid_strip._weight_strip_kernel and case.constexprs == consts


def test_compiled_widest_feature_tile_is_the_kernels():
    """The record's widest feature tile (sigmoid.COMPILED_MAX_BLOCK_D) is the kernel's own when
    imported for compiling (without TRITON_INTERPRET)."""
    code = (
        "from fastsigclr.kernels import sigmoid, sigmoid_kernel as k; print(k.MAX_BLOCK_D, sigmoid.INTERPRET)"
    )
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == [str(sigmoid.COMPILED_MAX_BLOCK_D), "False"], out.stderr[-2000:]
