"""The list options of `fastsigclr bench loss`: each value once, as every list option of ccem,
sweep and the other bench commands (config.check_not_empty)."""

import pytest

from fastsigclr.cli import main

LOSS = ["bench", "loss", "--device", "cpu", "--sizes", "8", "--dims", "4", "--reps", "1", "--warmup", "1"]


@pytest.mark.parametrize(
    "option,values",
    [("--providers", "chunked,chunked"), ("--losses", "sigclr,sigclr"), ("--dtypes", "fp32,fp32")],
)
def test_bench_loss_refuses_a_value_listed_twice(option, values, tmp_path, capsys):
    """--providers chunked,chunked timed every case twice, and exited 0."""
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exc:
        main([*LOSS, "--providers", "eager,chunked", option, values, "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    got = ", ".join(repr(v) for v in values.split(","))
    assert err == f"fastsigclr: error: {option} must list at least one value, each once; got [{got}]", err
    assert not out.exists()
