"""Every Triton kernel compiles for Hopper (sm_90) on this CPU-only host, and the 16-bit dots of
the loss kernel lower to tensor-core instructions (wgmma). The interpreter used by the other
tests cannot see compiled-mode errors; this can."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile for real, not from a cache
    report = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "tools" / "compile_kernels.py"), "--quick", "--json", str(report)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads(report.read_text())["kernels"]
    loss = [r for r in rows if r["kernel"].split()[0] == "sigmoid" and r.get("fits_h100")]
    loss = [r for r in loss if "cross-rank" not in r["kernel"]]
    assert {r["kernel"].split()[1] for r in loss} == {"bf16", "fp16", "fp32"}
    assert all(r["wgmma"] for r in loss if r["kernel"].split()[1] != "fp32")
    cross = [r for r in rows if r["kernel"].startswith("sigmoid cross-rank") and r.get("fits_h100")]
    assert cross and all(r["wgmma"] for r in cross)
    assert len([r for r in rows if r["kernel"].startswith("augment") and "error" not in r]) == 4
    ntxent = [r for r in rows if r["kernel"].startswith("ntxent")]
    assert len(ntxent) == 6 and not any("error" in r for r in ntxent)
    assert all(r["wgmma"] for r in ntxent if "bf16" in r["kernel"])
