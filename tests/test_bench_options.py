"""The list options of the bench commands: each value once, as every list option of ccem and
sweep (config.check_not_empty)."""

import pytest

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
