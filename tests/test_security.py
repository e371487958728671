"""Files the program reads are untrusted: a checkpoint that would run code when unpickled is
refused (never executed), and run-directory files that are symlinks are refused, never followed.
Each case ends in one line naming the problem, exit status 2, no traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_fixture import small_info, write_tiny

from fastsigclr.cli import main
from fastsigclr.data import DATASETS
from fastsigclr.data.datasets import DatasetError


class _RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: the stand-in for any command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data dir, run dir) of a one-epoch run on the small Tiny-ImageNet fixture."""
    root = tmp_path_factory.mktemp("secure")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(DATASETS, "tinyimagenet", small_info())
        write_tiny(root / "data")
        assert main(train_args(root / "data", root / "run")) == 0
    return root / "data", root / "run"


def train_args(data: Path, out: Path) -> list[str]:
    return (
        f"train --dataset tinyimagenet --data-dir {data} --device cpu --width 8 --proj-dims 32,16 "
        f"--batch-size 8 --epochs 1 --knn-every 0 --knn-k 5 --no-progress --no-tensorboard --out {out}"
    ).split()


@pytest.fixture
def run(trained, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the trained run (each test damages its own)."""
    monkeypatch.setitem(DATASETS, "tinyimagenet", small_info())
    data, run_dir = trained
    shutil.copytree(run_dir, tmp_path / "run", symlinks=True)
    return data, tmp_path / "run"


def one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2, err
    assert err.startswith("fastsigclr: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def commands(data: Path, run_dir: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "eval": f"eval --run {run_dir} knn --data-dir {data} --device cpu --no-progress".split(),
        "export": f"export --run {run_dir} --out {tmp_path / 'enc.safetensors'}".split(),
        "resume": [*train_args(data, run_dir), "--epochs", "2", "--resume", "auto"],
    }


def test_the_trained_checkpoint_loads_under_weights_only(trained):
    state = torch.load(trained[1] / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "rng", "config", "epoch"} <= state.keys()


@pytest.mark.parametrize("command", ["eval", "export", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(command, run, tmp_path, capsys):
    data, run_dir = run
    marker = tmp_path / "the-code-ran"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["model"]["payload"] = _RunsCode(marker)
    torch.save(state, run_dir / "checkpoints" / "last.pt")
    err = one_line_error(capsys, commands(data, run_dir, tmp_path)[command])
    assert "last.pt is refused" in err and "train again" in err, err
    assert not marker.exists(), "unpickling the checkpoint ran its code"


def test_a_bare_pickle_or_random_bytes_are_named_without_torchs_advice(run, tmp_path, capsys):
    """A crafted protocol-4 pickle (not torch's zip file) failed in the safe loader's framing and
    was called truncated, with torch's paragraph advising the unsafe loader, the one thing that
    would run its code (and torch's warning on the protocol before it)."""
    import pickle

    data, run_dir = run
    marker = tmp_path / "the-code-ran"
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(pickle.dumps({"model": _RunsCode(marker)}, protocol=4))
    err = one_line_error(capsys, commands(data, run_dir, tmp_path)["eval"])
    assert "last.pt is refused: it is a bare pickle of protocol 4 (Unsupported operand" in err, err
    assert "weights_only" not in err and not marker.exists()
    last.write_bytes(bytes(range(256)) * 3)
    err = one_line_error(capsys, commands(data, run_dir, tmp_path)["eval"])
    assert "last.pt is unreadable (UnpicklingError: " in err and "weights_only" not in err, err


def snapshot(target: Path) -> dict[str, tuple[bytes, int]]:
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return {str(p.relative_to(target.parent)): (p.read_bytes(), os.stat(p).st_mtime_ns) for p in files}


@pytest.mark.parametrize(
    "name,command",
    [
        ("run.lock", "resume"),
        ("config.json", "resume"),
        ("config.json", "eval"),
        ("config.json", "export"),
        ("metrics.jsonl", "resume"),
        ("summary.json", "resume"),
        ("checkpoints/last.pt", "eval"),
        ("checkpoints", "resume"),
    ],
)
def test_a_symlinked_run_file_is_refused_and_its_target_untouched(name, command, run, tmp_path, capsys):
    data, run_dir = run
    target = tmp_path / "elsewhere" / Path(name).name
    target.parent.mkdir()
    source = run_dir / name
    if source.is_dir():
        shutil.copytree(source, target)
        shutil.rmtree(source)
    elif source.exists():
        shutil.copy(source, target)  # a target that reads as a valid file of that name
        source.unlink()
    else:
        target.write_text("not the run's\n")
    before = snapshot(target)
    source.symlink_to(target)
    err = one_line_error(capsys, commands(data, run_dir, tmp_path)[command])
    assert f"{name} is a symbolic link" in err, err
    assert snapshot(target) == before


def test_data_verify_decodes_the_files_and_drops_a_stale_cache(tmp_path, monkeypatch, capsys):
    """A JPEG replaced by random bytes of the same size and mtime: the name/size/mtime fingerprint
    passed it and kept serving the old pixels; verify now decodes every file, and the cache is
    keyed by the files' bytes."""
    info = small_info()
    monkeypatch.setitem(DATASETS, "tinyimagenet", info)
    folder = write_tiny(tmp_path / "data")
    from fastsigclr.data.datasets import load_split

    before, _ = load_split(info, folder, "train", progress=False)  # decodes and writes the cache
    victim = sorted(folder.glob("train/*/images/*.JPEG"))[5]
    st = os.stat(victim)
    victim.write_bytes(np.random.default_rng(0).integers(0, 256, st.st_size, dtype=np.uint8).tobytes())
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(victim).st_size, os.stat(victim).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    err = one_line_error(capsys, f"data verify --dataset tinyimagenet --data-dir {tmp_path / 'data'}".split())
    assert "1 of 24 train JPEGs do not decode" in err and victim.name in err and "cache" in err, err
    assert not (tmp_path / "data" / f"{info.folder}-decoded" / "train-meta.json").exists()
    with pytest.raises(DatasetError, match=victim.name):  # never the stale pixels
        load_split(info, folder, "train", progress=False)
    assert before.shape[0] == 24


def test_the_decoded_cache_is_keyed_by_the_files_bytes(tmp_path, monkeypatch, capsys):
    """Another valid JPEG padded to the same size (decoders stop at its end marker) and given the
    same mtime: loading returns its pixels, not the cached ones; verify notes the stale cache."""
    info = small_info()
    folder = write_tiny(tmp_path / "data")
    from fastsigclr.data.datasets import load_split
    from fastsigclr.data.samples import decode_file

    before, _ = load_split(info, folder, "train", progress=False)
    files = sorted(folder.glob("train/*/images/*.JPEG"))
    victim, donor = max(files, key=lambda p: p.stat().st_size), min(files, key=lambda p: p.stat().st_size)
    st = os.stat(victim)
    victim.write_bytes(donor.read_bytes().ljust(st.st_size, b"\0"))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    i = files.index(victim)
    after, _ = load_split(info, folder, "train", progress=False)
    assert np.array_equal(after[i], decode_file(donor)) and not np.array_equal(after[i], before[i])
    victim.write_bytes(donor.read_bytes().ljust(st.st_size, b"\1"))  # the cache is stale again
    monkeypatch.setitem(DATASETS, "tinyimagenet", info)
    assert main(f"data verify --dataset tinyimagenet --data-dir {tmp_path / 'data'}".split()) == 0
    assert "the decoded train cache, made from other bytes, was removed" in capsys.readouterr().err


def test_a_dataset_pickle_that_would_run_code_is_refused(tmp_path):
    """CIFAR's python batches are pickles: one that names a callable is refused, never called,
    and a plain batch (dict, bytes, list, numpy array) still loads."""
    import pickle

    from fastsigclr.data.cifar import load_pickle as _load_pickle

    marker = tmp_path / "the-code-ran"
    plain = {b"labels": [1, 2], b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"batch_label": b"x"}
    (tmp_path / "good").write_bytes(pickle.dumps(plain, protocol=2))
    loaded = _load_pickle(tmp_path / "good")
    assert loaded["labels"] == [1, 2] and np.array_equal(loaded["data"], plain[b"data"])
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"labels": _RunsCode(marker)}))
    with pytest.raises(DatasetError, match=r"data_batch_1 .*refused to load pathlib.*Path\.touch"):
        _load_pickle(tmp_path / "data_batch_1")
    assert not marker.exists()
