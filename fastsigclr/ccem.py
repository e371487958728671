"""``fastsigclr ccem``: the CCEM analysis of the sigmoid loss's optimal embeddings (docs/design.md §6).

CCEM convention: N pairs (u_i, v_i) on the unit sphere in d = N dimensions and
L = (1/N)[Σ_i log(1 + e^{−(t⟨u_i,v_i⟩ − b)}) + Σ_{i≠j} log(1 + e^{t⟨u_i,v_j⟩ − b})] (its b is minus
SigLIP's). Along the CCEM family s⁺ = 1 − 2a, s⁻ = −(1 − a)/(N − 1) − a, the optimum is the simplex ETF
(a = 0) iff 2σ(b − t) ≥ (N − 2)σ(−t/(N − 1) − b), the antipodal structure (a = 1) iff t + b ≤ ln((N − 2)/2),
and an interior a otherwise (found by minimising the loss along a). Variants measured here:

- free:    the embeddings themselves are optimised (the theorem's setting);
- encoder: two 2-layer ReLU encoders on Gaussian inputs (the paper's experiment; non-negative outputs
           cannot reach the antipodal structure);
- sigclr:  SigCLR's 2N-view loss over the same free embeddings, which the theory does not cover.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastsigclr.checkpoint import WriteError, json_text, writable_folder, write_atomic_files
from fastsigclr.config import (
    FLOAT32_MAX,
    SEED_MAX,
    FastSigCLRError,
    check_fields,
    check_not_empty,
    default_of,
    option,
    to_dict,
)
from fastsigclr.filetype import json_object
from fastsigclr.losses import sigmoid_pairwise_loss
from fastsigclr.runinfo import available_memory_bytes, run_record

VARIANTS = ("free", "encoder", "sigclr")
# Peak float64 values per N² while optimising one configuration, measured with
# bench.memory.TensorAllocations at N = 40, 80, 160 (14.1/14.05/14.03, 81.2/81.2/81.1, 30.7/30.6/30.5).
PEAK_VALUES_PER_N2 = {"free": 14.1, "encoder": 81.2, "sigclr": 30.7}
# The bound of |t| and |b|: the sigclr variant hands them to sigmoid_pairwise_loss, which makes them
# float32 tensors (--t 1e39 became inf and every loss NaN). The float64 variants would take more, up
# to where Adam's squared gradient (about t) overflows float64, t ≈ 1.3e154: from there the update is
# 0 and --t 1e300 wrote the starting similarities. The regimes' thresholds lie at t and b of the
# order of ln N, far below either bound, so the smaller one serves all three variants.
T_BIAS_MAX = FLOAT32_MAX


@dataclass(frozen=True)
class CcemConfig:
    n: tuple[int, ...] = option(
        (4, 8, 12, 20, 40), "numbers of pairs N (the dimension is d = N; the conditions involve N − 2)", ge=3
    )
    t: tuple[float, ...] = option(
        (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), "temperatures t", gt=0, le=T_BIAS_MAX
    )
    bias: tuple[float, ...] | None = option(
        None, "biases b in CCEM's convention; unset: b = t", ge=-T_BIAS_MAX, le=T_BIAS_MAX
    )
    variant: tuple[str, ...] = option(VARIANTS, "what to optimise", choices=VARIANTS)
    steps: int = option(1500, "Adam steps per configuration (cosine learning-rate decay)", ge=1)
    lr: float = option(0.05, "Adam learning rate", gt=0)
    seed: int = option(0, "random seed of the initial embeddings and encoder inputs", ge=0, le=SEED_MAX)
    out: str = option(
        "benchmarks/local/ccem", "directory for results.json, results.csv and heatmap.png", path=True
    )
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_not_empty(self, "n", "t", "variant", "bias")
        check_fields(self)


def check_memory(cfg: CcemConfig, available: int | None = None) -> None:
    """Refuse a grid whose largest N would not fit in memory, before anything is allocated."""
    available = available_memory_bytes() if available is None else available
    n = max(cfg.n)
    variant = max(cfg.variant, key=PEAK_VALUES_PER_N2.__getitem__)
    per_n2 = PEAK_VALUES_PER_N2[variant] * 8
    if per_n2 * n * n > available:
        largest = math.isqrt(int(available / per_n2))
        raise FastSigCLRError(
            f"--n {n} needs about {per_n2 * n * n / 2**30:.1f} GiB for the {variant} variant "
            f"({PEAK_VALUES_PER_N2[variant]:g}·N² float64 values), more than the "
            f"{available / 2**30:.1f} GiB available: use --n values ≤ {largest}"
        )


def cross_view_loss(u: torch.Tensor, v: torch.Tensor, t: float, b: float) -> torch.Tensor:
    """CCEM's sigmoid loss of N pairs (rows of u, v already on the unit sphere)."""
    s = u @ v.T
    off = ~torch.eye(len(u), dtype=torch.bool, device=u.device)
    return (F.softplus(-(t * s.diagonal() - b)).sum() + F.softplus(t * s[off] - b).sum()) / len(u)


def family(n: int, a: np.ndarray | float):
    """(s⁺, s⁻) along the CCEM family."""
    return 1 - 2 * a, -(1 - a) / (n - 1) - a


def _sigmoid(x: float) -> float:
    """σ(x) without overflow: math.exp(-x) overflowed at --t 1e30 (x = −1e30)."""
    if x >= 0:
        return 1 / (1 + math.exp(-x))
    e = math.exp(x)
    return e / (1 + e)


def predict(n: int, t: float, b: float) -> dict[str, Any]:
    """The optimum along the family and its regime, both by the closed-form conditions (ETF: a = 0,
    antipodal: a = 1); an interior a is the minimiser on a grid of 100,001 values of a."""
    if 2 * _sigmoid(b - t) >= (n - 2) * _sigmoid(-t / (n - 1) - b):
        regime, a = "etf", 0.0
    elif t + b <= math.log((n - 2) / 2):
        regime, a = "antipodal", 1.0
    else:
        # Only here is the loss minimised numerically. At the ends float64 lost t·s next to a large
        # |b| or a tiny t (--t 1 --bias -1e30: t·s⁻ − b rounded to −b for every a, the loss was flat,
        # and its first minimiser, a = 0, was reported for an antipodal regime); an interior optimum
        # needs ln((N − 2)/2) − t < b < max(t, ln(N − 2)), where t·s is not lost next to b.
        grid = np.linspace(0.0, 1.0, 100_001)
        s_pos, s_neg = family(n, grid)
        loss = np.logaddexp(0, -(t * s_pos - b)) + (n - 1) * np.logaddexp(0, t * s_neg - b)
        regime, a = "interior", float(grid[loss.argmin()])
    s_pos, s_neg = family(n, a)
    return {"s_pos_pred": float(s_pos), "s_neg_pred": float(s_neg), "a_pred": a, "regime": regime}


def _embeddings(variant: str, n: int, gen: torch.Generator):
    """Parameters to optimise and a function returning (u, v) before they are normalised."""
    if variant in ("free", "sigclr"):
        u = torch.randn(n, n, generator=gen, dtype=torch.float64, requires_grad=True)
        v = torch.randn(n, n, generator=gen, dtype=torch.float64, requires_grad=True)
        return [u, v], lambda: (u, v)
    hidden = 4 * n
    x = torch.randn(n, n, generator=gen, dtype=torch.float64)
    y = torch.randn(n, n, generator=gen, dtype=torch.float64)
    weights = [
        (torch.randn(shape, generator=gen, dtype=torch.float64) * math.sqrt(2 / shape[0])).requires_grad_()
        for shape in [(n, hidden), (hidden, n), (n, hidden), (hidden, n)]
    ]
    w1, w2, w3, w4 = weights

    def encode():
        u = torch.relu(torch.relu(x @ w1) @ w2)
        return u, torch.relu(torch.relu(y @ w3) @ w4)

    return weights, encode


def diverged(variant: str, n: int, t: float, b: float, cfg: CcemConfig, what: str) -> FastSigCLRError:
    """The one line of a configuration whose optimisation left float64: what, and what to change.
    Only the learning rate can be the cause: with |t|, |b| ≤ T_BIAS_MAX and rows on the unit
    sphere the float64 loss is finite, and Adam's step is about --lr at most whatever the loss's
    scale, so the rows grow past float64 (or to NaN) only when --lr is that large."""
    lower = min(cfg.lr / 10, default_of(CcemConfig, "lr"))  # 1e307 after 1e308 would diverge again
    return FastSigCLRError(
        f"the {variant} optimisation of N {n}, t {t:g}, b {b:g} diverged: {what}; no results were "
        f"written: run again with a lower --lr than {cfg.lr:g} (e.g. --lr {lower:g}): Adam moves "
        f"each weight by about --lr a step at most, whatever --t and --bias"
    )


def optimise(variant: str, n: int, t: float, b: float, cfg: CcemConfig) -> tuple[float, float]:
    """Optimise one configuration; return the measured (s⁺, s⁻). Raises ``diverged`` when a loss
    is not finite or the rows outgrow float64 (F.normalize then makes them 0, and s⁺ = s⁻ = 0)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * n)
    params, raw = _embeddings(variant, n, gen)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    for step in range(1, cfg.steps + 1):
        u, v = (F.normalize(rows, dim=1) for rows in raw())
        if variant == "sigclr":
            # 2N rows, view-major; SigLIP's bias is minus CCEM's.
            loss = sigmoid_pairwise_loss(torch.cat([u, v]), t, -b, normalize=False, impl="torch")
        else:
            loss = cross_view_loss(u, v, t, b)
        if not math.isfinite(value := loss.item()):  # a CPU scalar: no synchronisation to spare
            raise diverged(variant, n, t, b, cfg, f"the loss is {value} at step {step} of {cfg.steps}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        rows = torch.cat(raw())
        if not (norms := rows.norm(dim=1)).isfinite().all():
            worst = norms[~norms.isfinite()][0].item()
            raise diverged(variant, n, t, b, cfg, f"a row's norm is {worst} after {cfg.steps} steps")
        u, v = F.normalize(rows, dim=1).split(n)
        s = u @ v.T
        off = ~torch.eye(n, dtype=torch.bool)
        return s.diagonal().mean().item(), s[off].mean().item()


def run(cfg: CcemConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Every (variant, N, t, b) of the grid: measured and predicted similarities, written as
    results.json (with the run record), results.csv and heatmap.png under cfg.out."""
    from fastsigclr.bench.common import check_outputs

    check_memory(cfg)
    out = writable_folder(Path(cfg.out))  # before the grid's minutes, not after
    paths = [out / name for name in ("results.json", "results.csv", "heatmap.png")]
    check_outputs(paths)  # a folder where one goes: said now, not after the grid
    if paths[0].is_file() and (json_object(paths[0]) or {}).get("experiment") != "ccem":  # a sweep's
        raise FastSigCLRError(
            f"{paths[0]} exists and is not ccem's results, the only results.json ccem replaces; "
            f"choose another --out"
        )
    grid = [
        (variant, n, t, b)
        for variant in cfg.variant
        for n in cfg.n
        for t in cfg.t
        for b in (cfg.bias if cfg.bias is not None else (t,))
    ]
    record = run_record(torch.device("cpu"), command)  # what ran: taken before, not after
    rows = []
    for variant, n, t, b in tqdm(grid, desc="ccem", unit="config", disable=not cfg.progress):
        s_pos, s_neg = optimise(variant, n, t, b, cfg)
        pred = predict(n, t, b)
        rows.append(
            {
                "variant": variant,
                "N": n,
                "d": n,
                "t": t,
                "b": b,
                "s_pos": s_pos,
                "s_neg": s_neg,
                "s_pos_pred": pred["s_pos_pred"],
                "s_neg_pred": pred["s_neg_pred"],
                "regime": pred["regime"],
            }
        )
    payload = {
        "experiment": "ccem",
        **record,
        "config": to_dict(cfg),
        "rows": rows,
    }
    _write(paths, payload, cfg)
    return payload


def _write(paths: list[Path], payload: dict[str, Any], cfg: CcemConfig) -> None:
    """results.json, results.csv and heatmap.png of a finished grid (see ``run``)."""
    rows = payload["rows"]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    # The results and their table are written in full before either replaces its old one
    # (write_atomic_files), then the heatmap: a heatmap that cannot be written (a full disk) keeps
    # the grid's minutes of results and removes the previous run's heatmap, never leaving a mix.
    results = (json_text(payload, indent=2) + "\n").encode(), table.getvalue().encode()
    picture = heatmap(rows, cfg)  # drawn in memory first: a drawing that fails writes nothing
    write_atomic_files({path: _writer(data) for path, data in zip(paths, results, strict=False)})
    try:
        write_atomic_files({paths[2]: _writer(picture)})
    except WriteError as err:
        paths[2].unlink(missing_ok=True)
        raise FastSigCLRError(
            f"{str(err).rsplit('; ', 1)[0]}; the results are in {paths[0]} and {paths[1]}, without "
            f"their heatmap: {'free space' if err.no_space else 'make the folder writable'}, then run "
            f"ccem again for it"
        ) from None


def _writer(data: bytes):
    return lambda f: f.write(data)


def heatmap(rows: list[dict[str, Any]], cfg: CcemConfig) -> bytes:
    """PNG of the measured s⁺ over (N, t), one panel per variant (first bias), with the ETF and
    antipodal threshold curves of b = t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastsigclr.bench.plot import figure_png

    variants = [v for v in cfg.variant if any(r["variant"] == v for r in rows)]
    fig, axes = plt.subplots(1, len(variants) + 1, figsize=(4.2 * (len(variants) + 1), 3.8), squeeze=False)
    ns, ts = list(cfg.n), list(cfg.t)
    first_b = {r["t"]: r["b"] for r in rows}

    def grid_of(key: str, variant: str) -> np.ndarray:
        g = np.full((len(ts), len(ns)), np.nan)
        for r in rows:
            if r["variant"] == variant and r["b"] == first_b[r["t"]]:
                g[ts.index(r["t"]), ns.index(r["N"])] = r[key]
        return g

    panels = [(f"measured s⁺, {v}", grid_of("s_pos", v)) for v in variants]
    panels.append(("predicted s⁺ (CCEM)", grid_of("s_pos_pred", variants[0])))
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        image = ax.imshow(values, origin="lower", cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(ns)), [str(n) for n in ns])
        ax.set_yticks(range(len(ts)), [f"{t:g}" for t in ts])
        ax.set(xlabel="N (= d)", ylabel="t", title=title)
        if cfg.bias is None:  # threshold curves for b = t, in grid coordinates
            fine = np.linspace(min(ns), max(ns), 200)
            etf = (fine - 1) / fine * np.log(np.maximum(fine - 3, 1e-9))
            anti = 0.5 * np.log(np.maximum((fine - 2) / 2, 1e-9))
            x = np.interp(fine, ns, range(len(ns)))
            for curve, style, label in ((etf, "k-", "ETF above"), (anti, "k--", "antipodal below")):
                ok = (curve >= min(ts)) & (curve <= max(ts))
                ax.plot(x[ok], np.interp(curve[ok], ts, range(len(ts))), style, label=label)
        fig.colorbar(image, ax=ax, fraction=0.046)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(
        "CCEM: positive-pair similarity of sigmoid-loss optima" + (" (b = t)" if cfg.bias is None else "")
    )
    return figure_png(fig)
