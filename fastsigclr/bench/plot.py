"""Plots drawn from benchmark results files (the data is the record; plots are derived)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FormatStrFormatter, LogFormatter

from fastsigclr.bench.common import check_outputs
from fastsigclr.bench.results_check import problem
from fastsigclr.checkpoint import write_atomic
from fastsigclr.config import FastSigCLRError
from fastsigclr.filetype import json_loads

COLORS = {
    "eager": "tab:gray",
    "compiled": "tab:blue",
    "chunked": "tab:orange",
    "triton": "tab:red",
    "triton-fused": "tab:pink",
    "triton-tall-strips": "tab:olive",
    "open_clip": "tab:green",
    "siglip-kernel": "tab:purple",
}
MARKERS = ["o", "s", "^", "D", "v"]
# By training method; "sigmoid" and "nt_xent" name them in results written before the registry.
LOSS_NAMES = {
    "sigclr": "sigmoid (SigCLR)",
    "simclr": "NT-Xent (SimCLR)",
    "siglip": "two-tower sigmoid (SigLIP)",
    "sigmoid": "sigmoid (SigCLR)",
    "nt_xent": "NT-Xent (SimCLR)",
}
TIME_LABEL = "forward + backward, median (ms)"


def _device_name(payload: dict[str, Any]) -> str:
    return payload.get("device", {}).get("name", "?")


def _plain_log_labels(axis) -> None:
    """Numbers (60, 200) rather than powers (6×10¹) on a log axis, some minor ticks labelled too."""
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def _loss_panel(ax_t, ax_m, rows: list[dict[str, Any]], payload: dict[str, Any]) -> None:
    """One loss and dtype: time and memory against 2N, a line per provider and D, and the time
    the measured matmul rate would take for the loss's own matrix work (dashed; bench.loss's
    useful_flops: 4·(2N)²·D, SigLIP's two towers 6·B²·D)."""
    from fastsigclr.bench.loss import useful_flops

    dims = sorted({r["dim"] for r in rows})
    for i, dim in enumerate(dims):
        marker = MARKERS[i % len(MARKERS)]
        for provider, color in COLORS.items():
            sel = sorted(
                (r for r in rows if r["provider"] == provider and r["dim"] == dim), key=lambda r: r["rows"]
            )
            if not sel:
                continue
            style = dict(color=color, marker=marker, label=f"{provider} D={dim}")
            ax_t.plot([r["rows"] for r in sel], [r["median_ms"] for r in sel], **style)
            mem = [(r["rows"], r["peak_extra_bytes"] / 2**20) for r in sel if r["peak_extra_bytes"]]
            if mem:
                ax_m.plot(*zip(*mem, strict=True), **style)
        rate = payload.get("matmul_tflops", {}).get(rows[0]["dtype"])
        sizes = sorted({r["rows"] for r in rows if r["dim"] == dim})
        if rate and sizes:
            loss = rows[0].get("loss", "sigmoid")
            floor = [useful_flops(loss, n, dim) / (rate * 1e12) * 1e3 for n in sizes]
            ax_t.plot(sizes, floor, "k--", marker=marker, lw=1, ms=3, label=f"at the matmul rate D={dim}")


def plot_loss(payload: dict[str, Any], path: Path) -> None:
    """A row of panels per (loss, dtype): fwd+bwd median time and peak extra memory against 2N."""
    rows = [r for r in payload["results"] if r["status"] == "ok"]
    order = [*LOSS_NAMES, *sorted({r.get("loss", "sigmoid") for r in rows} - set(LOSS_NAMES))]
    panels = sorted(
        {(r.get("loss", "sigmoid"), r["dtype"]) for r in rows}, key=lambda p: (order.index(p[0]), p[1])
    )
    panels = panels or [("sigmoid", "-")]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 4 * len(panels)), squeeze=False)
    for (ax_t, ax_m), (loss, dtype) in zip(axes, panels, strict=True):
        sel = [r for r in rows if r.get("loss", "sigmoid") == loss and r["dtype"] == dtype]
        if sel:
            _loss_panel(ax_t, ax_m, sel, payload)
        name = f"{LOSS_NAMES.get(loss, loss)} loss, {dtype}"
        ax_t.set(ylabel=TIME_LABEL, title=f"{name}: time, {_device_name(payload)}")
        ax_m.set(ylabel="peak memory above the inputs (MiB)", title=f"{name}: memory")
        if any(r["provider"] == "compiled" and r["peak_extra_bytes"] is None for r in sel):
            ax_m.annotate(
                "compiled: not measurable on CPU", (0.98, 0.03), xycoords="axes fraction", ha="right"
            )
        sizes = sorted({r["rows"] for r in sel})
        for ax in (ax_t, ax_m):
            ax.set(xscale="log", yscale="log", xlabel="rows 2N (log scale)")
            ax.set_xticks(sizes, [str(n) for n in sizes], minor=False)
            ax.xaxis.set_minor_formatter(FormatStrFormatter(""))
            _plain_log_labels(ax.yaxis)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def _rate_spread(r: dict[str, Any], batch: int, key: str) -> tuple[float, list[float]]:
    """The per-second rate of a timing record and its p20–p80 spread as error-bar lengths."""
    per_image = r[key] / r["img_per_s"]  # views per image for views/s, 1 for images/s
    rate = r[key]
    slow, fast = (batch * per_image / (r[p] * 1e-3) for p in ("p80_ms", "p20_ms"))
    return rate, [rate - slow, fast - rate]


def plot_train(payload: dict[str, Any], path: Path) -> None:
    """Bars: images/s of the full step and of the model step, views/s of the augmentation."""
    res, cfg = payload["results"], payload["config"]
    batch = cfg["batch_size"]
    fig, (ax_step, ax_aug) = plt.subplots(1, 2, figsize=(9.5, 3.9))
    bars = [_rate_spread(res[n], batch, "img_per_s") for n in ("full_step", "model_step")]
    ax_step.bar(
        ["full step (a)", "model on synthetic (b)"],
        [b[0] for b in bars],
        yerr=[[b[1][0] for b in bars], [b[1][1] for b in bars]],
        color=["tab:red", "tab:gray"],
    )
    ax_step.set(xlabel="what one timed step runs", ylabel="images / s (median; bars: p20–p80)")
    ax_step.set_title(f"train step, {cfg['arch']} width {cfg['width']}")
    rate, spread = _rate_spread(res["augment"], batch, "views_per_s")
    ax_aug.bar(["augmentation (c)"], [rate], yerr=[[spread[0]], [spread[1]]], color="tab:orange")
    ax_aug.set(xlabel=f"loader: {payload['augment_path']}", ylabel="views / s (median; bars: p20–p80)")
    ax_aug.set_title("augmentation alone")
    fig.suptitle(
        f"{_device_name(payload)}, batch {batch}, {res['full_step']['reps']} timed steps: "
        f"a/b = {payload['full_over_model']:.2f}"
    )
    save_figure(fig, path)


def _grouped_bars(ax, groups: list, series: list[str], value, colors: dict[str, str]) -> None:
    """Bars grouped on the x axis; ``value(series, group)`` is (height, (low, high), note) or None."""
    width = 0.8 / max(1, len(series))
    labelled: set[str] = set()
    for i, name in enumerate(series):
        for j, group in enumerate(groups):
            got = value(name, group)
            if got is None:
                continue
            height, (low, high), note = got
            x = j + (i - (len(series) - 1) / 2) * width
            label = None if name in labelled else name
            labelled.add(name)
            ax.bar(x, height, width, yerr=[[height - low], [high - height]], color=colors[name], label=label)
            if note:
                ax.annotate(note, (x, high), ha="center", va="bottom", fontsize=7)


def plot_augment(payload: dict[str, Any], path: Path) -> None:
    """Grouped bars: views/s of each loader backend per image size, with the ratio to PIL."""

    def group(r: dict[str, Any]) -> str:
        crop = f"{r['size']}×{r['size']}"
        return f"folder of JPEGs → {crop}" if r.get("case") == "folder" else crop

    rows = {(r["backend"], group(r)): r for r in payload["results"] if r["status"] == "ok"}
    sizes = list(dict.fromkeys(g for _, g in rows))
    colors = {"gpu": "tab:red", "dali": "tab:green", "ffcv": "tab:blue", "pil": "tab:gray"}
    backends = [b for b in colors if any(b == backend for backend, _ in rows)]

    def value(backend: str, size: int):
        r = rows.get((backend, size))
        if r is None:
            return None
        note = f"×{r['speedup_vs_pil']:.1f}" if "speedup_vs_pil" in r and backend != "pil" else ""
        return r["views_per_s"], (r["p20_views_per_s"], r["p80_views_per_s"]), note

    fig, ax = plt.subplots(figsize=(7.5, 3.9))
    _grouped_bars(ax, sizes, backends, value, colors)
    ax.set_xticks(range(len(sizes)), sizes)
    ax.set(yscale="log", xlabel="uint8 images of one size, or a folder of JPEGs; ×: speed-up over PIL")
    _plain_log_labels(ax.yaxis)
    ax.set_ylabel("views / s (median; bars: p20–p80)")
    ax.set_title(f"augmentation throughput, {_device_name(payload)}")
    ax.legend(fontsize=8, title="loader", title_fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    save_figure(fig, path)


def plot_dist(payload: dict[str, Any], path: Path) -> None:
    """Grouped bars: fwd+bwd time of the plain loss and the distributed one (one rank) per 2N."""
    rows = {(r["provider"], r["rows"]): r for r in payload["results"]}
    sizes = sorted({n for _, n in rows})
    colors = {"plain": "tab:gray", "ring": "tab:red", "gather": "tab:blue"}
    providers = [p for p in colors if any(p == name for name, _ in rows)]

    def value(provider: str, n: int):
        r = rows.get((provider, n))
        if r is None:
            return None
        note = f"×{r['overhead_vs_plain']:.2f}" if provider != "plain" else ""
        return r["median_ms"], (r["p20_ms"], r["p80_ms"]), note

    cfg = payload["config"]
    fig, ax = plt.subplots(figsize=(7, 3.9))
    _grouped_bars(ax, sizes, providers, value, colors)
    ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
    ax.set(xlabel=f"rows 2N (D = {cfg['dim']}, {cfg['dtype']}); ×: time over plain")
    ax.set_ylabel("fwd + bwd, median (ms); bars: p20–p80")
    ax.set_title(f"distributed sigmoid loss, world size {payload['world_size']}, {_device_name(payload)}")
    ax.legend(fontsize=8, title="provider", title_fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    save_figure(fig, path)


def figure_png(fig: Any) -> bytes:
    """Lay out and render ``fig`` as PNG bytes, then close it (closed even when rendering fails)."""
    try:
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def save_figure(fig: Any, path: Path) -> None:
    """Render ``fig`` and write it to ``path`` atomically (``checkpoint.write_atomic``: a
    temporary of a unique name, renamed into place, removed again when the write fails)."""
    png = figure_png(fig)
    write_atomic(path, lambda f: f.write(png))


PLOTTERS = {"loss": plot_loss, "train": plot_train, "augment": plot_augment, "dist": plot_dist}


def _read_results(path: Path) -> dict[str, Any]:
    hint = "pass a results JSON written by `fastsigclr bench loss`, `augment`, `train` or `dist`"
    if path.is_dir():
        raise FastSigCLRError(f"{path} is a directory; {hint}")
    try:
        payload = json_loads(path.read_text())
    except FileNotFoundError:
        raise FastSigCLRError(f"{path} does not exist; {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastSigCLRError(f"{path} is not a readable JSON file ({err}); {hint}") from None
    kind = payload.get("benchmark") if isinstance(payload, dict) else None
    if kind not in (*PLOTTERS, "all"):
        raise FastSigCLRError(
            f"{path} is not a benchmark results file with a plot (benchmark {kind!r}); plottable: "
            f"{', '.join(PLOTTERS)}; {hint}"
        )
    return payload


def plot_file(json_path: Path, png_path: Path | None = None) -> Path | None:
    """Redraw the plot of a results file (by its ``benchmark`` field) beside it, or at ``png_path``;
    None for the summary of ``bench all``, whose figures are drawn from the files it lists. A file
    that is missing, not JSON or not a results file with a plot is a FastSigCLRError naming it."""
    path = Path(json_path)
    payload = _read_results(path)
    kind = payload["benchmark"]
    if kind == "all":
        return None
    found = problem(payload)
    if found:
        raise FastSigCLRError(f"{path}: {found}; run `fastsigclr bench {kind}` to write it again")
    out = png_path or path.with_suffix(".png")
    check_outputs([out], fix="move it away, and run again")
    try:
        PLOTTERS[kind](payload, out)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise FastSigCLRError(
            f"{path} is not a complete {kind} results file ({type(err).__name__}: {err}); "
            f"run `fastsigclr bench {kind}` to write it again"
        ) from err
    return out
