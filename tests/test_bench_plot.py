"""Plots drawn from benchmark results: each loss in its own panels, labelled axes with units, a plot
for `bench dist`, every committed results file redrawn, one-line errors for bad files, and output
paths in the way named before anything is measured."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from run_fixture import fails_with

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


def test_bench_dist_shows_progress_and_refuses_a_size_that_cannot_fit(tmp_path, capsys):
    """It ran without a word for as long as its cases took, and --sizes 100000000 asked the
    allocator for what the machine does not have (now refused before the process group starts)."""
    args = ["bench", "dist", "--device", "cpu", "--sizes", "16", "--dim", "8", "--reps", "1"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    progress = capsys.readouterr().err
    assert "bench dist" in progress and "3/3" in progress, progress
    huge = ["bench", "dist", "--device", "cpu", "--sizes", "100000000", "--dim", "4096"]
    err = fails_with([*huge, "--out", str(tmp_path / "huge")], capsys)
    assert "--sizes 100000000 with --dim 4096 needs about 18,310.5 GiB" in err and "use --sizes ≤" in err
    assert not (tmp_path / "huge").exists()
    wide = ["bench", "dist", "--device", "cpu", "--sizes", "4", "--dim", "2000000000"]
    err = fails_with([*wide, "--out", str(tmp_path / "huge")], capsys)
    assert "use --dim ≤ " in err and "--sizes ≤" not in err, err


def edited(name: str, edit) -> str:
    """A committed results file with ``edit`` applied to its payload, as JSON text."""
    payload = json.loads((RESULTS / name).read_text())
    edit(payload)
    return json.dumps(payload)


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
        (
            "short.json",
            '{"benchmark": "loss", "results": [{"status": "ok"}]}',
            "results[0].provider is missing",
        ),
        # bench plot drew these and exited 0 ("wrote badval.png"): the file is untrusted
        (
            "badval.json",
            edited("loss-cpu.json", lambda p: p["results"][0].update(median_ms="abc")),
            "results[0].median_ms is 'abc', not a positive number; run `fastsigclr bench loss`",
        ),
        (
            "empty.json",
            edited("loss-cpu.json", lambda p: p.update(results=[])),
            "results is [], not a list of measured cases",
        ),
        (
            "skipped.json",
            edited("loss-cpu.json", lambda p: [r.update(status="skipped") for r in p["results"]]),
            "results has no measured case",
        ),
        (
            "nan.json",
            edited("dist-cpu.json", lambda p: p["results"][1].update(p80_ms=float("nan"))),
            "results[1].p80_ms is nan, not a positive number",
        ),
        (
            "train.json",
            edited("train-cpu.json", lambda p: p["results"]["augment"].update(views_per_s=-1)),
            "results.augment.views_per_s is -1, not a positive number",
        ),
        (
            "augment.json",
            edited("augment-cpu.json", lambda p: p["results"][0].update(size=True)),
            "results[0].size is True, not a positive whole number",
        ),
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
    assert not path.with_suffix(".png").exists()


LOSS_ARGS = ["bench", "loss", "--device", "cpu", "--sizes", "64", "--dims", "16", "--providers", "eager"]
LOSS_ARGS += ["--losses", "sigclr", "--warmup", "1", "--reps", "1"]


def one_line_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("name,kind", [("loss-cpu.png", "folder"), ("loss-cpu.json", "folder"),
                                       ("loss-cpu.png", "link")])  # fmt: skip
def test_an_output_in_the_way_is_named_before_measuring(tmp_path, capsys, monkeypatch, name, kind):
    """A folder at loss-cpu.png: the benchmark ran, wrote its JSON, then an IsADirectoryError
    traceback left loss-cpu.tmp.png behind; at loss-cpu.json: every case measured, then lost."""
    from fastsigclr.bench import loss

    monkeypatch.setattr(loss, "measure_case", lambda *a: pytest.fail("measured"))
    out = tmp_path / "b"
    out.mkdir()
    if kind == "folder":
        (out / name).mkdir()
    else:
        (out / name).symlink_to(tmp_path / "elsewhere.png")
    err = one_line_error([*LOSS_ARGS, "--out", str(out)], capsys)
    what = "a folder" if kind == "folder" else "a symbolic link"
    assert err.endswith(f"{out / name} is {what}, where a results file is written; move it away, or "
                        f"choose another --out"), err  # fmt: skip
    assert [p.name for p in out.iterdir()] == [name]


def test_bench_all_checks_every_benchmarks_files_first(tmp_path, capsys, monkeypatch):
    from fastsigclr.bench import loss

    monkeypatch.setattr(loss, "run", lambda *a, **k: pytest.fail("ran bench loss"))
    (tmp_path / "dist-cpu.png").mkdir()
    argv = ["bench", "all", "--quick", "--only", "loss,dist", "--out", str(tmp_path)]
    assert "dist-cpu.png is a folder" in one_line_error(argv, capsys)


def test_a_plot_that_cannot_be_written_keeps_the_results(tmp_path):
    """The JSON stays, the message says how to draw the plot, no temporary is left."""
    from fastsigclr.bench.common import write_results
    from fastsigclr.config import FastSigCLRError

    payload = json.loads((RESULTS / "dist-cpu.json").read_text())
    paths = tmp_path / "dist-cpu.json", tmp_path / "dist-cpu.png"
    paths[1].mkdir()  # appeared while it measured
    with pytest.raises(FastSigCLRError) as info:
        write_results(payload, paths, plot.plot_dist)
    message = str(info.value)
    assert message.startswith(f"cannot write {paths[1]}") and message.endswith(
        f"; the measured results are in {paths[0]}: move what is in the way, or make the folder "
        f"writable, then `fastsigclr bench plot {paths[0]}` draws the plot"
    ), message
    assert json.loads(paths[0].read_text()) == payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist-cpu.json", "dist-cpu.png"]
    assert list(paths[1].iterdir()) == []


def test_bench_plot_names_a_folder_where_its_plot_goes(tmp_path, capsys):
    shutil.copy(RESULTS / "dist-cpu.json", tmp_path)
    (tmp_path / "dist-cpu.png").mkdir()
    err = one_line_error(["bench", "plot", str(tmp_path / "dist-cpu.json")], capsys)
    assert err.endswith(f"{tmp_path / 'dist-cpu.png'} is a folder, where a results file is written; "
                        f"move it away, and run again"), err  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist-cpu.json", "dist-cpu.png"]
