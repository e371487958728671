"""``fastsigclr bench loss``: any loss of the registry (``fastsigclr.losses.LOSSES``, by training
method), forward + backward, providers side by side.

Providers: ``eager`` (the materialising PyTorch reference), ``compiled`` (the same under
``torch.compile``), ``chunked`` (the package's torch path), ``triton`` (the loss's Triton
kernel, CUDA only; skipped for losses without one), ``open_clip`` (open_clip's SigLipLoss, for
sigclr and siglip; the ``bench`` extra) and ``siglip-kernel`` (the PyPI package's fused SigLIP
loss, the public baseline, CUDA only: for sigclr its two-tower loss of the two views, B = N, so N²
pairs against SigCLR's (2N)², no TFLOP/s given; for siglip the same loss as the others). Besides
the training methods, ``siglip``: SigLIP's two-tower loss with z's halves as images and texts.
Each case reports the median time, achieved TFLOP/s for 4·(2N)²·D, the ratio to the eager,
compiled and open_clip baselines measured in the same run, and the peak memory allocated above the
inputs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from fastsigclr.bench.common import (
    DTYPES,
    check_even_sizes,
    matmul_tflops,
    partial_path,
    result_paths,
    time_fn,
    write_json,
    write_results,
)
from fastsigclr.bench.memory import peak_extra_bytes
from fastsigclr.bench.open_clip_loss import OPEN_CLIP_LOSSES, open_clip_fn
from fastsigclr.bench.open_clip_loss import installed as open_clip_installed
from fastsigclr.bench.profile import profile_step
from fastsigclr.config import FastSigCLRError, check_fields, check_not_empty, option, to_dict
from fastsigclr.losses import LOSSES, siglip
from fastsigclr.losses.options import check_applicable, with_loss_options
from fastsigclr.runconfig import loss_params
from fastsigclr.runinfo import available_memory_bytes, device_option, resolve_device, run_record

# Peak bytes per element of the (2N)² logit matrix of the eager references (fp32 inputs, D = 64),
# measured with bench.memory at 2N = 256, 512, 1024: sigclr 27.1/26.5/26.3, supcon and tcl
# 26.0/25.5/25.3, dcl 22.1/21.5/21.3, simclr 13.0/12.5/12.3. The largest bounds every loss.
EAGER_BYTES_PER_LOGIT = 26.3

try:
    from triton.runtime.errors import OutOfResources
except ImportError:  # no triton (not Linux): no kernel can run out of resources

    class OutOfResources(Exception):
        pass


# triton-fused: the kernel's one fused pass past D = 128 too, where "triton" takes the weight strips
# (kernels/sigmoid_strip.py) on a GPU: the two side by side. triton-tall-strips: SigCLR's strips as
# tall as their bytes' bound allows (one strip up to 2N = 16,384), where "triton" cuts a quarter.
KERNEL_SETTINGS = {"triton-fused": "fused_only", "triton-tall-strips": "tall_strips"}
PROVIDERS = ("eager", "compiled", "chunked", "triton", *KERNEL_SETTINGS, "open_clip", "siglip-kernel")
DEFAULT_PROVIDERS = ("eager", "compiled", "chunked", "triton", "open_clip")
# What can be measured: the training methods' losses and SigLIP's two-tower loss.
BENCH_LOSSES = {**LOSSES, "siglip": siglip.SPEC}


@with_loss_options
@dataclass(frozen=True)
class BenchLossConfig:
    device: str = device_option("device to measure on")
    sizes: tuple[int, ...] | None = option(
        None,
        "rows 2N to measure (even: two views of N images); unset: 1024,4096,8192,16384,65536 on CUDA, "
        "512,1024,2048 on CPU",
        ge=2,
    )
    dims: tuple[int, ...] | None = option(
        None, "feature sizes D; unset: 64,128,256 on CUDA, 64,128 on CPU", ge=1
    )
    dtypes: tuple[str, ...] | None = option(
        None, "input dtypes; unset: bf16,fp16,fp32 on CUDA, fp32 on CPU", choices=tuple(DTYPES)
    )
    providers: tuple[str, ...] = option(DEFAULT_PROVIDERS, "implementations to compare", choices=PROVIDERS)
    losses: tuple[str, ...] = option(
        ("sigclr", "simclr"), "losses to measure, by training method (or siglip)", choices=tuple(BENCH_LOSSES)
    )
    deterministic: bool = option(
        False,
        "our providers (chunked, triton) of sigclr and siglip sum in a fixed order, as `train "
        "--deterministic` does (siglip's kernel then forms the texts' gradient in a second sweep): its cost",
    )
    profile: bool = option(
        False, "profile one more call per case: kernel launches and the kernels that take the time"
    )
    warmup: int = option(3, "untimed calls before timing (compilation happens here)", ge=1)
    reps: int | None = option(None, "timed calls per case; unset: 20 on CUDA, 5 on CPU", ge=1)
    out: str = option("benchmarks/local", "directory for loss-<device>.json and loss-<device>.png", path=True)
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        check_not_empty(self, "sizes", "dims", "dtypes", "providers", "losses")
        check_fields(self)
        check_even_sizes(self.sizes)
        fix = "drop it or measure one of those in --losses"
        check_applicable(self, self.losses, fix=fix, losses=BENCH_LOSSES)
        for name in self.losses:
            fewest = BENCH_LOSSES[name].min_images
            if self.sizes and min(self.sizes) < 2 * fewest:
                raise ValueError(
                    f"--losses {name} needs at least {fewest} images (--sizes {2 * fewest}: two views each), "
                    f"got --sizes {min(self.sizes)}; measure larger sizes, or drop {name}"
                )

    def resolved(self, device: torch.device) -> BenchLossConfig:
        """The per-device defaults filled in."""
        cuda = device.type == "cuda"
        return dataclasses.replace(
            self,
            device=device.type,
            sizes=self.sizes or ((1024, 4096, 8192, 16384, 65536) if cuda else (512, 1024, 2048)),
            dims=self.dims or ((64, 128, 256) if cuda else (64, 128)),
            dtypes=self.dtypes or (("bf16", "fp16", "fp32") if cuda else ("fp32",)),
            reps=self.reps or (20 if cuda else 5),
        )


def _loss_fn(provider: str, method: str, cfg: BenchLossConfig, device: torch.device):
    """fn(z, labels) -> loss of one provider; learnable hyper-parameters (sigclr's bias by default)
    are tensors that receive gradients, as in training. Labels: 10 classes for supervised losses."""
    spec = BENCH_LOSSES[method]
    params: dict[str, Any] = loss_params(cfg, spec)
    for name, value in list(params.items()):
        if params.get(f"learnable_{name}"):
            params[name] = torch.tensor(float(value), device=device, requires_grad=True)
    if provider == "open_clip":
        return open_clip_fn(method, params)
    if provider == "siglip-kernel":
        from siglip_kernel import fused_siglip_loss

        log_t = torch.tensor(float(params["logit_scale"]), device=device).log().requires_grad_()
        bias = torch.tensor(float(params["logit_bias"]), device=device, requires_grad=True)
        return lambda z, labels: fused_siglip_loss(*z.chunk(2), log_t, bias)
    if provider in ("eager", "compiled"):
        ref = spec.reference if provider == "eager" else torch.compile(spec.reference, dynamic=False)
        return lambda z, labels: ref(z, labels, **params)
    impl = "torch" if provider == "chunked" else "triton"
    if cfg.deterministic and spec.kernel_plans:
        params["deterministic"] = True
    if provider in KERNEL_SETTINGS:  # forward forms every gradient: backward launches no kernel
        setting = KERNEL_SETTINGS[provider]
        return lambda z, labels: _within(setting, spec.function, z, labels, impl=impl, **params)
    return lambda z, labels: spec.function(z, labels, impl=impl, **params)


def _within(setting: str, function, *args, **kwargs):
    """function(*args, **kwargs) within one of sigmoid_strip's settings (fused_only, tall_strips)."""
    from fastsigclr.kernels import sigmoid_strip

    with getattr(sigmoid_strip, setting)():
        return function(*args, **kwargs)


def strip_products_accumulate(device: torch.device) -> bool | None:
    """Whether the weight strips add a later strip's products inside cuBLAS on ``device`` (else
    written apart, then added: kernels/fp32_products.py); None without the kernels (no triton)."""
    try:
        from fastsigclr.kernels import fp32_products
    except ImportError:
        return None
    return fp32_products.addmm_accumulates(device)


def _skip_reason(provider: str, method: str, device: torch.device) -> str | None:
    if provider == "open_clip" and method not in OPEN_CLIP_LOSSES:
        return "no open_clip loss"
    if provider == "open_clip" and not open_clip_installed():
        return "open_clip_torch not installed (pip install --no-deps open_clip_torch, which keeps torch)"
    if provider == "siglip-kernel":
        if method not in ("sigclr", "siglip"):
            return "siglip-kernel computes the sigmoid loss only"
        if device.type != "cuda":
            return "needs CUDA"
        if importlib.util.find_spec("siglip_kernel") is None:
            return "siglip-kernel is not installed (pip install 'fastsigclr[baselines]')"
    if provider.startswith("triton") and BENCH_LOSSES[method].kernel is None:
        return "no Triton kernel"
    if provider.startswith("triton") and device.type != "cuda":
        return "needs CUDA"
    if provider in KERNEL_SETTINGS and method not in ("sigclr", "siglip"):
        return "the weight strips serve the sigmoid losses only (same as triton)"
    if provider == "triton-tall-strips" and method != "sigclr":
        return "only SigCLR's strips are cut to a quarter of the rows (same as triton)"
    return None


def skip_reasons(cfg: BenchLossConfig, device: torch.device) -> str:
    """Each skipped provider once with its reasons: "triton (needs CUDA)", or per loss where they
    differ: "siglip-kernel (sigclr: needs CUDA; simclr: siglip-kernel computes the sigmoid loss only)"."""
    said = []
    for provider in sorted(cfg.providers):
        why = {loss: reason for loss in cfg.losses if (reason := _skip_reason(provider, loss, device))}
        if len(set(why.values())) == 1 and len(why) == len(cfg.losses):
            said.append(f"{provider} ({next(iter(why.values()))})")
        elif why:
            said.append(f"{provider} ({'; '.join(f'{loss}: {reason}' for loss, reason in why.items())})")
    return ", ".join(said)


def check_runnable(cfg: BenchLossConfig, device: torch.device, available: int | None = None) -> None:
    """Refuse, before anything is measured, a run whose every case would be skipped (``--providers
    triton`` on a CPU) or whose largest eager/compiled case cannot fit in memory (``--sizes
    10000000`` asked the allocator for 400 TB)."""
    runnable = [p for p in cfg.providers for loss in cfg.losses if not _skip_reason(p, loss, device)]
    if not runnable:
        raise FastSigCLRError(
            f"nothing to measure on this {device.type}: {skip_reasons(cfg, device)}; choose --providers "
            f"among eager, compiled, chunked here, or run on a CUDA device"
        )
    if not {"eager", "compiled"} & set(cfg.providers):
        return
    if available is None:
        available = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory_bytes()
    # The CPU's allocator fails with a RuntimeError (or the OOM killer), so the measured peak
    # bounds it; a CUDA case that runs out of memory is recorded as such, so there only a size
    # whose single 2N×2N matrix cannot fit is refused.
    cpu = device.type == "cpu"
    per_logit = EAGER_BYTES_PER_LOGIT if cpu else min(DTYPES[d].itemsize for d in cfg.dtypes or ("fp32",))
    rows = max(cfg.sizes or ())
    need = per_logit * rows * rows
    if need > available:
        largest = 2 * (math.isqrt(int(available / per_logit)) // 2)
        what = "measured peak" if cpu else "one matrix, the least it needs"
        raise FastSigCLRError(
            f"--sizes {rows} needs about {need / 2**30:,.1f} GiB for the eager and compiled references "
            f"({per_logit:g} bytes per element of the 2N×2N matrix: {what}), more than the "
            f"{available / 2**30:.1f} GiB available: use --sizes ≤ {largest}, or --providers chunked,triton"
        )


def measure_case(
    loss: str, provider: str, rows: int, dim: int, dtype: str, cfg: BenchLossConfig, device: torch.device
) -> dict[str, Any]:
    """Time and memory of one (loss, provider, 2N, D, dtype) case, fwd+bwd (sigclr: learnable bias)."""
    row: dict[str, Any] = {"loss": loss, "provider": provider, "rows": rows, "dim": dim, "dtype": dtype}
    reason = _skip_reason(provider, loss, device)
    if reason:
        return {**row, "status": f"skipped: {reason}"}
    if provider == "compiled":
        torch._dynamo.reset()  # one graph per shape; never fall back to eager at the cache limit
    gen = torch.Generator(device=device).manual_seed(rows + dim)
    z = torch.randn(rows, dim, device=device, dtype=DTYPES[dtype], generator=gen).requires_grad_()
    labels = (
        torch.randint(0, 10, (rows // 2,), device=device, generator=gen)
        if BENCH_LOSSES[loss].supervised
        else None
    )
    fn = _loss_fn(provider, loss, cfg, device)

    def step() -> None:
        z.grad = None
        fn(z, labels).backward()

    try:
        timing = time_fn(step, device, warmup=cfg.warmup, reps=cfg.reps or 1)
        # Compiled code runs below the dispatcher, where the CPU allocation tracker cannot see it.
        measurable = device.type == "cuda" or provider != "compiled"
        peak = peak_extra_bytes(step, device) if measurable else None
        profiled = {"profile": profile_step(step, device)} if cfg.profile else {}
    except torch.OutOfMemoryError:
        return {**row, "status": "out of memory"}
    except OutOfResources as err:  # a kernel needing more shared memory or registers than the GPU has
        return {**row, "status": f"unlaunchable: {str(err).splitlines()[0]}"}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {
        **row,
        "status": "ok",
        **timing,
        "tflops": useful_flops(loss, rows, dim) / (timing["median_ms"] * 1e-3) / 1e12,
        "peak_extra_bytes": peak,
        "z_bytes": z.numel() * z.element_size(),
        **profiled,
    }


# The matrix work of forward and backward that every provider must do, per loss: the rate it is
# done at compares providers that do more (recomputation) or less (a materialised logit matrix).
FLOPS_PER_CASE = {
    "siglip": "6·B²·D with B = 2N/2 (S = X·Yᵀ, G·Y and Gᵀ·X over the B × B pairs)",
    "other": "4·(2N)²·D (S = Z·Zᵀ and G·Z over the 2N × 2N pairs)",
}


def useful_flops(loss: str, rows: int, dim: int) -> int:
    """FLOPs of FLOPS_PER_CASE for a case of ``rows`` rows 2N and ``dim`` features."""
    if loss == "siglip":
        b = rows // 2
        return 6 * b * b * dim
    return 4 * rows * rows * dim


def add_ratios(rows: list[dict[str, Any]], matmul: dict[str, float]) -> None:
    """Speed-ups against the eager and compiled references of the same case, and the fraction
    of the matmul rate measured in the same run."""
    by_case = {
        (r["loss"], r["rows"], r["dim"], r["dtype"], r["provider"]): r for r in rows if r["status"] == "ok"
    }
    for r in rows:
        if r["status"] != "ok":
            continue
        for base in ("eager", "compiled", "open_clip"):
            ref = by_case.get((r["loss"], r["rows"], r["dim"], r["dtype"], base))
            r[f"speedup_vs_{base}"] = ref["median_ms"] / r["median_ms"] if ref else None
        rate = matmul.get(r["dtype"])
        r["fraction_of_matmul"] = r["tflops"] / rate if rate and r["tflops"] else None


def run(cfg: BenchLossConfig, command: list[str] | None = None) -> dict[str, Any]:
    """Measure every case, write ``loss-<device>.json`` and its plot under ``cfg.out``."""
    from fastsigclr.bench.plot import plot_loss

    device = resolve_device(cfg.device)
    cfg = cfg.resolved(device)
    check_runnable(cfg, device)
    paths = result_paths(cfg.out, "loss", device)
    record = run_record(device, command)
    matmul_size, matmul_reps = (8192, 20) if device.type == "cuda" else (1024, 5)
    matmul = {d: matmul_tflops(device, DTYPES[d], matmul_size, matmul_reps) for d in cfg.dtypes or ()}
    cases = [
        (loss, p, n, d, dt)
        for loss in cfg.losses
        for dt in cfg.dtypes or ()
        for d in cfg.dims or ()
        for n in cfg.sizes or ()
        for p in cfg.providers
    ]
    rows: list[dict[str, Any]] = []
    payload = {
        "benchmark": "loss",
        **record,
        "config": to_dict(cfg),
        "flops_per_case": FLOPS_PER_CASE,
        "matmul_tflops": matmul,
        "matmul_shape": [matmul_size] * 3,
        # How the weight strips add a later strip's products: inside cuBLAS, or written then added.
        "strip_products_accumulate": strip_products_accumulate(device),
        "complete": False,
        "results": rows,
    }
    # After every case the cases so far go to loss-<device>.partial.json: a killed run keeps them,
    # and the last complete results (with their plot) stay as they were until this run completes.
    partial, saved = partial_path(paths[0]), 0
    bar = tqdm(cases, desc="bench loss", unit="case", disable=not cfg.progress)
    try:
        for loss, provider, n, d, dt in bar:
            bar.set_postfix_str(f"{loss} {provider} 2N={n} D={d} {dt}")
            rows.append(measure_case(loss, provider, n, d, dt, cfg, device))
            add_ratios(rows, matmul)
            write_json(partial, payload)
            saved = len(rows)
    except BaseException:  # Ctrl-C, SIGTERM, an error: say where the measured cases are
        if saved:
            bar.close()
            those = f"{saved} cases measured so far are" if saved > 1 else "1 case measured so far is"
            print(f"bench loss: the {those} in {partial}", file=sys.stderr)
        raise
    payload["complete"] = True
    write_results(payload, paths, plot_loss)
    partial.unlink(missing_ok=True)
    return payload


def summary_table(payload: dict[str, Any]) -> str:
    """A plain-text table of the results (printed by the CLI)."""
    head = f"{'loss':<8} {'provider':<9} {'dtype':<5} {'2N':>6} {'D':>4} {'median ms':>10} {'TFLOP/s':>8} "
    head += f"{'vs eager':>8} {'vs comp.':>8} {'vs oclip':>8} {'peak MiB':>9}"
    lines = [head]
    for r in payload["results"]:
        case = f"{r['loss']:<8} {r['provider']:<9} {r['dtype']:<5} {r['rows']:>6} {r['dim']:>4}"
        if r["status"] != "ok":
            lines.append(f"{case} {r['status']}")
            continue

        def ratio(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]:.2f}x" if r.get(key) else "-"

        peak = f"{r['peak_extra_bytes'] / 2**20:.1f}" if r["peak_extra_bytes"] is not None else "-"
        tflops = f"{r['tflops']:.3f}" if r["tflops"] is not None else "-"
        lines.append(
            f"{case} {r['median_ms']:>10.3f} {tflops:>8} {ratio('speedup_vs_eager'):>8} "
            f"{ratio('speedup_vs_compiled'):>8} {ratio('speedup_vs_open_clip'):>8} {peak:>9}"
        )
    return "\n".join(lines)
