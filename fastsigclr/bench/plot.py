"""Plots drawn from benchmark results files (the data is the record; plots are derived)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

from fastsigclr.config import FastSigCLRError

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"eager": "tab:gray", "compiled": "tab:blue", "chunked": "tab:orange", "triton": "tab:red"}
MARKERS = ["o", "s", "^", "D", "v"]


def plot_loss(payload: dict[str, Any], path: Path) -> None:
    """Per dtype: fwd+bwd median time and peak extra memory against 2N, one line per provider and D."""
    rows = [r for r in payload["results"] if r["status"] == "ok"]
    panels = sorted({(r.get("loss", "sigmoid"), r["dtype"]) for r in rows}) or [("sigmoid", "-")]
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 4 * len(panels)), squeeze=False)
    dims = sorted({r["dim"] for r in rows})
    for (ax_t, ax_m), (loss, dtype) in zip(axes, panels, strict=True):
        for provider in COLORS:
            for i, dim in enumerate(dims):
                sel = sorted(
                    (
                        r
                        for r in rows
                        if r["provider"] == provider and r["dim"] == dim and r["dtype"] == dtype
                    ),
                    key=lambda r: r["rows"],
                )
                if not sel:
                    continue
                style = dict(
                    color=COLORS[provider], marker=MARKERS[i % len(MARKERS)], label=f"{provider} D={dim}"
                )
                ax_t.plot([r["rows"] for r in sel], [r["median_ms"] for r in sel], **style)
                mem = [(r["rows"], r["peak_extra_bytes"] / 2**20) for r in sel if r["peak_extra_bytes"]]
                if mem:
                    ax_m.plot(*zip(*mem, strict=True), **style)
        device = payload.get("device", {}).get("name", "?")
        ax_t.set(xscale="log", yscale="log", xlabel="rows 2N", ylabel="fwd+bwd median (ms)")
        ax_t.set_title(f"{loss} loss, {dtype}, {device}")
        ax_m.set(xscale="log", yscale="log", xlabel="rows 2N", ylabel="peak extra memory (MiB)")
        ax_m.set_title("memory above the inputs")
        for ax in (ax_t, ax_m):
            ax.grid(True, which="both", alpha=0.3)
        ax_t.legend(fontsize=7, ncol=2)
    _save(fig, path)


def plot_train(payload: dict[str, Any], path: Path) -> None:
    """Bars: images/s of the full step and of the model step, views/s of the augmentation."""
    res = payload["results"]
    fig, (ax_step, ax_aug) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = ["full_step", "model_step"]
    ax_step.bar(
        ["full step (a)", "model on synthetic (b)"],
        [res[n]["img_per_s"] for n in names],
        color=["tab:red", "tab:gray"],
    )
    ax_step.set(
        ylabel="images / s", title=f"train step, {payload['config']['arch']} w{payload['config']['width']}"
    )
    ax_aug.bar(["augmentation (c)"], [res["augment"]["views_per_s"]], color="tab:orange")
    ax_aug.set(ylabel="views / s", title=f"augmentation ({payload['augment_path']})")
    fig.suptitle(
        f"{payload['device']['name']}, batch {payload['config']['batch_size']}: a/b = "
        f"{payload['full_over_model']:.2f}"
    )
    _save(fig, path)


def plot_augment(payload: dict[str, Any], path: Path) -> None:
    """Grouped bars: views/s of each loader backend per image size, with the ratio to PIL."""
    rows = [r for r in payload["results"] if r["status"] == "ok"]
    sizes = sorted({r["size"] for r in rows})
    backends = [b for b in ("gpu", "dali", "ffcv", "pil") if any(r["backend"] == b for r in rows)]
    colors = {"gpu": "tab:red", "dali": "tab:green", "ffcv": "tab:blue", "pil": "tab:gray"}
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / max(1, len(backends))
    for i, backend in enumerate(backends):
        for j, size in enumerate(sizes):
            r = next((r for r in rows if r["backend"] == backend and r["size"] == size), None)
            if r is None:
                continue
            x = j + (i - (len(backends) - 1) / 2) * width
            err = [[r["views_per_s"] - r["p20_views_per_s"]], [r["p80_views_per_s"] - r["views_per_s"]]]
            ax.bar(
                x, r["views_per_s"], width, yerr=err, color=colors[backend], label=backend if j == 0 else None
            )
            if "speedup_vs_pil" in r and backend != "pil":
                ax.annotate(
                    f"×{r['speedup_vs_pil']:.1f}", (x, r["views_per_s"]), ha="center", va="bottom", fontsize=7
                )
    ax.set_xticks(range(len(sizes)), [f"{s}×{s}" for s in sizes])
    ax.set(yscale="log", ylabel="views / s (median, p20–p80)")
    ax.set_title(f"augmentation throughput, {payload['device']['name']}")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


PLOTTERS = {"loss": plot_loss, "train": plot_train, "augment": plot_augment}


def plot_file(json_path: Path, png_path: Path | None = None) -> Path:
    """Redraw the plot of a results file (by its ``benchmark`` field); a file that is missing,
    not JSON or not a results file with a plot is a FastSigCLRError naming it."""
    path = Path(json_path)
    hint = "pass a results JSON written by `fastsigclr bench loss`, `augment` or `train`"
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise FastSigCLRError(f"{path} does not exist; {hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastSigCLRError(f"{path} is not a readable JSON file ({err}); {hint}") from None
    kind = payload.get("benchmark") if isinstance(payload, dict) else None
    if kind not in PLOTTERS:
        raise FastSigCLRError(
            f"{path} is not a benchmark results file with a plot (benchmark {kind!r}); {hint}"
        )
    out = png_path or path.with_suffix(".png")
    try:
        PLOTTERS[kind](payload, out)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise FastSigCLRError(
            f"{path} is not a complete {kind} results file ({type(err).__name__}: {err}); "
            f"run `fastsigclr bench {kind}` to write it again"
        ) from err
    return out
