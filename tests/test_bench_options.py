"""The list options of the bench commands: each value once, as every list option of ccem and
sweep (config.check_not_empty)."""

import pytest
import torch

from fastsigclr.cli import main

LOSS = ["bench", "loss", "--device", "cpu", "--sizes", "8", "--dims", "4", "--reps", "1", "--warmup", "1"]
AUGMENT = ["bench", "augment", "--device", "cpu", "--sizes", "32"]
ALL = ["bench", "all", "--device", "cpu", "--quick"]


@pytest.mark.parametrize(
    "command,option,values",
    [
        ([*LOSS, "--providers", "eager,chunked"], "--providers", "chunked,chunked"),
        ([*LOSS, "--providers", "eager,chunked"], "--losses", "sigclr,sigclr"),
        ([*LOSS, "--providers", "eager,chunked"], "--dtypes", "fp32,fp32"),
        (AUGMENT, "--backends", "gpu,gpu"),
        (ALL, "--only", "loss,loss"),
    ],
)
def test_a_bench_list_option_refuses_a_value_listed_twice(command, option, values, tmp_path, capsys):
    """--providers chunked,chunked timed every case twice (--backends, --only: every backend or
    benchmark), and exited 0."""
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exc:
        main([*command, option, values, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    got = ", ".join(repr(v) for v in values.split(","))
    assert err == f"fastsigclr: error: {option} must list at least one value, each once; got [{got}]", err
    assert not out.exists()


def test_bench_augment_peak_memory_is_each_cases_own(tmp_path):
    """On the CPU the peak column was ru_maxrss, which only grows: a case measured after a larger
    one reported the larger one's peak. Each case now resets the high-water mark first."""
    import numpy as np

    from fastsigclr.bench import augment, memory

    if not memory.reset_peak_rss():
        pytest.skip("this kernel offers no reset of the peak RSS (/proc/self/clear_refs)")
    big = np.ones(400 * 2**20 // 8)  # 400 MiB resident
    before = memory.peak_rss_bytes()
    del big
    cfg = augment.BenchAugmentConfig(device="cpu", images=64, batch_size=32, reps=1, workers=0)
    row = augment.measure("gpu", 32, cfg, torch.device("cpu"), tmp_path)
    assert row["status"] == "ok" and row["peak_memory_kind"] == "peak RSS of this process during the case"
    assert row["peak_memory_bytes"] < before - 300 * 2**20, (row["peak_memory_bytes"], before)
