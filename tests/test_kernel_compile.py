"""Every Triton kernel compiles for Hopper (sm_90) on this CPU-only host, as the JIT would compile
it, with its 16-bit dots on tensor cores (wgmma); the sigmoid loss kernel's autotune candidates
that the runtime keeps meet their targets; and the committed report is what the code compiles to.
The interpreter used by the other tests cannot see any of this."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from fastsigclr.kernels.tiles import select_configs

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "benchmarks" / "results" / "kernels-sm90.json"
KIB = 1024
# Per pair of the inner loop at D = 128 (bf16): with the loss terms, without, and shared memory.
TARGETS = {"loss": 30, "no loss": 20}
MAX_SHARED = 100 * KIB
# What must match between a fresh compile and the committed report (not the compile time).
COMPILED = ("registers", "spill_store_bytes", "local_bytes", "shared_bytes", "wgmma", "sass_per_pair")
CASE = ("kernel", "variant", "dtype", "D", "BLOCK_M", "BLOCK_N", "warps", "stages")


def kept_bf16_d128(rows: list[dict]) -> list[dict]:
    return [
        r
        for r in rows
        if r["kernel"] == "sigmoid" and r["dtype"] == "bf16" and r["D"] == 128 and r.get("kept")
    ]


def assert_targets(rows: list[dict]) -> None:
    """The issue's targets for the bf16 D = 128 configs that autotune keeps."""
    kept = kept_bf16_d128(rows)
    assert {r["variant"] for r in kept} == set(TARGETS), kept
    for r in kept:
        what = f"{r['variant']} {r['BLOCK_M']}x{r['BLOCK_N']} w{r['warps']} s{r['stages']}"
        assert r["spill_store_bytes"] == 0 and r["local_bytes"] == 0, what
        assert r["shared_bytes"] <= MAX_SHARED, what
        assert r["sass_per_pair"] <= TARGETS[r["variant"]], what
        assert r["wgmma"], what


@pytest.mark.slow
def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "tools" / "compile_kernels.py"), "--quick", "--json", str(report)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads(report.read_text())["kernels"]
    assert not [r for r in rows if "error" in r]
    assert len([r for r in rows if r["kernel"] == "augment"]) == 4
    ntxent = [r for r in rows if r["kernel"].startswith("ntxent")]
    assert len(ntxent) == 6 and all(r["wgmma"] for r in ntxent if r["dtype"] == "bf16")
    loss = [r for r in rows if r["kernel"].startswith("sigmoid") and r["launchable"]]
    assert {r["dtype"] for r in loss} == {"bf16", "fp16", "fp32 ieee", "fp32 tf32", "fp32 bf16-operands"}
    # Tensor cores: wgmma from 64 rows up, mma.sync below (wgmma takes 64 rows per warpgroup).
    assert all(r["wgmma"] if r["BLOCK_M"] >= 64 else r["mma"] for r in loss if r["dtype"] != "fp32 ieee")
    assert any(r["kernel"] == "sigmoid cross-rank" for r in loss)
    # Every bf16 D = 128 candidate of the planned 128-row tile (1: 8 warps, 2 stages), with and
    # without the loss terms.
    assert len([r for r in rows if r["kernel"] == "sigmoid" and r["dtype"] == "bf16" and r["D"] == 128]) == 2
    assert_targets(rows)
    committed = json.loads(COMMITTED.read_text())
    if committed["triton"] == triton.__version__:
        saved = {tuple(r.get(k) for k in CASE): r for r in committed["kernels"]}
        for r in rows:
            key = tuple(r.get(k) for k in CASE)
            assert key in saved, f"{key} is not in {COMMITTED.name}: regenerate it"
            assert {k: r.get(k) for k in COMPILED} == {k: saved[key].get(k) for k in COMPILED}, (
                f"{key}: {COMMITTED.name} is stale; regenerate it with tools/compile_kernels.py"
            )


def test_committed_report_meets_the_targets():
    report = json.loads(COMMITTED.read_text())
    assert report["arch"] == 90 and not report["quick"]
    assert_targets(report["kernels"])


def test_config_selection():
    """What the autotuner times: configs that fit without spilling, of 64 rows or more (wgmma);
    if there are none, all that fit; nothing when none fits (the launcher then raises)."""
    limit = 227 * KIB
    fit, spill, big = ("fit", 64, 80 * KIB, 0), ("spill", 64, 80 * KIB, 96), ("big", 128, 240 * KIB, 0)
    small = ("small", 32, 20 * KIB, 0)
    assert select_configs([fit, spill, big, small], limit, min_rows=64) == ["fit"]
    assert select_configs([fit, spill, big, small], limit) == ["fit", "small"]
    assert select_configs([spill, big, small], limit, min_rows=64) == ["spill", "small"]
    assert select_configs([big], limit) == []


def test_ntxent_widest_launches_fit_in_shared_memory():
    """NT-Xent has no autotuner to prune a config that does not fit: its launcher's widest feature
    tile (its shared memory grows with the tile's width and element size) is compiled for bf16 and
    fp32, both as one tile and as several, and every pass fits in the 232,448 bytes of an sm_90 block.
    A 256-wide tile needed 238,080 (bf16, D = 256) to 344,064 bytes (fp32, D = 130)."""
    from fastsigclr.kernels import ntxent
    from fastsigclr.kernels.tiles import feature_tiling

    widest = feature_tiling(1 << 20, ntxent.MAX_FEATURE_TILE)[0]
    rows = [r for r in json.loads(COMMITTED.read_text())["kernels"] if r["kernel"].startswith("ntxent")]
    for dtype in ("bf16", "fp32"):
        for kernel, variant in (
            ("ntxent fwd", None),
            *(("ntxent bwd", f"transposed={t}") for t in (False, True)),
        ):
            found = [
                r
                for r in rows
                if (r["kernel"], r.get("variant"), r["dtype"], r.get("BLOCK_K"))
                == (kernel, variant, dtype, widest)
            ]
            assert {r["D"] > widest for r in found} == {False, True}, (kernel, variant, dtype)
            assert all(r["shared_bytes"] <= 227 * KIB for r in found), found


def test_cost_model_per_pair(monkeypatch):
    """The model's arithmetic on one row: issue 24/128, MUFU 2/16, tensor 4·128 FLOPs / 4096 per
    clock (bf16); the largest bounds the loop; (2N)² pairs over 132 SMs at 1.83 GHz."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import cost_model

    # The clock that the tensor-core peak implies: 989.4 TFLOP/s dense bf16 over 132 SMs × 4096.
    assert abs(989.4e12 / (132 * 4096 * 1.83e9) - 1) < 1e-3
    row = {"kernel": "sigmoid", "dtype": "bf16", "D": 128, "sass_per_pair": 24.0, "mufu_per_pair": 2.0}
    m = cost_model.model(row)
    assert m["cycles_per_pair"] == {"issue": 0.1875, "mufu": 0.125, "tensor": 0.125} and m["bound"] == "issue"
    want = 65536**2 * 0.1875 / (132 * 1.83e9) * 1e6
    assert abs(m["predicted_us"]["H100 SXM 2N=65536"] - want) <= 0.05
    assert cost_model.model({**row, "dtype": "fp32 ieee"})["cycles_per_pair"]["tensor"] == 0
    tf32 = cost_model.model({**row, "dtype": "fp32 tf32", "sass_per_pair": 8.0})
    assert tf32["bound"] == "tensor" and tf32["cycles_per_pair"]["tensor"] == 0.25
    assert cost_model.model({"kernel": "augment", "dtype": "bf16", "D": 0}) is None


def test_committed_report_records_its_run_and_the_model():
    report = json.loads(COMMITTED.read_text())
    for key in ("date", "command", "commit", "versions", "compiled_on", "cost_model"):
        assert report.get(key), key
    counted = [r for r in report["kernels"] if "sass_per_pair" in r and "error" not in r]
    assert counted and all(
        set(r["model"]["predicted_us"]) >= {"H100 SXM 2N=8192", "H200 SXM 2N=65536"} for r in counted
    )


def test_nested_loop_counts_feature_loops_per_trip(monkeypatch):
    """A column loop (0x10-0x60) holding a feature loop (0x20-0x40) run 4 times: the outer body's 6
    instructions once, the inner 3 (one MUFU) 3 more times."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import compile_kernels

    sass = ["MOV", "A", "B", "MUFU.EX2", "BRA 0x20", "C", "BRA 0x10", "EXIT"]
    listing = [(16 * i, text) for i, text in enumerate(sass)]
    assert compile_kernels.nested_loop(listing, 4) == (6 + 3 * 3, 1 + 3)
    assert compile_kernels.nested_loop(listing[:5], 4) == (0, 0)  # one loop: nothing nested


def test_nested_loop_picks_the_column_loop(monkeypatch):
    """Of the loops holding loops, the column loop: innermost (not the persistent loop around it)
    and with matrix instructions (not a smaller correction loop over feature slices)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import compile_kernels

    sass = ["MOV", "HGMMA", "A", "HGMMA", "BRA 0x20", "B", "BRA 0x10"]  # column loop 0x10-0x60
    sass += ["C", "D", "BRA 0x80", "BRA 0x70", "BRA 0x0", "EXIT"]  # correction loop, persistent loop
    listing = [(16 * i, text) for i, text in enumerate(sass)]
    assert compile_kernels.nested_loop(listing, 4) == (6 + 3 * 3, 0)


def test_spill_instructions_are_found_per_loop(monkeypatch):
    """LDL/STL in the feature loop (0x20-0x40) and in the column loop's own code (0x10-0x70) on its
    cheapest path (a reload in the block a predicated branch skips is not counted per tile), and
    none outside the column loop: a store before it is not a reload."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import compile_kernels

    sass = ["STL [R1], R2", "LDL R4, [R1]", "HGMMA", "@P0 LDL R5, [R1]", "BRA 0x20", "@P1 BRA 0x70"]
    sass += ["LDL R6, [R1]", "BRA 0x10", "EXIT"]
    listing = [(16 * i, text) for i, text in enumerate(sass)]
    found = compile_kernels.spill_instructions(listing)
    assert found == {"spill_ops_feature_loop": 1, "spill_ops_per_tile": 1}, found
    assert compile_kernels.spill_instructions(listing[:5]) == {}  # one loop: no nest


def test_committed_report_has_no_spills_in_feature_loops():
    """Every case with a column loop around feature loops (the fused kernel's wide path, the weight
    strips): no local-memory load or store inside a feature loop, whatever its spill bytes; the
    strips' spills are loop-invariant values stored before the column loop and reloaded at most
    16 times per tile (0.25 per pair of a 128 × 128 tile over 256 threads)."""
    rows = [r for r in json.loads(COMMITTED.read_text())["kernels"] if "feature_trips" in r]
    assert len(rows) >= 24
    for r in rows:
        what = (r["kernel"], r["variant"], r["dtype"], r["D"])
        assert r["spill_ops_feature_loop"] == 0, what
        assert r["spill_ops_per_tile"] <= (16 if r["spill_store_bytes"] else 0), what


def test_siglip_kernel_report_is_modelled():
    """benchmarks/results/siglip-kernel-sm90.json: the baseline compiled for sm_90 at B = 65,536,
    D = 128 and 768, with per-pair counts and the model, and its run recorded."""
    report = json.loads((COMMITTED.parent / "siglip-kernel-sm90.json").read_text())
    assert report["command"].startswith("tools/compile_kernels.py --only siglip-kernel") and report["commit"]
    rows = {r["D"]: r for r in report["kernels"]}
    assert set(rows) == {128, 768} and all(r["wgmma"] and r["model"] for r in rows.values())


def test_committed_report_large_d_in_one_pass():
    """bf16 SigCLR past one feature tile (D = 256-1024), with and without the loss terms: no
    spills, a per-pair count of the whole loop nest, and SASS per pair growing linearly in D (each
    256 more features add the same count within 10%: the feature loops, S formed once per tile),
    the tensor term 4·D FLOPs per pair."""
    rows = json.loads(COMMITTED.read_text())["kernels"]
    for variant in ("loss", "no loss"):
        found = {
            r["D"]: r
            for r in rows
            if (r["kernel"], r.get("variant"), r["dtype"]) == ("sigmoid", variant, "bf16") and r["D"] >= 256
        }
        assert set(found) == {256, 512, 768, 1024}, variant
        for d, r in found.items():
            assert r["spill_store_bytes"] == 0 and r["local_bytes"] == 0, (variant, d)
            assert r["model"]["cycles_per_pair"]["tensor"] == 4 * d / 4096, (variant, d)
        sass = [found[d]["sass_per_pair"] for d in (256, 512, 768, 1024)]
        steps = [b - a for a, b in itertools.pairwise(sass)]
        assert min(steps) > 0 and max(steps) <= 1.1 * min(steps), (variant, sass)


def test_cost_model_meets_the_h200s_two_tower_timings():
    """The committed report's model of SigLIP's one-sweep two-tower kernel (bf16, 128 × 128 tiles,
    B = 65,536) against the H200's medians of it, D = 128 and 768: within 10%. The model's
    GRADIENT_ADD_TB_S is fitted to these two (their mean rate), so this checks that one rate serves
    both and that the report and the formula still give it, not the rate itself; without that term
    the model had predicted 4.4× and 7.7× too little."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import cost_model
    finally:
        sys.path.remove(str(ROOT / "tools"))
    ours = json.loads(COMMITTED.read_text())["kernels"]
    bench = ROOT / "benchmarks" / "results" / "gpu-2026-12-04" / "siglip-head-to-head-cuda.json"
    timed = {
        r["dim"]: r["median_ms"]
        for r in json.loads(bench.read_text())["results"]
        if r["provider"] == "triton" and r["rows"] == 131072
    }
    for d in (128, 768):
        mine = cost_model.best(ours, kernel="sigmoid two-tower", variant="loss", dtype="bf16", D=d)
        assert mine["model"]["time_bound"] == ["gradient adds"], d
        predicted_ms = mine["model"]["predicted_us"]["H200 SXM 2N=65536"] / 1e3
        assert abs(predicted_ms / timed[d] - 1) <= 0.10, (d, predicted_ms, timed[d])


def test_an_inventory_variant_compiles_and_is_timed(tmp_path):
    """tools/compile_kernels.py --inventory on one variant of the committed launch inventory (the
    GPU suite's first stage): compiled for sm_90, its seconds reported and summed."""
    inventory = json.loads((ROOT / "benchmarks" / "results" / "stage1-launches.json").read_text())
    variant = next(v for v in inventory["variants"] if v["kernel"] == "ntxent fwd")
    one = tmp_path / "inventory.json"
    one.write_text(json.dumps({**inventory, "variants": [variant], "variant_count": 1}))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "compile_kernels.py"),
        "--inventory",
        str(one),
        "--json",
        str(report),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    written = json.loads(report.read_text())
    (row,) = written["kernels"]
    assert row["constexprs"] == variant["constexprs"] and row["shared_bytes"] > 0 and "error" not in row
    assert written["compile_seconds"] == row["seconds"] > 0 and written["variants"] == 1
    assert "1 variants" in out.stdout and "within the budget of 82.5 s" in out.stdout
    assert row["cpu_seconds"] > 0


def test_weight_strips_are_compiled_and_modelled(monkeypatch):
    """The weight-strip kernel past one feature tile (kernels/sigmoid_strip.py) in the committed
    report: every case on wgmma, no gradient adds, without the loss terms no spills (two towers) or
    few (SigCLR); its block (kernel, then the matmuls at MATMUL_TFLOP_S) for SigLIP at B = 65,536,
    D = 768 on an H200 is under a quarter of the one pass's measured 154.3 ms and not under the floor
    that the measured matmul rate sets for its 6·B²·D FLOPs (a model that beat that floor would be
    wrong)."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    import cost_model

    rows = [r for r in json.loads(COMMITTED.read_text())["kernels"] if cost_model.is_strip(r)]
    found = {(r["kernel"], r["variant"], r["D"]): r for r in rows}
    kernels = ("sigmoid weight strip", "sigmoid weight strip two-tower")
    assert set(found) == set(itertools.product(kernels, ("loss", "no loss"), (128, 256, 768, 1024)))
    for (kernel, variant, _), r in found.items():
        assert r["wgmma"] and r["model"]["gradient_bytes_per_pair"] == 0
        # Without the loss terms no spills for two towers; SigCLR's kernel (the tile's branch, the
        # column start and square) keeps 48 bytes, 8 reloads per tile, and may not grow past 64.
        limit = 0 if "two-tower" in kernel else 64
        assert variant == "loss" or (r["spill_store_bytes"] <= limit and r["local_bytes"] <= limit)
    b = 65536
    block_ms = found[(kernels[1], "loss", 768)]["model"]["block_us"]["H200 SXM 2N=65536"] / 1e3
    floor_ms = 6 * b * b * 768 / (cost_model.MATMUL_TFLOP_S * 1e12) * 1e3
    assert floor_ms <= block_ms <= 154.33 / 4, (block_ms, floor_ms)
    assert cost_model.strip_product_flops(found[(kernels[0], "loss", 256)]) == 2 * 256


def test_strips_dispatch_agrees_with_the_model():
    """strips_wanted hands SigCLR's bf16 launches to the weight strips past D = 128 only: modelled
    on an H200 at 2N = 65,536 (committed report), the strips' block (their kernel, then the products,
    which at D = 128 their weights' reads bound) is slower than the fused kernel at D = 128 and
    faster at D = 256, with and without the loss terms."""
    rows = json.loads(COMMITTED.read_text())["kernels"]
    key = "H200 SXM 2N=65536"
    for variant in ("loss", "no loss"):
        fused = {}
        for r in rows:  # the fused kernel's configs that the runtime keeps (or its one config)
            if (r["kernel"], r.get("variant"), r["dtype"]) == ("sigmoid", variant, "bf16") and (
                r.get("kept") or not r.get("candidate")
            ):
                fused[r["D"]] = min(fused.get(r["D"], math.inf), r["model"]["predicted_us"][key])
        strips = {
            r["D"]: r["model"]["block_us"][key]
            for r in rows
            if (r["kernel"], r.get("variant")) == ("sigmoid weight strip", variant)
        }
        assert strips[128] > fused[128] and strips[256] < fused[256], (variant, strips, fused)


@pytest.mark.parametrize("d,wanted", [(128, False), (129, True), (256, True)])
def test_the_dispatch_rule_is_the_one_the_model_agrees_with(d, wanted, tmp_path, monkeypatch):
    """strips_wanted itself, as a CUDA launch decides it (a recorded launch on CPU tensors): bf16
    SigCLR rows take the strips past D = 128 only, the rule the model's test above checks; with
    a plan's tiles given, or in fp32, they stay with the fused kernel."""
    import torch

    from fastsigclr.kernels import launches, sigmoid_strip

    if not sigmoid_strip.mm_has_out_dtype():
        pytest.skip("this torch has no mm(out_dtype): the strips are never wanted")
    monkeypatch.setenv(launches.RECORD_ENV, str(tmp_path / "launches.jsonl"))
    rows = torch.zeros(8, d, dtype=torch.bfloat16)
    assert sigmoid_strip.strips_wanted(rows, rows, {}) is wanted
    assert not sigmoid_strip.strips_wanted(rows, rows, {"block_m": 64})
    assert not sigmoid_strip.strips_wanted(rows.float(), rows.float(), {})


def test_warp_specialization_is_not_applied_on_sm90(tmp_path):
    """The weight-strip kernel's feature loop with tl.range(warp_specialize=True), compiled by this
    triton (tools/warp_specialize.py): for sm_90 no partitions and the same registers and SASS as
    without, so the cost model has nothing to change; sm_100 splits the loop into partitions. As
    the committed benchmarks/results/warp-specialize-sm90.json records; a triton that starts to
    specialize on Hopper fails here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "ws.json"
    cmd = [sys.executable, str(ROOT / "tools" / "warp_specialize.py"), "--json", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    committed = json.loads((COMMITTED.parent / "warp-specialize-sm90.json").read_text())["rows"]
    fields = ("specialized_loops", "partitions", "setmaxnreg", "warps", "registers", "sass_per_pair")
    assert [{k: r.get(k) for k in fields} for r in rows] == [{k: r.get(k) for k in fields} for r in committed]
    for variant in ("loss", "no loss"):
        off, on = ({k: r.get(k) for k in fields} for r in rows if (r["arch"], r["variant"]) == (90, variant))
        assert off == on and on["specialized_loops"] == 0 and on["partitions"] == [], variant
    assert {(r["arch"], r["warp_specialize"]) for r in rows if r["specialized_loops"]} == {(100, True)}
    assert all(r["partitions"] for r in rows if r["specialized_loops"])
