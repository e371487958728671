"""Which differences between a sweep's settings its seeds support: Welch's t-test on the per-seed
accuracies of two settings, and Holm's step-down correction over the family of comparisons a
report draws (``COMPARISONS``), so that about ten tests at α = 0.05 do not pass one by chance.

The two-sided p-value of Student's t with ν degrees of freedom (ν need not be an integer, as
Welch's is) is the regularised incomplete beta I_x(ν/2, 1/2) at x = ν / (ν + t²), evaluated here
by its continued fraction (no SciPy dependency for one function)."""

from __future__ import annotations

import math
import statistics
from typing import Any

# (setting a, setting b, metric): the comparisons docs/quality/README.md draws, a − b.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("sigclr", "simclr", "knn_acc"),
    ("sigclr", "simclr", "linear_acc"),
    ("sigclr-fixed-b0", "sigclr", "knn_acc"),
    ("sigclr-fixed-b0", "sigclr", "linear_acc"),
    ("sigclr-fixed-b-10", "sigclr", "knn_acc"),
    ("sigclr-fixed-b-10", "sigclr", "linear_acc"),
    ("sigclr-learnable-t", "sigclr", "knn_acc"),
    ("sigclr-learnable-t", "sigclr", "linear_acc"),
    ("tcl", "supcon", "knn_acc"),
    ("tcl", "supcon", "linear_acc"),
    ("supcon", "sigclr", "knn_acc"),
    ("supcon", "sigclr", "linear_acc"),
)
METRIC_NAMES = {"knn_acc": "kNN", "linear_acc": "linear"}


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated with the modified Lentz method; converges
    fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch(a: list[float], b: list[float]) -> dict[str, float | None]:
    """Welch's t-test of mean(a) − mean(b): the difference, t, the Welch–Satterthwaite degrees
    of freedom and the two-sided p-value. Needs two or more values on each side; with no spread on
    either side t, df and p are None (a sweep at chance on every seed divided by zero)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:  # every seed alike on both sides (all at chance, say): no t, no test
        return {"diff": diff, "t": None, "df": None, "p": None}
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = diff / se
    return {"diff": diff, "t": t, "df": df, "p": t_two_sided_p(t, df)}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (in the given order): the k-th smallest is multiplied by
    (m − k + 1), then made monotone; reject where the adjusted value is below α."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def compare(runs: list[dict[str, Any]], comparisons=COMPARISONS) -> list[dict[str, Any]]:
    """The comparisons whose two settings both have two or more finished seeds, each with its
    Welch test and Holm-adjusted p-value over those present."""
    rows = []
    for a, b, metric in comparisons:
        values = [[r[metric] for r in runs if r["setting"] == s and metric in r] for s in (a, b)]
        if min(map(len, values)) >= 2:
            rows.append({"a": a, "b": b, "metric": metric, **welch(*values)})
    tested = [r for r in rows if r["p"] is not None]  # Holm's correction over the tests made
    for row in rows:
        row["p_holm"] = None
    for row, adjusted in zip(tested, holm([r["p"] for r in tested]), strict=True):
        row["p_holm"] = adjusted
    return rows


def markdown(rows: list[dict[str, Any]], alpha: float = 0.05) -> list[str]:
    """A results.md section: one line per comparison, in percentage points."""
    if not rows:
        return []
    lines = [
        f"Welch's t-tests over seeds (difference a − b in points; Holm's correction over the "
        f"{sum(r['p'] is not None for r in rows)} comparisons tested, α = {alpha}):",
        "",
        "| a | b | metric | a − b | t | df | p | Holm p | holds |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["p"] is None:
            tail = "| – | – | – | – | no test: every seed alike on both sides |"
        else:
            holds = "yes" if r["p_holm"] < alpha else "no"
            tail = f"| {r['t']:.2f} | {r['df']:.1f} | {r['p']:.2g} | {r['p_holm']:.2g} | {holds} |"
        name = METRIC_NAMES.get(r["metric"], r["metric"])
        lines.append(f"| {r['a']} | {r['b']} | {name} | {100 * r['diff']:+.2f} {tail}")
    return lines
