"""The one loss registry: every method's spec (function against its reference, value and
gradient), the options generated from the specs (a method's irrelevant options are errors; the
sigmoid logit scale and the softmax temperature are named apart in options, logs and summaries),
old config.json files, and the loss value computed only where the trainer reads it."""

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch
from helpers import assert_close_rel

import fastsigclr.losses.sigmoid as sigmoid_module
from fastsigclr import checkpoint, rundir
from fastsigclr.cli import main
from fastsigclr.config import ConfigError, build, to_dict
from fastsigclr.losses import LOSSES
from fastsigclr.recipe import loss_scalars
from fastsigclr.runconfig import TrainConfig, saved_config
from fastsigclr.runlog import read_metrics


def value_and_grad(fn, z: torch.Tensor, labels):
    x = z.detach().clone().requires_grad_()
    loss = fn(x, labels)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("method", list(LOSSES))
@pytest.mark.parametrize("rows,dim,n_views", [(14, 5, 2), (15, 3, 3)])
def test_every_spec_function_matches_its_reference(method, rows, dim, n_views):
    """float64 at odd sizes, each spec's defaults: the package function (the path training uses)
    against the spec's plain reference, value and gradient."""
    spec = LOSSES[method]
    gen = torch.Generator().manual_seed(rows + dim)
    z = torch.randn(rows, dim, dtype=torch.float64, generator=gen)
    labels = torch.randint(0, 3, (rows // n_views,), generator=gen) if spec.supervised else None
    params = spec.defaults()
    got = value_and_grad(lambda x, y: spec.function(x, y, n_views=n_views, **params), z, labels)
    want = value_and_grad(lambda x, y: spec.reference(x, y, n_views=n_views, **params), z, labels)
    # Measured over these cases: loss ≤ 3.2e-16, dz ≤ 1.2e-15 relative (float64 throughout).
    assert_close_rel(got[0], want[0], 1e-12, f"{method} loss")
    assert_close_rel(got[1], want[1], 1e-12, f"{method} dz")
    module = spec.build(n_views=n_views, **params)
    assert_close_rel(module(z, labels).detach(), want[0], 1e-12, f"{method} module")


IRRELEVANT = [
    ("sigclr", "k1", 3.0, "--k1 applies to tcl only; drop it"),
    ("simclr", "k2", 2.0, "--k2 applies to tcl only; drop it"),
    ("supcon", "logit_bias", 0.0, "--logit-bias applies to sigclr only; drop it"),
    ("tcl", "learnable_logit_bias", False, "--learnable-logit-bias applies to sigclr only; drop it"),
    ("simclr", "learnable_logit_scale", True, "--learnable-logit-scale applies to sigclr only"),
    ("simclr", "logit_scale", 5.0, "--logit-scale applies to sigclr only; drop it"),
    ("sigclr", "temperature", 0.5, "--temperature applies to simclr, supcon, tcl"),
]


@pytest.mark.parametrize("method,name,value,message", IRRELEVANT)
def test_an_option_the_method_ignores_is_an_error(method, name, value, message):
    with pytest.raises(ConfigError) as info:
        build(TrainConfig, {"method": method, name: value})
    assert message in str(info.value), info.value


def test_irrelevant_option_is_one_line_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--method", "sigclr", "--temperature", "0.5", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsigclr: error: ") and "\n" not in err, err
    assert "pass --logit-scale" in err
    with pytest.raises(SystemExit):
        main(["bench", "loss", "--losses", "sigclr", "--k1", "3", "--out", str(tmp_path / "b")])
    assert "--k1 applies to tcl only; drop it or measure one of those in --losses" in capsys.readouterr().err


def test_configs_with_loss_options_keep_their_module():
    """`fastsigclr bench` finds a command's run() in its config's module. Python 3.12's
    make_dataclass names its caller's module instead (it broke `bench loss` there, not on 3.11)."""
    from fastsigclr.bench.loss import BenchLossConfig, run

    modules = (TrainConfig.__module__, BenchLossConfig.__module__)
    assert modules == ("fastsigclr.runconfig", "fastsigclr.bench.loss")
    assert importlib.import_module(BenchLossConfig.__module__).run is run
    assert TrainConfig.__qualname__ == "TrainConfig" and dataclasses.is_dataclass(BenchLossConfig)


def test_logit_scale_and_temperature_are_named_apart():
    sig = TrainConfig(method="sigclr", logit_scale=5.0).resolved()
    assert (sig.logit_scale, sig.logit_bias, sig.learnable_logit_bias, sig.temperature, sig.k1) == (
        5.0,
        -10.0,
        True,
        None,
        None,
    )
    criterion = LOSSES["sigclr"].build(n_views=2, **{k: getattr(sig, k) for k in LOSSES["sigclr"].params})
    assert loss_scalars(criterion) == pytest.approx({"logit_scale": 5.0, "logit_bias": -10.0})
    for method, tau in (("simclr", 0.2), ("supcon", 0.1), ("tcl", 0.1)):
        cfg = TrainConfig(method=method).resolved()
        assert (cfg.temperature, cfg.logit_scale, cfg.logit_bias) == (tau, None, None)
        criterion = LOSSES[method].build(n_views=2, **{k: getattr(cfg, k) for k in LOSSES[method].params})
        assert loss_scalars(criterion) == pytest.approx({"temperature": tau})
    assert TrainConfig(method="simclr", temperature=0.3).resolved().temperature == 0.3


def old_config(method: str, temperature: float) -> dict:
    """config.json's settings as written before the loss registry: every method's options saved,
    sigclr's logit scale under "temperature"."""
    saved = to_dict(TrainConfig(method=method).resolved())
    for name in ("logit_scale", "learnable_logit_scale", "logit_bias", "learnable_logit_bias"):
        saved.pop(name)
    saved.update(temperature=temperature, bias=-10.0, learnable_bias=True, k1=5000.0, k2=1.0)
    saved["learnable_temperature"] = method == "sigclr"
    saved["resume"] = False  # before --resume auto too
    return saved


def test_old_config_json_still_loads(tmp_path):
    sig = saved_config(old_config("sigclr", 7.0))
    assert (sig.logit_scale, sig.learnable_logit_scale, sig.temperature, sig.k1) == (7.0, True, None, None)
    sim = saved_config(old_config("simclr", 0.3))
    assert (sim.temperature, sim.logit_bias, sim.learnable_logit_bias, sim.k1, sim.logit_scale) == (
        0.3,
        None,
        None,
        None,
        None,
    )
    tcl = saved_config(old_config("tcl", 0.1))
    assert (tcl.k1, tcl.k2, tcl.logit_bias) == (5000.0, 1.0, None)
    # An old run directory resumes with its own settings.
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")  # settings() only checks that it exists
    saved = {**old_config("sigclr", 7.0), "out": str(run)}
    (run / "config.json").write_text(json.dumps({"config": saved}))
    cfg = rundir.settings(TrainConfig(out=str(run), resume="yes"), {"out", "resume"})
    assert (cfg.method, cfg.logit_scale, cfg.learnable_logit_scale) == ("sigclr", 7.0, True)


def test_config_json_with_the_earlier_bias_names_loads():
    """config.json written while sigclr's logit bias was --bias / --learnable-bias: read as
    logit_bias / learnable_logit_bias (LossSpec.renamed), for every method's file."""
    for method in LOSSES:
        saved = to_dict(
            TrainConfig(method=method, logit_bias=-3.0 if method == "sigclr" else None).resolved()
        )
        saved["bias"], saved["learnable_bias"] = saved.pop("logit_bias"), saved.pop("learnable_logit_bias")
        cfg = saved_config(saved)
        want = (-3.0, True) if method == "sigclr" else (None, None)
        assert (cfg.logit_bias, cfg.learnable_logit_bias) == want, method


def test_checkpoint_with_the_earlier_state_keys_resumes_exactly():
    """A criterion state_dict saved as {log_temperature, bias} loads into today's module
    (log_logit_scale, logit_bias) with the same values, learnable scale or not."""
    for learnable in (False, True):
        old = LOSSES["sigclr"].build(n_views=2, **{**LOSSES["sigclr"].defaults(), "logit_scale": 4.0})
        state = {"log_temperature": torch.tensor(1.25), "bias": torch.tensor(-7.5)}
        params = {**LOSSES["sigclr"].defaults(), "learnable_logit_scale": learnable}
        new = LOSSES["sigclr"].build(n_views=2, **params)
        new.load_state_dict(state)
        assert set(new.state_dict()) == {"log_logit_scale", "logit_bias"} == set(old.state_dict())
        assert new.logit_scale.item() == pytest.approx(torch.tensor(1.25).exp().item(), rel=1e-7)
        assert new.logit_bias.item() == -7.5
        with pytest.raises(RuntimeError, match="Missing key"):
            new.load_state_dict({"bias": torch.tensor(-7.5)})


def tiny_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(
            f"train --dataset cifar10 --data-dir {data_dir} --device cpu --width 8 --proj-dims 64,32 "
            f"--limit-train 128 --limit-test 50 --batch-size 32 --epochs 2 --knn-every 0 "
            f"--no-progress --no-tensorboard --out {out}"
        ).split(),
        *extra,
    ]


def test_loss_value_only_on_the_steps_that_read_it(cifar10_dir, tmp_path, monkeypatch):
    """4 steps per epoch, --log-every 3: the loss is computed at steps 3 and 6 (logged), 4 and 8
    (each epoch's last; 8 is logged too), skipped elsewhere; the weights equal those of a run that
    computes every loss, and the step and epoch records hold the same losses at those steps."""
    flags = []
    loss_fn = sigmoid_module.sigmoid_pairwise_loss

    def spy(*args, compute_loss=True, **kw):
        flags.append(compute_loss)
        return loss_fn(*args, compute_loss=compute_loss, **kw)

    every, sparse = tmp_path / "every", tmp_path / "sparse"
    assert main(tiny_args(cifar10_dir, every, "--log-every", "1")) == 0
    monkeypatch.setattr(sigmoid_module, "sigmoid_pairwise_loss", spy)
    assert main(tiny_args(cifar10_dir, sparse, "--log-every", "3")) == 0
    assert flags == [False, False, True, True, False, True, False, True]
    a = checkpoint.load(every / "checkpoints" / "last.pt")
    b = checkpoint.load(sparse / "checkpoints" / "last.pt")
    for part in ("model", "criterion"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    full = {r["step"]: r for r in read_metrics(every) if r["kind"] == "step"}
    logged = [r for r in read_metrics(sparse) if r["kind"] == "step"]
    assert [r["step"] for r in logged] == [3, 6, 8]
    assert all(r["loss"] == full[r["step"]]["loss"] for r in logged)
    assert "temperature" not in logged[0] and {"logit_scale", "logit_bias"} <= set(logged[0])
    epochs = [r for r in read_metrics(sparse) if r["kind"] == "epoch"]
    assert [r["loss_steps"] for r in epochs] == [2, 2]
    want = [(full[3]["loss"] + full[4]["loss"]) / 2, (full[6]["loss"] + full[8]["loss"]) / 2]
    assert [r["loss"] for r in epochs] == pytest.approx(want, rel=1e-6)
    summary = json.loads((sparse / "summary.json").read_text())
    assert "final_logit_scale" in summary and "final_temperature" not in summary


def test_a_real_nan_still_stops_a_run_that_skips_losses(cifar10_dir, tmp_path, capsys):
    """--lr 1e20 with --log-every 100: no step is logged, the NaN of the epoch's last step (its
    loss is computed) stops the run before any checkpoint."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(tiny_args(cifar10_dir, out, "--lr", "1e20", "--log-every", "100"))
    err = capsys.readouterr().err
    assert "training diverged: the epoch's mean loss is nan at step 4 (epoch 1)" in err, err
    assert not (out / "checkpoints").exists()
