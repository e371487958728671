"""The CCEM experiment: the closed-form regimes, and free embeddings landing on the prediction."""

import json
import math

import pytest

from fastsigclr.ccem import CcemConfig, optimise, predict
from fastsigclr.cli import main


@pytest.mark.parametrize("n", [5, 8, 12, 20, 40])
def test_regimes_match_the_b_equals_t_thresholds(n):
    etf_from = (n - 1) / n * math.log(n - 3) if n > 3 else 0.0
    anti_to = 0.5 * math.log((n - 2) / 2)
    for t in [0.05 * k for k in range(1, 140)]:
        if abs(t - etf_from) < 1e-6 or abs(t - anti_to) < 1e-6:
            continue
        pred = predict(n, t, t)
        expected = "etf" if t > etf_from else "antipodal" if t < anti_to else "interior"
        assert pred["regime"] == expected, (n, t, pred)
        if expected == "etf":  # the minimiser along the family agrees with the closed form
            assert pred["s_pos_pred"] == pytest.approx(1.0) and pred["s_neg_pred"] == pytest.approx(
                -1 / (n - 1)
            )
        elif expected == "antipodal":
            assert pred["s_pos_pred"] == pytest.approx(-1.0) and pred["s_neg_pred"] == pytest.approx(-1.0)
        else:
            assert -1 < pred["s_pos_pred"] < 1


# Points well inside each regime for b = t (N = 12: antipodal below 0.80, ETF above 2.01;
# N = 20: antipodal below 1.10, ETF above 2.69).
POINTS = [
    (12, 0.5, "antipodal"),
    (12, 1.6, "interior"),
    (12, 3.0, "etf"),
    (20, 0.6, "antipodal"),
    (20, 2.0, "interior"),
    (20, 4.0, "etf"),
]


@pytest.mark.parametrize("n,t,regime", POINTS)
def test_free_embeddings_reach_the_predicted_similarity(n, t, regime):
    pred = predict(n, t, t)
    assert pred["regime"] == regime
    s_pos, s_neg = optimise("free", n, t, t, CcemConfig(steps=1500))
    assert abs(s_pos - pred["s_pos_pred"]) <= 0.02, (s_pos, pred)
    assert abs(s_neg - pred["s_neg_pred"]) <= 0.02, (s_neg, pred)


def test_ccem_command_writes_table_csv_and_heatmap(tmp_path, capsys):
    out = tmp_path / "ccem"
    args = ["ccem", "--n", "6,12", "--t", "0.5,3", "--steps", "200", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    payload = json.loads((out / "results.json").read_text())
    rows = payload["rows"]
    keys = {"variant", "N", "d", "t", "b", "s_pos", "s_neg", "s_pos_pred", "s_neg_pred", "regime"}
    assert len(rows) == 3 * 2 * 2 and all(set(r) == keys for r in rows)
    assert {r["regime"] for r in rows} <= {"etf", "antipodal", "interior"}
    assert all(r["b"] == r["t"] and r["d"] == r["N"] for r in rows)
    # ReLU encoders output non-negative vectors: no similarity below zero.
    assert all(r["s_pos"] >= -1e-9 and r["s_neg"] >= -1e-9 for r in rows if r["variant"] == "encoder")
    assert (out / "results.csv").read_text().count("\n") == len(rows) + 1
    assert (out / "heatmap.png").stat().st_size > 10_000
    assert payload["versions"]["torch"] and "antipodal" in capsys.readouterr().out


def test_explicit_bias_and_bad_options(tmp_path, capsys):
    out = tmp_path / "b"
    assert (
        main(
            [
                "ccem",
                "--n",
                "8",
                "--t",
                "2",
                "--bias",
                "0,1",
                "--variant",
                "free",
                "--steps",
                "50",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["b"] for r in rows] == [0.0, 1.0]
    with pytest.raises(SystemExit):
        main(["ccem", "--n", "2"])
    assert "--n must be ≥ 3, got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ccem", "--variant", "linear"])
    assert "linear not allowed; choose from free, encoder, sigclr" in capsys.readouterr().err


def ccem_error(argv: list[str], capsys) -> str:
    """Run `fastsigclr ccem`, expect exit status 2, return its one-line message."""
    with pytest.raises(SystemExit) as exc:
        main(["ccem", "--no-progress", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsigclr: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    "variant,lr,what",
    [
        ("free", "1e308", "the loss is nan at step 2 of 5"),
        ("encoder", "1e308", "the loss is nan at step 2 of 5"),
        ("sigclr", "1e308", "the loss is nan at step 2 of 5"),
        # Finite steps, but rows past float64's norm: F.normalize made them 0 and wrote s⁺ = s⁻ = 0.
        ("free", "1e200", "a row's norm is inf after 5 steps"),
    ],
)
def test_a_diverging_optimisation_is_one_line_and_writes_nothing(variant, lr, what, tmp_path, capsys):
    """--lr 1e308 wrote rows of nan (and --lr 1e200 rows of 0) with "wrote …" and exit status 0."""
    out = tmp_path / "cc"
    argv = ["--steps", "5", "--n", "3", "--t", "1", "--variant", variant, "--lr", lr, "--out", str(out)]
    err = ccem_error(argv, capsys)
    assert f"the {variant} optimisation of N 3, t 1, b 1 diverged: {what}" in err, err
    assert (
        f"no results were written: run again with a lower --lr than {float(lr):g} (e.g. --lr 0.05)" in err
    ), err
    assert "whatever --t and --bias" in err and not out.exists()
    assert "wrote" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--t", "1e300"], "--t must be > 0 and ≤ 3.40282e+38, got 1e+300"),
        (["--t", "1,1e39"], "--t must be > 0 and ≤ 3.40282e+38, got 1e+39"),
        (["--bias", "-1e39"], "--bias must be ≥ -3.40282e+38 and ≤ 3.40282e+38, got -1e+39"),
    ],
)
def test_t_and_bias_past_float32_are_refused(argv, message, tmp_path, capsys):
    """--t 1e300 wrote the embeddings' starting similarities (Adam's squared gradient overflowed)
    and NaN for the sigclr variant (t reaches its loss as a float32)."""
    out = tmp_path / "cc"
    assert message in ccem_error([*argv, "--steps", "1", "--out", str(out)], capsys)
    assert not out.exists()


@pytest.mark.parametrize("n,t,b,regime", [(3, 1.0, -1e30, "antipodal"), (5, 1e-14, 0.0, "antipodal")])
def test_the_prediction_follows_the_closed_form_where_float64_loses_t_s(n, t, b, regime):
    """--bias -1e30 predicted s⁺ = 1 for an antipodal regime: t·s⁻ − b rounded to −b for every a,
    the loss along the family was flat, and its first minimiser (a = 0) was reported."""
    pred = predict(n, t, b)
    assert pred["regime"] == regime and pred["a_pred"] == 1.0
    assert pred["s_pos_pred"] == -1.0 and pred["s_neg_pred"] == -1.0


def test_a_large_negative_bias_is_measured_and_predicted_antipodal():
    """b ≪ −t saturates σ: the positives stop pulling and the negatives push every s⁻ to −1."""
    s_pos, s_neg = optimise("free", 4, 1.0, -1e30, CcemConfig(steps=300))
    assert s_pos == pytest.approx(-1.0, abs=0.02) and s_neg == pytest.approx(-1.0, abs=0.02)
    assert predict(4, 1.0, -1e30)["s_pos_pred"] == -1.0


CCEM_SMALL = ["--n", "4", "--t", "1", "--steps", "2", "--variant", "free"]


@pytest.mark.parametrize("name", ["results.json", "results.csv", "heatmap.png"])
def test_a_folder_where_a_result_goes_is_named_before_the_grid(name, tmp_path, capsys, monkeypatch):
    """heatmap.png a folder: a traceback after the grid; results.csv: results.json already replaced."""
    import fastsigclr.ccem

    monkeypatch.setattr(fastsigclr.ccem, "optimise", lambda *a: pytest.fail("optimised"))
    (tmp_path / name).mkdir()
    err = ccem_error([*CCEM_SMALL, "--out", str(tmp_path)], capsys)
    assert err.endswith(f"{tmp_path / name} is a folder, where a results file is written; move it away, "
                        f"or choose another --out"), err  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("fails", ["heatmap drawn", "heatmap written"])
def test_a_failed_write_leaves_the_previous_runs_files_together(fails, tmp_path, capsys, monkeypatch):
    """results.json and .csv were replaced one by one, then the heatmap failed: a new table beside
    the old heatmap. Now a heatmap that cannot be drawn writes nothing, and one that cannot be
    written keeps the new results (the grid's minutes) and removes the old heatmap: never a mix."""
    import errno

    import matplotlib.figure

    from fastsigclr import checkpoint

    assert main(["ccem", "--no-progress", *CCEM_SMALL, "--out", str(tmp_path)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    full = OSError(errno.ENOSPC, "No space left on device")
    if fails == "heatmap drawn":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda *a, **k: (_ for _ in ()).throw(full))
    else:
        create = checkpoint._create

        def no_room_for_the_heatmap(tmp):
            if "heatmap" in tmp.name:
                raise full
            return create(tmp)

        monkeypatch.setattr(checkpoint, "_create", no_room_for_the_heatmap)
    argv = ["ccem", "--no-progress", *CCEM_SMALL, "--out", str(tmp_path)]
    argv[argv.index("--t") + 1] = "2"  # another run
    with pytest.raises(OSError if fails == "heatmap drawn" else SystemExit):
        main(argv)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if fails == "heatmap drawn":
        assert after == before
        return
    err = capsys.readouterr().err
    assert f"no space left on device writing {tmp_path / 'heatmap.png'}; the results are in " in err, err
    assert "without their heatmap: free space, then run ccem again for it" in err
    assert sorted(after) == ["results.csv", "results.json"] and after["results.csv"] != before["results.csv"]
    assert json.loads(after["results.json"])["rows"][0]["t"] == 2.0
