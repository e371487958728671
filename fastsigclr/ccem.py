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

from fastsigclr.checkpoint import json_text, writable_folder, write_text_atomic
from fastsigclr.config import SEED_MAX, FastSigCLRError, check_fields, check_not_empty, option, to_dict
from fastsigclr.losses import sigmoid_pairwise_loss
from fastsigclr.runinfo import available_memory_bytes, run_record

VARIANTS = ("free", "encoder", "sigclr")
# Peak float64 values per N² while optimising one configuration, measured with
# bench.memory.TensorAllocations at N = 40, 80, 160 (14.1/14.05/14.03, 81.2/81.2/81.1, 30.7/30.6/30.5).
PEAK_VALUES_PER_N2 = {"free": 14.1, "encoder": 81.2, "sigclr": 30.7}


@dataclass(frozen=True)
class CcemConfig:
    n: tuple[int, ...] = option(
        (4, 8, 12, 20, 40), "numbers of pairs N (the dimension is d = N; the conditions involve N − 2)", ge=3
    )
    t: tuple[float, ...] = option((0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0), "temperatures t", gt=0)
    bias: tuple[float, ...] | None = option(None, "biases b in CCEM's convention; unset: b = t")
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
    """The optimum along the family (minimised on a grid of 100,001 values of a) and the regime by
    the closed-form conditions."""
    a = np.linspace(0.0, 1.0, 100_001)
    s_pos, s_neg = family(n, a)
    loss = np.logaddexp(0, -(t * s_pos - b)) + (n - 1) * np.logaddexp(0, t * s_neg - b)
    best = int(loss.argmin())
    if 2 * _sigmoid(b - t) >= (n - 2) * _sigmoid(-t / (n - 1) - b):
        regime = "etf"
    elif t + b <= math.log((n - 2) / 2):
        regime = "antipodal"
    else:
        regime = "interior"
    return {
        "s_pos_pred": float(s_pos[best]),
        "s_neg_pred": float(s_neg[best]),
        "a_pred": float(a[best]),
        "regime": regime,
    }


def _embeddings(variant: str, n: int, gen: torch.Generator):
    """Parameters to optimise and a function returning (u, v) on the unit sphere."""
    if variant in ("free", "sigclr"):
        u = torch.randn(n, n, generator=gen, dtype=torch.float64, requires_grad=True)
        v = torch.randn(n, n, generator=gen, dtype=torch.float64, requires_grad=True)
        return [u, v], lambda: (F.normalize(u, dim=1), F.normalize(v, dim=1))
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
        v = torch.relu(torch.relu(y @ w3) @ w4)
        return F.normalize(u, dim=1), F.normalize(v, dim=1)

    return weights, encode


def optimise(variant: str, n: int, t: float, b: float, cfg: CcemConfig) -> tuple[float, float]:
    """Optimise one configuration; return the measured (s⁺, s⁻)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * n)
    params, embed = _embeddings(variant, n, gen)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    for _ in range(cfg.steps):
        u, v = embed()
        if variant == "sigclr":
            # 2N rows, view-major; SigLIP's bias is minus CCEM's.
            loss = sigmoid_pairwise_loss(torch.cat([u, v]), t, -b, normalize=False, impl="torch")
        else:
            loss = cross_view_loss(u, v, t, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        u, v = embed()
        s = u @ v.T
        off = ~torch.eye(n, dtype=torch.bool)
        return s.diagonal().mean().item(), s[off].mean().item()


def run(cfg: CcemConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Every (variant, N, t, b) of the grid: measured and predicted similarities, written as
    results.json (with the run record), results.csv and heatmap.png under cfg.out."""
    check_memory(cfg)
    out = writable_folder(Path(cfg.out))  # before the grid's minutes, not after
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
    write_text_atomic(out / "results.json", json_text(payload, indent=2) + "\n")
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "results.csv", table.getvalue())
    plot_heatmap(rows, cfg, out / "heatmap.png")
    return payload


def plot_heatmap(rows: list[dict[str, Any]], cfg: CcemConfig, path: Path) -> None:
    """Measured s⁺ over (N, t), one panel per variant (first bias), with the ETF and antipodal
    threshold curves of b = t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastsigclr.bench.plot import save_figure

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
    save_figure(fig, path)
