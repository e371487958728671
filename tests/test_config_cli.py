"""Configuration machinery and the command line: generated options, clear errors, package layout."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastsigclr.bench.loss import BenchLossConfig
from fastsigclr.cli import main
from fastsigclr.config import ConfigError, build, flag, from_dict, to_dict


def test_unknown_keys_and_bad_choices_are_errors():
    with pytest.raises(ConfigError, match=r"unknown option.*sizez.*allowed: device, sizes"):
        build(BenchLossConfig, {"sizez": (1,)})
    with pytest.raises(ConfigError, match="bf8 not allowed; choose from fp32, fp16, bf16"):
        build(BenchLossConfig, {"dtypes": ("bf8",)})
    with pytest.raises(ConfigError, match="--sizes must be ≥ 2, got 1"):
        build(BenchLossConfig, {"sizes": (1, 8)})


def test_config_round_trips_through_json():
    cfg = build(BenchLossConfig, {"sizes": (64, 128), "dims": (8,), "reps": 2})
    again = from_dict(BenchLossConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    with pytest.raises(Exception, match=r"frozen|cannot assign"):
        cfg.reps = 3  # type: ignore[misc]


def test_cli_rejects_unknown_option_and_bad_value(capsys):
    with pytest.raises(SystemExit) as err:
        main(["bench", "loss", "--no-such-option", "1"])
    assert err.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["bench", "loss", "--sizes", "12,abc"])
    assert "cannot read 'abc' as int" in capsys.readouterr().err


def test_info_reports_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("torch", "triton", "dali", "ffcv", "CUDA"):
        assert name in out


def test_bench_loss_writes_json_and_plot(tmp_path: Path, capsys):
    args = ["bench", "loss", "--device", "cpu", "--sizes", "66,130", "--dims", "17"]
    args += ["--providers", "eager,chunked,triton", "--warmup", "1", "--reps", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    payload = json.loads((tmp_path / "loss-cpu.json").read_text())
    assert (tmp_path / "loss-cpu.png").stat().st_size > 10_000
    for key in ("date", "command", "commit", "device", "versions", "matmul_tflops", "results"):
        assert key in payload
    assert payload["versions"]["torch"] and payload["config"]["sizes"] == [66, 130]
    assert payload["strip_products_accumulate"] in (False, None)  # CPU (None: no triton): written apart
    rows = {(r["loss"], r["provider"], r["rows"]): r for r in payload["results"]}
    assert rows[("sigclr", "triton", 66)]["status"] == "skipped: needs CUDA"
    for loss in ("sigclr", "simclr"):
        for provider, n in itertools.product(("eager", "chunked"), (66, 130)):
            r = rows[(loss, provider, n)]
            assert r["status"] == "ok" and r["median_ms"] > 0 and r["p20_ms"] <= r["p80_ms"]
            assert r["tflops"] == pytest.approx(4 * n * n * 17 / (r["median_ms"] * 1e-3) / 1e12)
            assert r["peak_extra_bytes"] > 0
            assert r["speedup_vs_eager"] == pytest.approx(
                rows[(loss, "eager", n)]["median_ms"] / r["median_ms"]
            )
        # The reference materialises 130² logits (and more).
        assert rows[(loss, "eager", 130)]["peak_extra_bytes"] >= 130 * 130 * 4
    assert "chunked" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_loss_compiled_reference(tmp_path: Path):
    """The torch.compile baselines run (about 15 s of compilation each on a 2-core CPU)."""
    args = ["bench", "loss", "--device", "cpu", "--sizes", "64", "--dims", "8", "--providers", "compiled"]
    assert main([*args, "--warmup", "1", "--reps", "2", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "loss-cpu.json").read_text())["results"]
    assert [r["loss"] for r in rows] == ["sigclr", "simclr"]
    assert all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)


ROOT = Path(__file__).resolve().parents[1]


def test_kernels_are_not_a_top_level_module(tmp_path: Path):
    """kernels/ is importable only as fastsigclr.kernels: from a folder whose path holds just the
    package (what an install puts on sys.path), `kernels` is absent. The package is linked there from
    this checkout, so the check needs no install (a copied checkout has none)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "fastsigclr").symlink_to(ROOT / "fastsigclr", target_is_directory=True)
    code = (
        "import importlib.util, fastsigclr, fastsigclr.kernels as k; "
        "print(importlib.util.find_spec('kernels') is None, k.sigmoid_block.__module__, "
        "fastsigclr.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "True",
        "fastsigclr.kernels.sigmoid",
        str(site / "fastsigclr" / "__init__.py"),
    ]


def test_console_script_and_module_entry_points(tmp_path: Path):
    """The console script pyproject.toml declares, and ``python -m fastsigclr``. Where the package
    is not installed (a copied checkout on the PYTHONPATH), the script's entry point is called as
    the installed script would call it."""
    tomllib = pytest.importorskip("tomllib")
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["fastsigclr"]
    module, function = entry.split(":")
    exe = Path(sys.executable).with_name("fastsigclr")
    script = (
        [str(exe)]
        if exe.is_file()
        else [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]
    )
    for argv in ([*script, "--help"], [sys.executable, "-m", "fastsigclr", "bench", "loss", "--help"]):
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "usage: fastsigclr" in out.stdout


def test_every_package_is_installed_and_tracked():
    """pyproject.toml lists the packages explicitly (kernels/ is mapped to fastsigclr.kernels): a new
    subpackage missing from the list, or ignored by git, would be absent from a fresh install."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "fastsigclr").rglob("__init__.py")}
    assert found | {"fastsigclr.kernels"} == listed
    tracked = subprocess.run(
        ["git", "ls-files", "fastsigclr", "kernels"], cwd=root, capture_output=True, text=True
    )
    if tracked.returncode == 0:  # inside a git checkout
        files = set(tracked.stdout.split())
        for package in found:
            assert package.replace(".", "/") + "/__init__.py" in files, f"{package} is not tracked by git"


def test_bench_train_writes_json_and_plot(cifar10_dir, tmp_path: Path, capsys):
    args = (
        f"bench train --data-dir {cifar10_dir} --device cpu --width 8 --batch-size 16 --limit-train "
        f"64 --warmup 1 --reps 2 --out {tmp_path}"
    ).split()
    assert main(args) == 0
    payload = json.loads((tmp_path / "train-cpu.json").read_text())
    assert (tmp_path / "train-cpu.png").stat().st_size > 10_000
    res = payload["results"]
    assert set(res) == {"full_step", "model_step", "augment"}
    assert all(r["median_ms"] > 0 and r["img_per_s"] > 0 for r in res.values())
    assert res["augment"]["views_per_s"] == pytest.approx(2 * res["augment"]["img_per_s"])
    assert payload["full_over_model"] == pytest.approx(
        res["full_step"]["img_per_s"] / res["model_step"]["img_per_s"]
    )
    assert payload["augment_path"] == "pytorch reference" and "a/b =" in capsys.readouterr().out


def test_every_dataset_has_a_preset():
    from fastsigclr.data import DATASETS
    from fastsigclr.runconfig import PRESETS

    assert set(PRESETS) == set(DATASETS)


def test_shared_options_are_declared_once():
    """Options of other commands reuse train's: same default, help, choices and bounds."""
    import dataclasses

    from fastsigclr.eval import EvalConfig
    from fastsigclr.runconfig import TrainConfig
    from fastsigclr.sweep import SweepConfig

    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    field = {f.name: f for f in dataclasses.fields(EvalConfig)}["device"]
    assert (field.default, field.metadata) == (train["device"].default, train["device"].metadata)
    for name in ("knn_k", "knn_temperature"):  # unset: the run's own (EvalConfig.for_run)
        field = {f.name: f for f in dataclasses.fields(EvalConfig)}[name]
        assert field.default is None and field.metadata["bounds"] == train[name].metadata["bounds"]
        assert field.metadata["help"] == f"{train[name].metadata['help']}; unset: the run's {flag(name)}"
    run = TrainConfig(knn_k=20, knn_temperature=0.5)
    assert build(EvalConfig, {"run": "r"}).for_run(run).knn_k == 20
    assert build(EvalConfig, {"run": "r", "knn_k": 7}).for_run(run).knn_temperature == 0.5
    sweep_width = {f.name: f for f in dataclasses.fields(SweepConfig)}["width"]
    assert sweep_width.default is None and sweep_width.metadata["bounds"] == train["width"].metadata["bounds"]
    with pytest.raises(ConfigError, match="--width must be ≥ 1, got 0"):
        build(SweepConfig, {"width": 0})


def test_bench_train_times_the_trainers_recipe():
    """bench train has no optimiser settings of its own: they are fastsigclr train's defaults."""
    import torch

    from fastsigclr.bench.train import BenchTrainConfig
    from fastsigclr.runconfig import TrainConfig

    timed = BenchTrainConfig().resolved(torch.device("cpu")).train_config()
    default = TrainConfig().resolved()  # loss options: the method's defaults, as bench train resolves them
    for name in ("optimizer", "lr", "momentum", "weight_decay", "probe_lr", "method", "logit_bias"):
        assert getattr(timed, name) == getattr(default, name), name
    assert (timed.arch, timed.width, timed.batch_size) == ("resnet18", 16, 64)
    assert timed.precision == "auto"  # the trainer's: bf16 autocast on CUDA, fp32 on a CPU
    bf16 = BenchTrainConfig(precision="bf16").resolved(torch.device("cpu")).train_config()
    assert bf16.precision == "bf16"


def test_bench_loss_reports_an_unlaunchable_case(tmp_path: Path, monkeypatch):
    """A kernel that needs more shared memory than the GPU has raises triton's OutOfResources at
    launch; the bench records that case and goes on (it caught only out-of-memory and aborted)."""
    from triton.runtime.errors import OutOfResources

    import fastsigclr.bench.loss as bench_loss

    real, calls = bench_loss.time_fn, []

    def time_fn(step, device, **kw):  # the first case (2N = 66) does not fit
        calls.append(1)
        if len(calls) == 1:
            raise OutOfResources(238080, 232448, "shared memory")
        return real(step, device, **kw)

    monkeypatch.setattr(bench_loss, "time_fn", time_fn)
    args = ["bench", "loss", "--device", "cpu", "--sizes", "66,130", "--dims", "17", "--losses", "simclr"]
    assert (
        main([*args, "--providers", "chunked", "--warmup", "1", "--reps", "1", "--out", str(tmp_path)]) == 0
    )
    rows = {r["rows"]: r for r in json.loads((tmp_path / "loss-cpu.json").read_text())["results"]}
    assert rows[66]["status"].startswith("unlaunchable: out of resource: shared memory")
    assert rows[130]["status"] == "ok"


def test_bench_loss_siglip_kernel_provider_says_why_it_skips(tmp_path: Path):
    """The siglip-kernel baseline runs on CUDA only and computes the sigmoid loss only."""
    args = [
        "bench",
        "loss",
        "--device",
        "cpu",
        "--sizes",
        "64",
        "--dims",
        "8",
        "--providers",
        "eager,siglip-kernel",  # with nothing to measure at all, bench loss is an error
    ]
    assert main([*args, "--warmup", "1", "--reps", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "loss-cpu.json").read_text())["results"]
    rows = {r["loss"]: r for r in results if r["provider"] == "siglip-kernel"}
    assert rows["sigclr"]["status"] == "skipped: needs CUDA"
    assert rows["simclr"]["status"] == "skipped: siglip-kernel computes the sigmoid loss only"


def test_bench_loss_siglip_has_its_kernel_provider():
    """SigLIP's two-tower loss runs on the sigmoid kernel's two-tower block: on CUDA `bench loss
    --losses siglip --providers triton` measures it (it was skipped as having no kernel)."""
    from fastsigclr import kernels
    from fastsigclr.bench.loss import BENCH_LOSSES, _skip_reason

    assert hasattr(kernels, BENCH_LOSSES["siglip"].kernel)
    assert _skip_reason("triton", "siglip", torch.device("cpu")) == "needs CUDA"
    assert _skip_reason("triton", "siglip", torch.device("cuda")) is None
    assert _skip_reason("triton", "dcl", torch.device("cuda")) == "no Triton kernel"


def test_bench_loss_times_the_fused_pass_beside_the_strips(monkeypatch):
    """``triton-fused`` runs the sigmoid losses with the weight strips off (the fused kernel's one
    pass past D = 128 too), on CUDA only; the call it makes sees strips_wanted refuse a wide bf16
    block it would otherwise hand them. ``triton-tall-strips`` keeps the strips but sizes SigCLR's
    by their bytes alone: one strip of 16,384 rows where ``triton`` takes four."""
    from fastsigclr.bench import loss as bench_loss
    from fastsigclr.kernels import launches, sigmoid_strip

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert bench_loss._skip_reason("triton-fused", "siglip", cuda) is None
    assert bench_loss._skip_reason("triton-tall-strips", "sigclr", cuda) is None
    assert "sigmoid losses only" in bench_loss._skip_reason("triton-tall-strips", "simclr", cuda)
    assert "same as triton" in bench_loss._skip_reason("triton-tall-strips", "siglip", cuda)  # no quarters
    assert bench_loss._skip_reason("triton-fused", "sigclr", cpu) == "needs CUDA"
    assert "sigmoid losses only" in bench_loss._skip_reason("triton-fused", "simclr", cuda)
    monkeypatch.setenv(launches.RECORD_ENV, "record.jsonl")  # decide as on CUDA
    wide = torch.empty(8, 256, dtype=torch.bfloat16, device="meta")
    seen = []

    def function(z, labels, **kw):
        height = sigmoid_strip.strip_rows(16384, 16384, 2, 128, sigmoid_strip._QUARTERS.get())
        seen.append((sigmoid_strip.strips_wanted(z, z, {}), height))
        return kw["impl"]

    spec = dataclasses.replace(bench_loss.BENCH_LOSSES["sigclr"], function=function)
    monkeypatch.setitem(bench_loss.BENCH_LOSSES, "sigclr", spec)
    cfg = bench_loss.BenchLossConfig(losses=("sigclr",))
    for provider in ("triton", "triton-fused", "triton-tall-strips"):
        assert bench_loss._loss_fn(provider, "sigclr", cfg, cpu)(wide, None) == "triton"
    assert seen == [(True, 4096), (False, 4096), (True, 16384)]


def test_bench_loss_counts_each_losss_own_matrix_work():
    """SigLIP's two towers of B = 2N/2 rows have B² pairs and three products of them (S, G·Y,
    Gᵀ·X): 6·B²·D, 1.5·(2N)²·D, not the 4·(2N)²·D of a 2N × 2N loss (which overstated its rate 2.7×)."""
    from fastsigclr.bench.loss import useful_flops

    assert useful_flops("siglip", 131072, 768) == 6 * 65536**2 * 768
    assert useful_flops("sigclr", 131072, 768) == 4 * 131072**2 * 768
    assert useful_flops("siglip", 10, 3) / useful_flops("simclr", 10, 3) == 1.5 / 4


def test_bench_loss_deterministic_reaches_our_providers(tmp_path: Path, monkeypatch):
    """--deterministic: sigclr's and siglip's chunked and triton providers are called with
    deterministic=True (what train --deterministic costs), and the JSON's config records it."""
    import fastsigclr.losses.siglip as siglip_module
    import fastsigclr.losses.sigmoid as sigmoid_module

    seen = []
    for module, name in ((sigmoid_module, "sigmoid_pairwise_loss"), (siglip_module, "siglip_loss")):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, kwargs.get("impl"), kwargs.get("deterministic")))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    args = ["bench", "loss", "--device", "cpu", "--losses", "sigclr,siglip", "--sizes", "66", "--dims", "17"]
    args += ["--providers", "eager,chunked", "--deterministic", "--warmup", "1", "--reps", "1"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "loss-cpu.json").read_text())
    assert payload["config"]["deterministic"] is True
    assert all(r["status"] == "ok" for r in payload["results"])
    # The bench times triton on CUDA only; its loss function is the same call in the interpreter.
    from fastsigclr.bench.loss import BenchLossConfig, _loss_fn

    z = torch.randn(66, 17, requires_grad=True)
    cfg = BenchLossConfig(deterministic=True)
    for method in ("sigclr", "siglip"):
        _loss_fn("triton", method, cfg, torch.device("cpu"))(z, None).backward()
    assert {(name, impl) for name, impl, _ in seen} == {
        (name, impl) for name in ("sigmoid_pairwise_loss", "siglip_loss") for impl in ("torch", "triton")
    }
    assert all(det is True for *_, det in seen)


def test_bench_loss_profile_records_where_the_time_goes(tmp_path: Path):
    """--profile: each measured case gets one profiled call's count of launches (operators on a
    CPU, kernels on a GPU) and its most expensive ones by self time; without it, none."""
    args = ["bench", "loss", "--device", "cpu", "--losses", "siglip", "--sizes", "66", "--dims", "17"]
    args += ["--providers", "chunked", "--warmup", "1", "--reps", "1"]
    assert main([*args, "--profile", "--out", str(tmp_path / "on")]) == 0
    (case,) = json.loads((tmp_path / "on" / "loss-cpu.json").read_text())["results"]
    profiled = case["profile"]
    assert profiled["what"] == "CPU operators" and profiled["launches"] >= len(profiled["top"]) == 8
    assert all(top["name"] and top["calls"] >= 1 for top in profiled["top"])
    assert profiled["launches"] >= 20  # normalisation, strips, products and sums: dozens of ops
    assert all(top["self_us"] > 0 for top in profiled["top"]) and profiled["self_us"] > 0
    assert main([*args, "--out", str(tmp_path / "off")]) == 0
    assert "profile" not in json.loads((tmp_path / "off" / "loss-cpu.json").read_text())["results"][0]


def test_paths_expand_a_tilde_and_runs_record_whole_folders(tmp_path, monkeypatch):
    """A shell leaves `--out=~/x` as typed; a run's config.json names its folders whole, so that
    a resume or an eval from another working directory finds the same data."""
    from fastsigclr.cli import build_parser
    from fastsigclr.config import from_args
    from fastsigclr.export import EmbedConfig
    from fastsigclr.runconfig import TrainConfig

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "--out=~/runs/a", "--data-dir", "data", "--ffcv-dir", "~/f"])
    cfg = from_args(TrainConfig, args)
    assert cfg.out == str(tmp_path / "home" / "runs" / "a") and cfg.data_dir == "data"
    resolved = cfg.resolved()
    assert resolved.data_dir == str(tmp_path / "data") and resolved.ffcv_dir == str(tmp_path / "home" / "f")
    assert resolved.out == cfg.out
    args = build_parser().parse_args(["embed", "--run=~/runs/a", "--out=~/e.npy"])
    embed = from_args(EmbedConfig, args)
    assert (embed.run, embed.out) == (str(tmp_path / "home/runs/a"), str(tmp_path / "home/e.npy"))
