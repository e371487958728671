"""Plots drawn from benchmark results: each loss in its own panels, labelled axes with units, a plot
for `bench dist`, every committed results file redrawn, and one-line errors for bad files."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from fastsigclr.bench import plot
from fastsigclr.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def loss_row(loss, provider, rows, ms, mib):
    return {
        "loss": loss,
        "provider": provider,
        "rows": rows,
        "dim": 64,
        "dtype": "fp32",
        "status": "ok",
        "median_ms": ms,
        "peak_extra_bytes": mib * 2**20,
    }


@pytest.fixture
def drawn(monkeypatch):
    """The figure a plot function would save, kept for inspection."""
    figures = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path: figures.append(fig))
    return figures


def test_each_loss_gets_its_own_panels(drawn):
    results = [
        loss_row("sigmoid", "eager", 256, 1.0, 3.0),
        loss_row("sigmoid", "eager", 512, 2.0, 6.0),
        loss_row("nt_xent", "eager", 256, 10.0, 30.0),
        loss_row("nt_xent", "eager", 512, 20.0, 60.0),
    ]
    payload = {"results": results, "device": {"name": "cpu"}, "matmul_tflops": {"fp32": 1e-3}}
    plot.plot_loss(payload, Path("unused.png"))
    (fig,) = drawn
    time_sig, mem_sig, time_nt, mem_nt = fig.axes
    assert "sigmoid" in time_sig.get_title() and "NT-Xent" in time_nt.get_title()

    def eager_line(ax):
        (line,) = [line for line in ax.get_lines() if line.get_label() == "eager D=64"]
        return list(line.get_ydata())

    assert eager_line(time_sig) == [1.0, 2.0] and eager_line(time_nt) == [10.0, 20.0]
    assert eager_line(mem_sig) == [3.0, 6.0] and eager_line(mem_nt) == [30.0, 60.0]
    # The dashed line: the same 4·(2N)²·D FLOPs at the measured matmul rate, in ms.
    (floor,) = [line for line in time_sig.get_lines() if line.get_label() == "at the matmul rate D=64"]
    assert list(floor.get_ydata()) == pytest.approx([4 * n * n * 64 / 1e9 * 1e3 for n in (256, 512)])


def results_files(kinds):
    """Committed files of these ``benchmark`` kinds (kernels-sm90.json, a compile report, has none)."""
    return sorted(p for p in RESULTS.glob("*.json") if json.loads(p.read_text()).get("benchmark") in kinds)


def plotted_results():
    return results_files(plot.PLOTTERS)


@pytest.mark.parametrize("path", plotted_results(), ids=lambda p: p.name)
def test_every_axis_has_a_label_with_its_unit(path, drawn):
    payload = json.loads(path.read_text())
    plot.PLOTTERS[payload["benchmark"]](payload, Path("unused.png"))
    (fig,) = drawn
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_title(), (path.name, ax.get_title())
        assert any(unit in ax.get_ylabel() for unit in ("(ms)", "(MiB)", " / s")), ax.get_ylabel()


def test_committed_results_redraw(tmp_path, capsys):
    """`fastsigclr bench plot` on copies of every committed results file (the summary has no plot)."""
    for path in results_files([*plot.PLOTTERS, "all"]):
        shutil.copy(path, tmp_path)
    assert main(["bench", "plot", *map(str, sorted(tmp_path.glob("*.json")))]) == 0
    for path in plotted_results():
        assert (tmp_path / path.with_suffix(".png").name).stat().st_size > 10_000
    assert "all-cpu.json: a `bench all` summary" in capsys.readouterr().out


def test_bench_dist_writes_a_plot_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where its process group's store goes
    args = ["bench", "dist", "--device", "cpu", "--sizes", "32,64", "--dim", "8", "--reps", "2"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "dist-cpu.png").stat().st_size > 10_000
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    "name,content,problem",
    [
        ("missing.json", None, "does not exist"),
        ("folder", "dir", "is a directory"),
        ("broken.json", "{not json", "is not a readable JSON file"),
        (
            "other.json",
            '{"benchmark": "speed"}',
            "not a benchmark results file with a plot (benchmark 'speed'",
        ),
        ("list.json", "[1, 2]", "not a benchmark results file with a plot (benchmark None"),
        ("short.json", '{"benchmark": "loss", "results": [{"status": "ok"}]}', "not a complete loss results"),
    ],
)
def test_bench_plot_bad_file_is_a_one_line_error(tmp_path, capsys, name, content, problem):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "plot", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fastsigclr: error: {path}"), err
    assert problem in err and ("fastsigclr bench" in err), err
