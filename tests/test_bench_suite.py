"""`fastsigclr bench all` end to end on the CPU (its --quick sizes): one summary JSON with every
figure and the run's record, and each benchmark's own JSON and plot."""

import json

from fastsigclr.cli import main


def test_bench_all_writes_its_json_and_plots(tmp_path):
    assert main(["bench", "all", "--quick", "--data", "synthetic", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "all-cpu.json").read_text())
    assert summary["benchmark"] == "all" and summary["device"]["type"] == "cpu"
    assert summary["versions"]["torch"] and "commit" in summary and summary["date"] and summary["command"]
    kinds = {row["benchmark"] for row in summary["figures"]}
    assert kinds == {"loss", "augment", "train", "dist"}
    for row in summary["figures"]:
        assert row["median"] > 0 and row["p20"] <= row["median"] <= row["p80"], row
    for name in ("loss", "augment", "train"):
        assert (tmp_path / f"{name}-cpu.json").is_file() and (
            tmp_path / f"{name}-cpu.png"
        ).stat().st_size > 1000
    augment = json.loads((tmp_path / "augment-cpu.json").read_text())
    ok = {r["backend"]: r for r in augment["results"] if r["status"] == "ok"}
    assert set(ok) == {"gpu", "dali", "ffcv", "pil"}  # every backend is installed in CI
    assert all("speedup_vs_pil" in r for r in ok.values()) and ok["pil"]["speedup_vs_pil"] == 1.0
    assert summary["train_data"] == "synthetic"
    dist = json.loads((tmp_path / "dist-cpu.json").read_text())
    assert {r["provider"] for r in dist["results"]} == {"plain", "ring", "gather"}
