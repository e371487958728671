"""The watch over FFCV's writer workers (``fastsigclr.data.ffcv_watch``), without FFCV: a child
process that fails wakes the main thread out of a wait that would not end by itself; one that
ends well does not; a SIGUSR2 it did not send reaches the handler it replaced. Then, with FFCV,
what a .beton already there is taken for: cut, with a damaged record, a folder or a link."""

import faulthandler
import json
import multiprocessing
import os
import signal
import time
from types import SimpleNamespace

import pytest

from fastsigclr.data.ffcv_watch import WAKE, WorkerFailed, WorkerWatch


def _exit_with(code: int) -> None:
    os._exit(code)


def _child(code: int) -> multiprocessing.Process:
    return multiprocessing.get_context("fork").Process(target=_exit_with, args=(code,))


def test_a_failed_child_ends_a_blocking_wait():
    reader, _ = multiprocessing.get_context("fork").Pipe(duplex=False)
    faulthandler.dump_traceback_later(60, exit=True)  # a watch that fails to wake: the test ends
    started = time.monotonic()
    with pytest.raises(WorkerFailed), WorkerWatch() as watch:
        child = _child(3)
        child.start()
        reader.recv()  # a blocking read nothing will ever answer, as FFCV's queue.get()
    faulthandler.cancel_dump_traceback_later()
    assert watch.failed == "exit status 3" and time.monotonic() - started < 10
    assert signal.getsignal(WAKE) != watch._wake  # the handler it replaced is back


def test_a_killed_child_is_named_by_its_signal():
    with pytest.raises(WorkerFailed), WorkerWatch() as watch:
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
        child.start()
        os.kill(child.pid, signal.SIGKILL)
        time.sleep(30)
    assert watch.failed == "killed by SIGKILL"
    assert "the machine may be short of memory" in str(watch.error("d.beton", ""))


def test_children_that_end_well_and_foreign_signals_pass():
    received = []
    previous = signal.signal(WAKE, lambda signum, frame: received.append(signum))
    try:
        with WorkerWatch() as watch:
            child = _child(0)
            child.start()
            child.join()
            signal.raise_signal(WAKE)  # someone else's SIGUSR2
            time.sleep(0.5)  # several looks of the watch
        assert watch.failed is None and received == [WAKE]
        assert signal.getsignal(WAKE) != watch._wake
    finally:
        signal.signal(WAKE, previous)


def test_a_wake_up_landing_as_the_watch_stops_is_dropped():
    """At the entry of __exit__ or stop (where a user's Ctrl-C may be being handled) the wake-up
    raises nothing; ``failed`` still tells of it. Anywhere else it raises."""
    for code in (WorkerWatch.stop.__code__, WorkerWatch.__exit__.__code__):
        watch = WorkerWatch()
        watch.failed, watch._sent, watch._armed = "exit status 1", True, True
        watch._wake(WAKE, SimpleNamespace(f_code=code))
        assert not watch._armed and watch.failed == "exit status 1"
    watch = WorkerWatch()
    watch.failed, watch._sent, watch._armed = "exit status 1", True, True
    with pytest.raises(WorkerFailed):
        watch._wake(WAKE, SimpleNamespace(f_code=_exit_with.__code__))


def _beton_case(tmp_path):
    pytest.importorskip("ffcv")
    import numpy as np

    from fastsigclr.data.samples import SampleIndex

    rng = np.random.default_rng(0)
    samples = SampleIndex.from_array(rng.integers(0, 256, (12, 8, 8, 3), np.uint8), np.arange(12) % 3)
    return tmp_path / "ffcv" / "d.beton", samples


def test_a_cut_beton_or_a_damaged_record_is_written_again(tmp_path, capsys):
    """A .beton cut short beside its record was kept and trusted ("wrote ... (0.0 MiB)"), with no
    record as well; a record that is no JSON was called absent ("an older fastsigclr wrote it").
    Each is now written again, saying why; a whole one is kept, and said to be."""
    from fastsigclr.data.ffcv_loader import beton_images
    from fastsigclr.data.loaders import ensure_beton

    path, samples = _beton_case(tmp_path)
    assert ensure_beton(path, samples, progress=False) == (path, True)
    size = path.stat().st_size
    assert ensure_beton(path, samples, progress=False) == (path, False)
    assert capsys.readouterr().err == ""
    record = path.with_name("d.beton.json")
    damages = ("cut", "cut without record", "record", "table cut, older record", "label", "pointer", "pixel")
    for damage in damages:
        if damage == "record":
            record.write_text("{")
        elif damage == "table cut, older record":  # no size: FFCV's reader took the cut table
            older = {k: v for k, v in json.loads(record.read_text()).items() if k not in ("size", "tables")}
            record.write_text(json.dumps(older))
            os.truncate(path, size - 30)  # inside the allocation table, written last
        elif damage in ("label", "pointer"):  # the size as written: it was trusted, and read wrongly
            _flip_metadata(path, damage)
        elif damage == "pixel":  # size and tables as written: its pixels were trusted
            _flip_pixel(path)
        else:
            os.truncate(path, 1000)
        if damage == "cut without record":
            record.unlink()
        assert ensure_beton(path, samples, progress=False) == (path, True), damage
        err = capsys.readouterr().err
        assert path.stat().st_size == size and beton_images(path) == 12, damage
        if damage == "record":
            assert "has a damaged record of the data it was written from (d.beton.json: not JSON" in err
        elif damage in ("label", "pointer"):
            assert f"{path} is damaged (its header or tables, which say where each image lies" in err, err
        elif damage == "pixel":
            assert f"{path} is damaged (its bytes are not those written: a disk or copy error" in err, err
        else:
            assert f"{path} is truncated or damaged (" in err and "writing it again" in err, err
    assert f"1000 bytes, {size} as written" in _ensure_cut(path, samples, capsys)


def _flip_metadata(path, field: str) -> None:
    """Change, in place, the first image's label or where its bytes lie: the file keeps its size."""
    import numpy as np
    from ffcv.reader import Reader

    reader = Reader(str(path))
    offset = reader.header.nbytes + reader.field_descriptors.nbytes  # the metadata follows them
    names = reader.metadata.dtype.names  # f0: the image's (its data_ptr among them), f1: the label
    where = names[1] if field == "label" else names[0]
    sub = reader.metadata.dtype.fields[where]
    inner = sub[0].fields["data_ptr"][1] if field == "pointer" else 0
    with open(path, "r+b") as f:
        f.seek(offset + sub[1] + inner)
        byte = np.frombuffer(f.read(1), np.uint8)[0]
        f.seek(offset + sub[1] + inner)
        f.write(bytes([int(byte) ^ 1]))


def _flip_pixel(path) -> None:
    """Change, in place, one byte of the first image's pixels: size and tables stay as written."""
    from ffcv.reader import Reader

    reader = Reader(str(path))
    where = int(reader.alloc_table["ptr"][0])  # the first image's bytes (raw RGB here)
    with open(path, "r+b") as f:
        f.seek(where)
        byte = f.read(1)[0]
        f.seek(where)
        f.write(bytes([byte ^ 0x40]))


def test_a_large_beton_has_its_bytes_checked_by_write_ffcv(tmp_path, capsys, monkeypatch):
    """Past CHECK_AT_START a run's start reads only the size and tables of a .beton (its pixels are
    trusted); `ensure_beton(whole=True)`, what `data write-ffcv` runs, reads every byte and
    writes a changed one again."""
    from fastsigclr.data import loaders

    path, samples = _beton_case(tmp_path)
    assert loaders.ensure_beton(path, samples, progress=False) == (path, True)
    monkeypatch.setattr(loaders, "CHECK_AT_START", path.stat().st_size - 1)
    _flip_pixel(path)
    assert loaders.ensure_beton(path, samples, progress=False) == (path, False)
    assert capsys.readouterr().err == ""
    assert loaders.ensure_beton(path, samples, progress=False, whole=True) == (path, True)
    assert "is damaged (its bytes are not those written" in capsys.readouterr().err
    assert loaders.ensure_beton(path, samples, progress=False, whole=True) == (path, False)
    # One written from other data is written again without its bytes being read first.
    read = []
    monkeypatch.setattr(loaders, "file_digest", lambda *a: read.append(a) or "")
    other = _beton_case(tmp_path)[1]
    other.labels[0] = (other.labels[0] + 1) % 3
    assert loaders.ensure_beton(path, other, progress=False, whole=True) == (path, True) and not read


def _ensure_cut(path, samples, capsys) -> str:
    from fastsigclr.data.loaders import ensure_beton

    os.truncate(path, 1000)
    ensure_beton(path, samples, progress=False)
    return capsys.readouterr().err


def test_a_beton_path_that_is_a_folder_or_a_link_is_refused(tmp_path, capsys):
    """A folder at the .beton's path with --force was an IsADirectoryError traceback; a link there
    to another file was used as the data ("wrote ... (0.0 MiB)"). Both are one line now, the
    file the link names untouched; `data write-ffcv` says "kept" of a .beton it did not write."""
    from folder_fixture import odd_images

    from fastsigclr.cli import main

    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / "train" / c).mkdir(parents=True)
        for i in range(3):
            (data / "train" / c / f"{i}.png").write_bytes(odd_images()["gray.png"])
    args = ["data", "write-ffcv", "--dataset", "folder", "--data-dir", str(data), "--no-progress"]
    assert main(args) == 0
    beton = data / "ffcv" / "folder-train.beton"
    assert f"\nwrote {beton} (" in capsys.readouterr().out
    assert main(args) == 0
    assert f"\nkept {beton} (" in capsys.readouterr().out
    other = tmp_path / "other.txt"
    other.write_text("not a beton")
    beton.unlink()
    for kind, make in (("a folder", beton.mkdir), ("a symbolic link", lambda: beton.symlink_to(other))):
        make()
        for force in ([], ["--force"]):
            with pytest.raises(SystemExit) as exit_info:
                main([*args, *force])
            err = capsys.readouterr().err.strip()
            assert exit_info.value.code == 2 and "Traceback" not in err, err
            assert err.splitlines()[-1] == (
                f"fastsigclr: error: {beton} is {kind}, not a file fastsigclr wrote: move it away (the "
                f"FFCV dataset is written in its place), or pass --ffcv-dir DIR, another folder"
            )
        assert other.read_text() == "not a beton"
        if kind == "a folder":
            beton.rmdir()
