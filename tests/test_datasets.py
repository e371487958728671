"""Dataset files: real download code against archives served from a loopback HTTP server."""

import dataclasses
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from fastsigclr.data.datasets import DATASETS, DatasetError, DatasetInfo, load_split, md5sum, prepare, verify

rng = np.random.default_rng(0)


def cifar_batch(n: int, label_key: str, num_classes: int, extra: dict | None = None) -> bytes:
    """A batch pickled as the official files are (bytes keys, protocol 2)."""
    record = {
        b"batch_label": b"test batch",
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        label_key.encode(): [int(x) for x in rng.integers(0, num_classes, n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    record.update(extra or {})
    return pickle.dumps(record, protocol=2)


def build_archive(name: str, path: Path, per_file: int = 6) -> DatasetInfo:
    """An archive in the official layout with a few images per file; returns the matching info."""
    info = DATASETS[name]
    files = {}
    for f in info.train_files + info.test_files:
        extra = (
            {b"coarse_labels": [int(x) for x in rng.integers(0, 20, per_file)]}
            if name == "cifar100"
            else None
        )
        files[f] = cifar_batch(per_file, info.label_key, info.num_classes, extra)
    names = {"cifar10": b"label_names", "cifar100": b"fine_label_names"}
    files["batches.meta" if name == "cifar10" else "meta"] = pickle.dumps({names[name]: [b"x"]}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for fname, payload in files.items():
            member = tarfile.TarInfo(f"{info.folder}/{fname}")
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return dataclasses.replace(
        info,
        md5=md5,
        train_count=per_file * len(info.train_files),
        test_count=per_file * len(info.test_files),
        file_md5=tuple((fname, hashlib.md5(payload).hexdigest()) for fname, payload in files.items()),
    )


@pytest.fixture
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_verify_extract_read(name, server, tmp_path):
    url, root = server
    info = build_archive(name, root / DATASETS[name].archive)
    data_dir = tmp_path / "data"
    folder = prepare(info, data_dir, url=f"{url}/{info.archive}", progress=False)
    assert folder == data_dir / info.folder and folder.is_dir()
    assert (data_dir / info.archive).is_file() and not (data_dir / (info.archive + ".partial")).exists()
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".")], "temporary folder left behind"
    x, y = load_split(info, folder, "train")
    assert x.shape == (info.train_count, 32, 32, 3) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.min() >= 0 and y.max() < info.num_classes
    xt, _ = load_split(info, folder, "test")
    assert len(xt) == info.test_count
    # The row layout is CHW per image: pixel (0, 0) of channel c sits at column c·1024.
    with open(folder / info.train_files[0], "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"]
    assert x[0, 0, 0].tolist() == [raw[0, 0], raw[0, 1024], raw[0, 2048]]
    # A second call reuses the folder without the network.
    assert prepare(info, data_dir, url="http://127.0.0.1:9/unreachable", progress=False) == folder
    assert set(verify(info, data_dir)) >= set(info.train_files)
    with pytest.raises(DatasetError, match=rf"not the official {name}: {info.train_files[0]} has md5"):
        verify(DATASETS[name], data_dir)  # the official sums: these generated files differ


def test_checksum_mismatch_removes_the_partial_download(server, tmp_path):
    url, root = server
    info = build_archive("cifar10", root / "cifar-10-python.tar.gz")
    bad = dataclasses.replace(info, md5="0" * 32)
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetError, match="checksum mismatch.*partial download was removed"):
        prepare(bad, data_dir, url=f"{url}/cifar-10-python.tar.gz", progress=False)
    assert not data_dir.exists()  # this call created it: a failed start removes it
    data_dir.mkdir()
    with pytest.raises(DatasetError, match="checksum mismatch"):
        prepare(bad, data_dir, url=f"{url}/cifar-10-python.tar.gz", progress=False)
    assert list(data_dir.iterdir()) == []  # a folder that was there stays


def test_corrupt_archive_on_disk_is_rejected(tmp_path):
    info = DATASETS["cifar10"]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / info.archive).write_bytes(b"not a tarball")
    with pytest.raises(DatasetError, match="corrupt or truncated; delete it"):
        prepare(info, data_dir, progress=False)
    assert not (data_dir / info.folder).exists()


def test_archive_with_matching_md5_but_broken_tar_is_rejected(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b garbage")
    info = dataclasses.replace(DATASETS["cifar10"], md5=md5sum(archive))
    with pytest.raises(DatasetError, match="not a readable archive"):
        prepare(info, data_dir, progress=False)
    assert not (data_dir / info.folder).exists()


def test_missing_files_without_network_say_where_to_put_them(tmp_path):
    info = DATASETS["cifar100"]
    with pytest.raises(DatasetError, match=r"expected .*cifar-100-python/ or .*cifar-100-python.tar.gz"):
        prepare(info, tmp_path, download_ok=False, progress=False)
    with pytest.raises(DatasetError, match="could not download.*put cifar-100-python.tar.gz"):
        prepare(info, tmp_path, url="http://127.0.0.1:9/nothing-listens-here", progress=False)
    assert not (tmp_path / (info.archive + ".partial")).exists()


def test_truncated_pickle_and_wrong_counts(server, tmp_path):
    url, root = server
    info = build_archive("cifar10", root / "cifar-10-python.tar.gz")
    folder = prepare(info, tmp_path / "data", url=f"{url}/cifar-10-python.tar.gz", progress=False)
    with pytest.raises(DatasetError, match="expected 50000"):
        load_split(DATASETS["cifar10"], folder, "train")
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DatasetError, match="data_batch_3 is truncated or corrupt"):
        load_split(info, folder, "train")
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="missing file .*test_batch"):
        load_split(info, folder, "test")


def test_real_cifar10_reads_in_the_official_layout(cifar10_dir):
    info = DATASETS["cifar10"]
    x, y = load_split(info, cifar10_dir / info.folder, "train")
    xt, yt = load_split(info, cifar10_dir / info.folder, "test")
    assert x.shape == (50_000, 32, 32, 3) and xt.shape == (10_000, 32, 32, 3)
    assert np.bincount(y).tolist() == [5000] * 10 and np.bincount(yt).tolist() == [1000] * 10
    # Mean pixel close to the published CIFAR-10 channel means used for normalisation.
    assert np.allclose(x.reshape(-1, 3).mean(0) / 255, info.mean, atol=0.01)


def test_data_commands_on_real_cifar10(cifar10_dir, capsys, monkeypatch):
    from fastsigclr.cli import main

    # The shared copy is rebuilt from JPEGs: its pixel batches are not the official files.
    verify = ["data", "verify", "--dataset", "cifar10", "--data-dir", str(cifar10_dir)]
    assert main(verify) == 1  # it loads: usable, not official
    err = capsys.readouterr().err
    assert "is not the official cifar10: data_batch_1 has md5" in err and "batches.meta" not in err
    folder = cifar10_dir / DATASETS["cifar10"].folder
    sums = tuple((name, md5sum(folder / name)) for name, _ in DATASETS["cifar10"].file_md5)
    monkeypatch.setitem(DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], file_md5=sums))
    assert main(verify) == 0
    out = capsys.readouterr().out
    assert "data_batch_1" in out and "md5s match; layout and counts OK: 50000 train, 10000 test" in out
    assert (
        main(["data", "download", "--dataset", "cifar10", "--data-dir", str(cifar10_dir), "--no-progress"])
        == 0
    )
    assert "50000 train, 10000 test images" in capsys.readouterr().out
