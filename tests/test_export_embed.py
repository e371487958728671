"""`fastsigclr export` and `embed` on a real (tiny) CIFAR-10 run: the exported encoder rebuilds the
checkpoint's network exactly, and embeddings equal the features evaluation extracts."""

import json
import os
import shutil
import signal
import stat

import numpy as np
import pytest
import safetensors.torch as safetensors_torch
import torch
from run_fixture import fails_with

from fastsigclr import checkpoint
from fastsigclr.cli import main
from fastsigclr.config import FastSigCLRError
from fastsigclr.eval import extract_features
from fastsigclr.export import FILES, labels_path, load_backbone, load_projector, read_metadata
from fastsigclr.runmodel import load_run_model


@pytest.fixture(scope="module")
def run_dir(cifar10_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    args = (
        f"train --dataset cifar10 --data-dir {cifar10_dir} --device cpu --limit-train 64 --limit-test 48 "
        f"--width 8 --proj-dims 32,16 --batch-size 32 --epochs 1 --knn-every 0 --no-progress --out {out}"
    ).split()
    assert main(args) == 0
    return out


@pytest.mark.parametrize("with_projector", [False, True])
def test_export_round_trip(run_dir, tmp_path, with_projector, capsys):
    path = tmp_path / "enc.safetensors"
    extra = ["--projector"] if with_projector else []
    assert main(["export", "--run", str(run_dir), "--out", str(path), *extra]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    meta = read_metadata(path)
    assert (meta["arch"], meta["width"], meta["out_dim"], json.loads(meta["proj_dims"])) == (
        "resnet18",
        "8",
        "64",
        [32, 16],
    )
    assert meta["epoch"] == "1" and meta["dataset"] == "cifar10" and len(json.loads(meta["mean"])) == 3
    assert (meta["image_size"], meta["store_size"]) == ("32", "37")  # CIFAR's 32² fed as they are
    loaded = load_run_model(run_dir, "cpu")
    info, images = loaded["info"], torch.from_numpy(loaded["data"].arrays("test")[0][:8])
    expected = extract_features(loaded["backbone"], images, info.mean, info.std, torch.device("cpu"))
    backbone = load_backbone(path)
    assert not backbone.training
    got = extract_features(backbone, images, info.mean, info.std, torch.device("cpu"))
    assert torch.equal(got, expected)
    ckpt_state = loaded["backbone"].state_dict()
    assert all(torch.equal(v, ckpt_state[k]) for k, v in backbone.state_dict().items())
    if with_projector:
        state = checkpoint.load(run_dir / "checkpoints" / "last.pt")["model"]
        head = load_projector(path)
        assert all(torch.equal(v, state[f"projector.{k}"]) for k, v in head.state_dict().items())
        assert head(got).shape == (len(images), 16)
    else:
        with pytest.raises(FastSigCLRError, match="holds no projector; export it again with --projector"):
            load_projector(path)


def test_embed_matches_extract_features(run_dir, tmp_path, capsys):
    out = tmp_path / "emb" / "test.npy"
    for target in (out, tmp_path / "again.npy"):
        assert (
            main(["embed", "--run", str(run_dir), "--split", "test", "--out", str(target), "--no-progress"])
            == 0
        )
    said = capsys.readouterr().out
    assert f"wrote {out} (48, 64), {labels_path(out)}, epoch 1\n" in said  # which checkpoint it embedded
    assert not labels_path(out, FILES).exists()  # CIFAR's rows come from arrays, not files
    feats, labels = np.load(out), np.load(labels_path(out))
    assert labels_path(out).name == "test.labels.npy"
    assert feats.shape == (48, 64) and feats.dtype == np.float32
    assert labels.shape == (48,) and labels.dtype == np.int64
    assert np.array_equal(feats, np.load(tmp_path / "again.npy"))  # deterministic
    loaded = load_run_model(run_dir, "cpu")
    info = loaded["info"]
    test_images, test_labels = loaded["data"].arrays("test")
    expected = extract_features(loaded["backbone"], test_images, info.mean, info.std, torch.device("cpu"))
    assert np.array_equal(feats, expected.numpy())
    assert np.array_equal(labels, test_labels)
    train_out = tmp_path / "train.npy"
    assert (
        main(["embed", "--run", str(run_dir), "--split", "train", "--out", str(train_out), "--no-progress"])
        == 0
    )
    assert np.load(train_out).shape == (64, 64)


@pytest.mark.parametrize(("split", "gone"), [("train", "test_batch"), ("test", "data_batch_3")])
def test_embed_reads_only_its_split(run_dir, cifar10_dir, tmp_path, split, gone, capsys):
    """A copy without the other split's batch embeds the split asked for, equal to the whole
    copy's; the missing batch is still the error of the split that needs it."""
    folder = tmp_path / "data" / "cifar-10-batches-py"
    shutil.copytree(cifar10_dir / "cifar-10-batches-py", folder)
    (folder / gone).unlink()
    whole, part = tmp_path / "whole.npy", tmp_path / "part.npy"
    base = ["embed", "--run", str(run_dir), "--no-progress"]
    assert main([*base, "--split", split, "--out", str(whole)]) == 0
    capsys.readouterr()
    assert main([*base, "--split", split, "--out", str(part), "--data-dir", str(folder.parent)]) == 0
    assert np.array_equal(np.load(part), np.load(whole)) and len(np.load(part)) == (
        64 if split == "train" else 48
    )
    # The copy's files are not the official ones (md5): those of the split not read are not said.
    assert "data_batch_1" not in capsys.readouterr().err or split == "train"
    other = "test" if split == "train" else "train"
    line = fails_with([*base, "--split", other, "--out", str(part), "--data-dir", str(folder.parent)], capsys)
    assert f"missing file {folder / gone}" in line


def test_clear_errors(run_dir, tmp_path, capsys):
    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    shutil.copy(run_dir / "config.json", no_ckpt / "config.json")
    foreign = tmp_path / "foreign.safetensors"
    safetensors_torch.save_file({"w": torch.zeros(2)}, str(foreign))
    cases = [
        (
            ["export", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "x.safetensors")],
            f"--run {tmp_path / 'missing'} does not exist",
        ),
        (["export", "--run", str(no_ckpt), "--out", str(tmp_path / "x.safetensors")], "has no checkpoint"),
        (["embed", "--run", str(no_ckpt), "--out", str(tmp_path / "x.npy")], "has no checkpoint"),
        (
            ["embed", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npy")],
            f"--run {tmp_path / 'missing'} does not exist",
        ),
        (["embed", "--run", str(run_dir), "--out", str(tmp_path / "x.npz")], "--out must name a .npy file"),
        (
            ["export", "--out", str(tmp_path / "x.safetensors")],
            "--run DIR and --out FILE.safetensors are both",
        ),
        *(  # the run's own files, however named
            (["export", "--run", str(run_dir), "--out", str(out)], f"is the run's own {own}; name another")
            for out, own in (
                (run_dir / "checkpoints" / "last.pt", "checkpoints/last.pt"),
                (run_dir / "checkpoints" / ".." / "config.json", "config.json"),
                (run_dir / "run.lock", "run.lock"),
            )
        ),
        (
            ["embed", "--run", str(run_dir), "--out", str(run_dir / "tensorboard" / "x.npy")],
            "is the run's own tensorboard/x.npy",
        ),
    ]
    owned = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for args, message in cases:
        with pytest.raises(SystemExit):
            main(args)
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.npy").exists()
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == owned
    with pytest.raises(FastSigCLRError, match="was not written by `fastsigclr export`"):
        load_backbone(foreign)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(FastSigCLRError, match="is not a safetensors file"):
        load_backbone(junk)
    with pytest.raises(FastSigCLRError, match="no exported encoder at"):
        load_backbone(tmp_path / "nothing.safetensors")


def test_an_out_that_is_not_a_regular_file_is_refused(run_dir, tmp_path, capsys):
    """A FIFO or device node as --out (or where embed's labels go) was replaced by a regular file
    (as root, --out /dev/null replaced /dev/null), a symbolic link by a file in its place; a
    folder where the labels go was named as --out with a fix that did not apply; --out
    a.labels.npy replaced the labels of a.npy with features. Each is one line, and nothing changes."""
    os.mkfifo(tmp_path / "fifo")
    os.mkfifo(tmp_path / "fifo.npy")
    os.mkfifo(tmp_path / "f.labels.npy")
    os.symlink(tmp_path / "target", tmp_path / "link")
    (tmp_path / "d.labels.npy").mkdir()
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    export = ["export", "--run", str(run_dir), "--out"]
    embed = ["embed", "--run", str(run_dir), "--no-progress", "--out"]
    cases = [
        (
            [*export, str(tmp_path / "fifo")],
            f"--out {tmp_path / 'fifo'} is a FIFO (named pipe), not a regular",
        ),
        (
            [*export, str(tmp_path / "link")],
            f"--out {tmp_path / 'link'} is a symbolic link (to {tmp_path}/target)",
        ),
        ([*embed, str(tmp_path / "fifo.npy")], "fifo.npy is a FIFO (named pipe), not a regular file"),
        (
            [*embed, str(tmp_path / "f.npy")],
            f"{tmp_path}/f.labels.npy, where embed writes the labels of --out {tmp_path}/f.npy, is a FIFO "
            "(named pipe): remove it or choose another --out",
        ),
        (
            [*embed, str(tmp_path / "d.npy")],
            f"{tmp_path}/d.labels.npy, where embed writes the labels of --out {tmp_path}/d.npy, is a "
            "folder: remove it or choose another --out",
        ),
        (
            [*embed, str(tmp_path / "a.labels.npy")],
            f"--out {tmp_path}/a.labels.npy is where embed writes the labels of --out {tmp_path}/a.npy: name "
            f"a features file not ending in .labels.npy, e.g. --out {tmp_path}/a.features.npy",
        ),
    ]
    if os.geteuid() == 0:
        cases.append(([*export, str(tmp_path / "null")], f"--out {tmp_path / 'null'} is a character device"))
    before = {p.name: os.lstat(p) for p in tmp_path.iterdir()}
    for args, message in cases:
        assert message in fails_with(args, capsys), args
    after = {p.name: os.lstat(p) for p in tmp_path.iterdir()}
    assert {n: (s.st_mode, s.st_ino) for n, s in after.items()} == {
        n: (s.st_mode, s.st_ino) for n, s in before.items()
    }


def test_a_foreign_or_mismatched_checkpoint_is_one_line(run_dir, tmp_path, capsys):
    """eval, embed and export check what the checkpoint holds before they use it: a torch file that
    is not a training checkpoint, and another model's weights (export used to write them, labelled
    with this run's width, into a file that load_backbone then could not read)."""
    run = shutil.copytree(run_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    good = checkpoint.load(last)
    out = tmp_path / "x.safetensors"
    commands = (
        ["eval", "--run", str(run), "knn", "--no-progress"],
        ["embed", "--run", str(run), "--out", str(tmp_path / "x.npy"), "--no-progress"],
        ["export", "--run", str(run), "--out", str(out)],
    )
    for foreign in ({"state_dict": {}}, [1, 2, 3]):
        torch.save(foreign, last)
        for args in commands:
            assert "is not a fastsigclr training checkpoint" in fails_with(args, capsys), args
    wider = {**good, "model": {**good["model"], "backbone.stem.0.weight": torch.zeros(16, 3, 3, 3)}}
    checkpoint.save_atomic(wider, last)  # a whole checkpoint of a wider model (its own digest)
    for args in commands:
        line = fails_with(args, capsys)
        assert "does not fit this run's model" in line and "backbone.stem.0.weight" in line, (args, line)
    assert not out.exists() and not (tmp_path / "x.npy").exists()


def test_an_exported_file_edited_by_hand_is_one_line(run_dir, tmp_path):
    path = tmp_path / "enc.safetensors"
    assert main(["export", "--run", str(run_dir), "--out", str(path)]) == 0
    tensors = safetensors_torch.load_file(str(path))
    edited = tmp_path / "edited.safetensors"
    safetensors_torch.save_file(tensors, str(edited), metadata={**read_metadata(path), "width": "16"})
    with pytest.raises(FastSigCLRError, match=r"do not fit the ResNet its metadata describes \(\S+ is \(8,"):
        load_backbone(edited)


def test_load_backbone_takes_a_device_and_refuses_values_export_never_writes(run_dir, tmp_path):
    """map_location as a torch.device failed inside safetensors, "cuda" without a GPU inside
    pin_memory; weights with NaN (which export refuses to write) or of an integer dtype loaded."""
    path = tmp_path / "enc.safetensors"
    assert main(["export", "--run", str(run_dir), "--out", str(path)]) == 0
    expected = load_backbone(path).state_dict()
    got = load_backbone(path, torch.device("cpu")).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in got.items())
    with pytest.raises(FastSigCLRError, match="map_location 'gpu0' is not a device"):
        load_backbone(path, "gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(FastSigCLRError, match="map_location 'cuda': this machine has no CUDA device"):
            load_backbone(path, "cuda")
    tensors, meta = safetensors_torch.load_file(str(path)), read_metadata(path)
    name = "backbone.stem.0.weight"
    for value, said in ((torch.full_like(tensors[name], float("nan")), "NaN or inf"),
                        (tensors[name].long(), "torch.int64, not torch.float32")):  # fmt: skip
        edited = tmp_path / "edited.safetensors"
        safetensors_torch.save_file({**tensors, name: value}, str(edited), metadata=meta)
        with pytest.raises(FastSigCLRError, match=f"its backbone tensor stem.0.weight holds {said}"):
            load_backbone(edited)


def test_an_interrupted_embed_leaves_the_previous_pair(run_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the labels are written: the features and labels already there are the
    previous embed's pair, not new features beside old labels; nothing temporary is left."""
    out = tmp_path / "pair.npy"
    args = ["embed", "--run", str(run_dir), "--out", str(out), "--no-progress"]
    assert main([*args, "--split", "test"]) == 0
    before = np.load(out), np.load(labels_path(out))
    real = checkpoint._write_temporary

    def interrupted(path, tmp, write, fix):
        if path == labels_path(out):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: a KeyboardInterrupt here
        real(path, tmp, write, fix)

    monkeypatch.setattr(checkpoint, "_write_temporary", interrupted)
    assert main([*args, "--split", "train"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert np.array_equal(np.load(out), before[0]) and np.array_equal(np.load(labels_path(out)), before[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair.labels.npy", "pair.npy"]


def test_a_config_written_before_configs_were_resolved(cifar10_dir, tmp_path, capsys):
    """Old config.json files left arch and proj_dims null when the preset's were used: eval, embed
    and export all rebuild the preset's model (eval built one without a projector, and refused
    the run's own checkpoint as another model's)."""
    out = tmp_path / "run"
    args = (
        f"train --dataset cifar10 --data-dir {cifar10_dir} --device cpu --limit-train 64 --limit-test 48 "
        f"--width 8 --batch-size 32 --epochs 1 --knn-every 0 --no-progress --out {out}"
    ).split()
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["proj_dims"] == [2048, 2048, 64]  # the cifar10 preset's
    config["config"].update(arch=None, proj_dims=None)
    (out / "config.json").write_text(json.dumps(config))
    assert main(["eval", "knn", "--run", str(out), "--no-progress"]) == 0
    assert main(["embed", "--run", str(out), "--out", str(tmp_path / "f.npy"), "--no-progress"]) == 0
    assert main(["export", "--run", str(out), "--out", str(tmp_path / "enc.safetensors"), "--projector"]) == 0
    meta = read_metadata(tmp_path / "enc.safetensors")
    assert (meta["arch"], json.loads(meta["proj_dims"])) == ("resnet18", [2048, 2048, 64])
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit,message,unrecorded",
    [
        ({"width": 100000}, "config.json says --width 100000 and its checkpoint", "does not fit this run's"),
        ({"proj_dims": []}, "config.json says --proj-dims [] and its checkpoint", "cannot be built"),
        ({"dataset": "cifar100"}, "config.json says --dataset 'cifar100' and its checkpoint", None),
    ],
)
def test_an_edited_config_is_one_line_before_a_model_is_built(
    run_dir, tmp_path, edit, message, unrecorded, capsys
):
    """config.json is a file a user edits: a "width": 100000 built (and allocated) a 360 GB model
    before any comparison, "proj_dims": [] ended in a traceback, and "dataset": "cifar100" exported
    this CIFAR-10 run's weights labelled with CIFAR-100's normalisation. The checkpoint records the
    run's settings; without that record (a hand-made checkpoint) the model's shapes are compared,
    on the meta device."""
    run = shutil.copytree(run_dir, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["config"].update(edit)
    (run / "config.json").write_text(json.dumps(config))
    commands = (
        ["eval", "--run", str(run), "knn", "--no-progress"],
        ["embed", "--run", str(run), "--out", str(tmp_path / "x.npy"), "--no-progress"],
        ["export", "--run", str(run), "--out", str(tmp_path / "x.safetensors")],
    )
    for args in commands:
        assert message in fails_with(args, capsys), args
    if unrecorded is None:
        return
    last = run / "checkpoints" / "last.pt"
    checkpoint.save_atomic({k: v for k, v in checkpoint.load(last).items() if k != "config"}, last)
    for args in commands:
        assert unrecorded in fails_with(args, capsys), args
    assert not any(tmp_path.glob("x.*"))


@pytest.mark.parametrize(
    "edit,part,message",
    [
        (
            {"width": "100000"},
            "backbone",
            "do not fit the ResNet its metadata describes (stages.0.0.bn1.bias is (8,), not (100000,)",
        ),
        (
            {"width": "abc"},
            "backbone",
            "its metadata does not describe a backbone (ValueError: invalid literal",
        ),
        (
            {"arch": "resnet7"},
            "backbone",
            "its metadata does not describe a backbone (ValueError: unknown arch",
        ),
        ({"arch": None}, "backbone", "its metadata does not describe a backbone (KeyError: 'arch')"),
        ({"proj_dims": "[32,"}, "projector", "its metadata does not describe a projector (JSONDecodeError"),
        (
            {"proj_dims": "[]"},
            "projector",
            "its metadata does not describe a projector (ValueError: projector",
        ),
        ({"has_projector": None}, "projector", "holds no projector; export it again with --projector"),
        ({"out_dim": "-1"}, "projector", "its metadata does not describe a projector (RuntimeError"),
    ],
)
def test_tampered_metadata_is_one_line_before_a_model_is_built(run_dir, tmp_path, edit, part, message):
    """load_backbone and load_projector build the model the file's metadata describes: a missing or
    unreadable field ended in a KeyError or ValueError traceback, and a "width" of 100000 allocated
    a 360 GB ResNet before its shapes were compared with the file's (now on the meta device)."""
    path = tmp_path / "enc.safetensors"
    assert main(["export", "--run", str(run_dir), "--out", str(path), "--projector"]) == 0
    meta = {k: v for k, v in {**read_metadata(path), **edit}.items() if v is not None}
    edited = tmp_path / "edited.safetensors"
    safetensors_torch.save_file(safetensors_torch.load_file(str(path)), str(edited), metadata=meta)
    load = load_backbone if part == "backbone" else load_projector
    with pytest.raises(FastSigCLRError) as err:
        load(edited)
    assert str(err.value).startswith(f"{edited}") and message in str(err.value), str(err.value)


def test_export_refuses_non_finite_weights(run_dir, tmp_path, capsys):
    run = shutil.copytree(run_dir, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    state = checkpoint.load(last)
    weight = state["model"]["backbone.stem.0.weight"].clone()
    weight[0, 0, 0, 0] = float("nan")
    checkpoint.save_atomic({**state, "model": {**state["model"], "backbone.stem.0.weight": weight}}, last)
    out = tmp_path / "enc.safetensors"
    line = fails_with(["export", "--run", str(run), "--out", str(out)], capsys)
    assert "holds non-finite weights (backbone.stem.0.weight has NaN or inf)" in line and not out.exists()


def test_an_exported_file_without_its_tensors_is_refused_before_a_model_is_built(
    run_dir, tmp_path, monkeypatch
):
    """Only the shapes of the tensors a file holds were compared: a file with the projector's
    tensors alone and "width": "512" built a 2.9 GB ResNet on the CPU before saying what was
    missing. Now names are compared on the meta device too, and no model is built for real."""
    from fastsigclr import export

    path = tmp_path / "enc.safetensors"
    assert main(["export", "--run", str(run_dir), "--out", str(path), "--projector"]) == 0
    tensors = {k: v for k, v in safetensors_torch.load_file(str(path)).items() if k.startswith("projector.")}
    edited = tmp_path / "edited.safetensors"
    safetensors_torch.save_file(tensors, str(edited), metadata={**read_metadata(path), "width": "512"})
    built = []
    real = export.ResNet
    monkeypatch.setattr(export, "ResNet", lambda *a: built.append(torch.empty(0).device.type) or real(*a))
    with pytest.raises(
        FastSigCLRError, match=r"do not fit a ResNet built from its metadata \(missing \['stem"
    ):
        load_backbone(edited)
    assert built == ["meta"]
    assert load_backbone(path) is not None and built[1:] == ["meta", "cpu"]  # the whole file: both
