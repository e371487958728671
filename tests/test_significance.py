"""Welch's t-test and Holm's correction behind the sweep's comparisons (docs/quality/README.md)."""

import json
import math
from pathlib import Path

import pytest

from fastsigclr.significance import compare, holm, t_two_sided_p, welch

ROOT = Path(__file__).resolve().parents[1]


def _t_density_tail(t: float, df: float, n: int = 200_000) -> float:
    """2·∫_|t|^∞ of Student's density, by the midpoint rule after u = 1/(1 + x): an independent
    reference for the incomplete-beta route."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    hi = 1.0 / (1.0 + abs(t))
    total = 0.0
    for i in range(n):
        u = (i + 0.5) * hi / n
        x = 1.0 / u - 1.0
        total += math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df)) / (u * u)
    return 2 * total * hi / n


@pytest.mark.parametrize(
    "t,df,p",
    [(12.7062047, 1, 0.05), (2.7764451, 4, 0.05), (4.6040949, 4, 0.01), (2.0, 10, 0.07338803), (0.0, 3, 1.0)],
)
def test_t_p_values_match_the_tables(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, rel=1e-6)


@pytest.mark.parametrize("t,df", [(1.3, 2.4), (4.2, 3.7), (9.0, 2.05), (0.4, 7.3)])
def test_t_p_values_at_fractional_df_match_integration(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(_t_density_tail(t, df), rel=1e-5)


def test_welch_by_hand():
    # a: mean 2, var 1; b: mean 5, var 4; n = 3 each: se² = 1/3 + 4/3, df = (5/3)² / ((1/9 + 16/9) / 2).
    r = welch([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    assert r["diff"] == pytest.approx(-3.0)
    assert r["t"] == pytest.approx(-3.0 / math.sqrt(5 / 3))
    assert r["df"] == pytest.approx((25 / 9) / (17 / 18))


def test_holm_steps_down_and_stays_monotone():
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])


def test_the_committed_sweeps_comparisons():
    runs = json.loads((ROOT / "docs" / "quality" / "results.json").read_text())["runs"]
    rows = {(r["a"], r["b"], r["metric"]): r for r in compare(runs)}
    assert len(rows) == 12
    b0 = rows[("sigclr-fixed-b0", "sigclr", "knn_acc")]
    assert b0["diff"] == pytest.approx(-0.154, abs=5e-4) and b0["p_holm"] < 0.05
    same = rows[("sigclr", "simclr", "knn_acc")]
    assert same["p"] > 0.3 and same["p_holm"] == 1.0


def test_no_spread_on_either_side_is_no_test_and_the_report_is_written():
    """Every seed at chance on both sides (a smoke sweep): welch divided by zero and the sweep
    stopped at its report, at every rerun. Such a row has no t, df or p, and Holm's correction
    counts only the rows tested."""
    from fastsigclr.significance import markdown

    assert welch([0.1, 0.1], [0.1, 0.1]) == {"diff": 0.0, "t": None, "df": None, "p": None}
    runs = [{"setting": s, "linear_acc": v} for s, v in [("sigclr", 0.1), ("sigclr", 0.1), ("simclr", 0.1),
                                                          ("simclr", 0.1)]]  # fmt: skip
    runs += [{"setting": "sigclr", "knn_acc": v} for v in (0.2, 0.3)]
    runs += [{"setting": "simclr", "knn_acc": v} for v in (0.1, 0.15)]
    rows = compare(runs, [("sigclr", "simclr", "linear_acc"), ("sigclr", "simclr", "knn_acc")])
    assert rows[0]["p"] is None and rows[0]["p_holm"] is None
    assert rows[1]["p"] is not None and rows[1]["p_holm"] == rows[1]["p"]  # one test: Holm leaves it
    lines = markdown(rows)
    assert "correction over the 1 comparisons tested" in lines[0]
    assert lines[-2].endswith("| +0.00 | – | – | – | – | no test: every seed alike on both sides |")
    json.dumps(rows, allow_nan=False)  # nothing for results.json to refuse
