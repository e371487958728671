"""Bring your own images: ``--dataset folder`` through the CLI (real JPEGs with each loader and
kNN on val/, odd formats, broken files, an unlabeled folder, a split too large for the gpu
loader's memory budget) and the readers of the image-folder layout."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from folder_fixture import odd_images, write_cifar_folder, write_odd_folder
from PIL import Image
from run_fixture import fails_with

import fastsigclr.data.folder as folder_module
from fastsigclr.cli import main
from fastsigclr.data import DATASETS
from fastsigclr.data.folder import FolderReader
from fastsigclr.data.samples import decode_file
from fastsigclr.data.splits import open_splits
from fastsigclr.recipe import store_size_note
from fastsigclr.runlog import read_metrics


def folder_args(data_dir, out, *extra) -> list[str]:
    return [
        *(
            f"train --dataset folder --data-dir {data_dir} --device cpu --arch resnet18 --width 8 "
            f"--proj-dims 32,16 --batch-size 16 --epochs 1 --knn-k 5 --log-every 1 --image-size 32 "
            f"--no-progress --no-tensorboard --out {out}"
        ).split(),
        *extra,
    ]


def summary(out) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("loader", ["gpu", "dali", "ffcv"], ids=lambda name: f"{name}-loader")
def test_real_jpeg_folder_trains_with_each_loader_and_knn_on_val(loader, tmp_path, capsys):
    """CIFAR-10's JPEGs written as train/<class>/ (8 per class) and val/<class>/ (4 per class)."""
    if loader != "gpu":
        pytest.importorskip({"dali": "nvidia.dali", "ffcv": "ffcv"}[loader])
    data = write_cifar_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(folder_args(data, out, "--loader", loader)) == 0
    err = capsys.readouterr().out
    assert "train: 80 images in 10 classes (airplane 8, automobile 8" in err and "val: 40 images" in err
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 5 and all(math.isfinite(r["loss"]) for r in steps)
    result = summary(out)
    assert result["test_images"] == 40 and 0.0 <= result["knn_acc"] <= 1.0


def test_odd_formats_modes_and_sizes_become_rgb(tmp_path):
    for name, payload in odd_images().items():
        path = tmp_path / name
        path.write_bytes(payload)
        rgb = decode_file(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, name
    gray = decode_file(tmp_path / "gray.png")
    assert np.array_equal(gray[..., 0], gray[..., 2])
    alpha = decode_file(tmp_path / "alpha.png")  # alpha 0 in the first column: white
    assert alpha[:, 0].min() == 255
    deep = decode_file(tmp_path / "deep16.png")  # 16-bit: the high byte, not clipped to 255
    assert deep.max() < 255 or deep.min() > 0


def test_the_start_counts_the_files_that_cannot_be_read_apart(tmp_path, capsys):
    """It said "train: 16 images" and then "1 of 17 images cannot be decoded"."""
    data = write_odd_folder(tmp_path / "data")
    (data / "train" / "class0" / "garbage.png").write_text("not an image")
    (data / "val" / "class1" / "garbage.png").write_text("not an image")
    with pytest.raises(SystemExit):  # the undecodable files: listed, and the verdict
        main(["data", "verify", "--dataset", "folder", "--data-dir", str(data), "--no-progress"])
    out = capsys.readouterr().out
    assert "train: 16 images in 2 classes (class0 8, class1 8) and 1 that cannot be read" in out, out
    assert re.search(r"val: \d+ images and 1 that cannot be read", out), out


def test_images_of_mixed_sizes_below_the_crop_are_noted(tmp_path):
    """40-90 px images of mixed sizes cropped at 224 were upsampled without a word."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i, side in enumerate((40, 90, 70, 90)):
            pixels = rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / c / f"{i}.png")
    data = open_splits(DATASETS["folder"], tmp_path, announce=False)
    note = store_size_note(data, 73, 64)
    assert note == (
        "note: 2 of the 8 folder train images have a shorter side below --image-size 64 (the smallest: "
        "40×43): they are upsampled to 73²; an --image-size near their size avoids that"
    ), note
    assert store_size_note(data, 46, 40) is None  # no shorter side is below 40


def test_odd_folder_trains_through_the_cli(tmp_path, capsys):
    """Mixed sizes and modes: the gpu loader stores them at --store-size², kNN runs on val/."""
    data = write_odd_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(folder_args(data, out, "--batch-size", "8", "--store-size", "36")) == 0
    said = capsys.readouterr()
    assert "train: 16 images in 2 classes (class0 8, class1 8)" in said.out
    assert "--store-size" not in said.err  # 36 ≥ --image-size 32: nothing to say
    assert summary(out)["knn_acc"] is not None


def test_a_store_size_below_the_image_size_is_said(tmp_path):
    """Images kept smaller than the views: one note naming both options and the default. Images
    of one size that fits --store-size² are kept as they are: smaller than --image-size, every view
    is upsampled from them too, which was said of neither (30 × 10 images under --image-size 64)."""
    mixed = open_splits(DATASETS["folder"], write_odd_folder(tmp_path / "odd"), announce=False)
    note = store_size_note(mixed, 24, 32)
    assert note is not None and "--store-size 24 is below --image-size 32" in note and "(37," in note
    assert store_size_note(mixed, 32, 32) is None and store_size_note(mixed, 36, 32) is None
    uniform = open_splits(DATASETS["folder"], write_cifar_folder(tmp_path / "cifar", 2, 1, 2), announce=False)
    kept = store_size_note(uniform, 33, 40)  # 32² kept as they are, views of 40²
    assert kept == (
        "note: the images are 32×32 (height × width), smaller than --image-size 40: they are kept as "
        "they are and every view is upsampled from them"
    )
    assert store_size_note(uniform, 33, 32) is None  # 32² kept, views of 32²: nothing to say
    assert store_size_note(uniform, 24, 32) is not None  # 32² stored at 24²


def test_broken_images_are_listed_and_skipped_or_stop_the_run(tmp_path, capsys):
    data = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=1, classes=5)
    truncated = next((data / "train" / "bird").iterdir())
    truncated.write_bytes(truncated.read_bytes()[:-300])  # its header reads; its decoding fails
    garbage = data / "train" / "cat" / "notes.jpg"
    garbage.write_bytes(b"not an image at all")  # fails when its header is read
    out = tmp_path / "run"
    assert main(folder_args(data, out, "--batch-size", "8", "--max-broken", "0.2")) == 0
    err = capsys.readouterr().err
    assert f"{garbage}:" in err and f"{truncated}:" in err
    assert "skipped that image" in err  # at indexing
    assert "(and 1 more listed above)" in err and "skipped those 2 images" in err  # at decoding
    assert summary(out)["train_images"] == 19  # 20 written + 1 garbage, 2 left out
    # Each pass alone is within 7% (1 of 21, 1 of 20); the split is not (2 of 21): refused.
    err = fails_with(
        folder_args(data, tmp_path / "run3", "--batch-size", "8", "--max-broken", "0.07"), capsys
    )
    assert "2 of 21 images (9.5%) cannot be decoded" in err and "more than --max-broken 0.07" in err, err
    with pytest.raises(SystemExit) as exc:  # the default threshold, 1%: stop, naming the fix
        main(folder_args(data, tmp_path / "run2", "--batch-size", "8"))
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot be decoded (first: " in last and "more than --max-broken 0.01" in last
    assert "Traceback" not in last
    with pytest.raises(SystemExit) as exc:  # refused up front, both files named
        main(["data", "verify", "--dataset", "folder", "--data-dir", str(data), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(garbage) in err and str(truncated) in err
    assert "every image must decode" in err and "--max-broken" not in err  # verify takes no such option


def test_verify_passes_a_clean_folder(tmp_path, capsys):
    data = write_odd_folder(tmp_path / "data")
    assert main(["data", "verify", "--dataset", "folder", "--data-dir", str(data), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train/: all 16 images decode" in out and "val/: all 4 images decode" in out  # it said test/
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted((data / "train").rglob("*.*"))[:5]:
        (flat / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    assert main(["data", "verify", "--dataset", "folder", "--data-dir", str(flat), "--no-progress"]) == 0
    assert "flat/ (flat): all 5 images decode" in capsys.readouterr().out  # it said train/


def test_unlabeled_flat_folder_trains_with_knn_and_probe_off(tmp_path, capsys):
    data = tmp_path / "flat"
    data.mkdir()
    for name, payload in odd_images().items():
        for k in range(2):
            (data / f"{k}-{name}").write_bytes(payload)
    (data / "README.txt").write_text("not an image")
    out = tmp_path / "run"
    assert main(folder_args(data, out, "--batch-size", "8", "--store-size", "36")) == 0
    out_text = capsys.readouterr().out
    assert out_text.count("16 unlabeled images: the kNN monitor and the probe are off") == 1
    assert "ignored 1 files that are not images" in out_text
    epochs = [r for r in read_metrics(out) if r["kind"] == "epoch"]
    assert (
        epochs[0]["probe_acc"] is None and epochs[0]["knn_acc"] is None and math.isfinite(epochs[0]["loss"])
    )
    # Features of one's own unlabeled images: embed writes them, with label -1 for "no class".
    features = tmp_path / "f.npy"
    embed = ["embed", "--run", str(out), "--device", "cpu", "--no-progress", "--split", "train"]
    assert main([*embed, "--out", str(features)]) == 0
    assert np.load(features).shape[0] == 16 and set(np.load(tmp_path / "f.labels.npy").tolist()) == {-1}
    with pytest.raises(SystemExit):  # embed's default split, test, is not there: the fix is named
        main([*embed[:-2], "--out", str(tmp_path / "t.npy")])
    assert (
        "has no test images (no val/ folder): embed the images it was pre-trained on with --split train"
        in (capsys.readouterr().err)
    )


def test_too_large_for_the_memory_budget_names_the_streaming_loaders(tmp_path, capsys):
    data = write_odd_folder(tmp_path / "data")
    with pytest.raises(SystemExit) as exc:  # 16 images at 36²·3 bytes = 62 KB > 0.00001 GiB (10.7 KB)
        main(
            folder_args(
                data,
                tmp_path / "run",
                "--batch-size",
                "8",
                "--store-size",
                "36",
                "--memory-budget",
                "0.00001",
            )
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # bytes where GiB would read 0.00 on both sides ("needs 0.00 GiB, more than its budget of 0.00 GiB")
    assert re.search(r"needs [\d,]+ bytes, more than its budget of 10,737 bytes", err), err
    assert "--loader dali" in err and "--loader ffcv" in err


def test_imagenet100_keeps_its_100_classes(tmp_path, monkeypatch):
    """The ImageNet layout with the subset's wnids and two others: only the subset is read."""
    info = DATASETS["imagenet100"]
    rgb = odd_images()["rgb.jpg"]
    for wnid in (*info.classes[:100], "n99999999", "n00000001"):
        for split in ("train", "val"):
            (tmp_path / split / wnid).mkdir(parents=True)
            (tmp_path / split / wnid / f"{wnid}_0.JPEG").write_bytes(rgb)
    reader = FolderReader(info, tmp_path)
    train, val = reader.index("train"), reader.index("test")
    assert len(info.classes) == len(set(info.classes)) == 100
    assert len(train) == len(val) == 100 and list(reader.classes) == sorted(info.classes)
    assert train.labels.tolist() == list(range(100)) and train.sizes[0].tolist() == [40, 70]
    (tmp_path / "train" / info.classes[5] / f"{info.classes[5]}_0.JPEG").unlink()
    (tmp_path / "train" / info.classes[5]).rmdir()
    with pytest.raises(Exception, match="lacks 1 of the 100 class folders of imagenet100"):
        FolderReader(info, tmp_path)


def test_bench_augment_has_a_folder_case(tmp_path):
    """`bench augment`'s folder of mixed-size JPEGs: each loader's rate next to PIL's, same run."""
    from fastsigclr.bench.augment import BenchAugmentConfig, run

    cfg = BenchAugmentConfig(
        backends=("gpu", "pil"),
        sizes=(32,),
        images=16,
        batch_size=8,
        workers=0,
        reps=1,
        folder_size=32,
        folder_store=36,
        plan_images=64,
        device="cpu",
        out=str(tmp_path),
    )
    rows = [r for r in run(cfg)["results"] if r["case"] == "folder"]
    assert [r["backend"] for r in rows] == ["gpu", "pil"] and all(r["status"] == "ok" for r in rows)
    gpu, pil = rows
    assert gpu["speedup_vs_pil"] == gpu["views_per_s"] / pil["views_per_s"] and gpu["setup_s"] > 0
    assert (tmp_path / "augment-cpu.png").is_file()


def test_embed_reads_only_the_split_it_embeds(tmp_path, capsys, monkeypatch):
    """A folder whose val/ is gone: embed --split train still works (it needed both splits), and
    --split test and eval say which labelled split is missing, before reading train/ (for a large
    folder, minutes of image headers)."""
    import shutil

    import fastsigclr.recipe

    data = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=1, classes=4)
    out = tmp_path / "run"
    assert main(folder_args(data, out)) == 0
    shutil.rmtree(data / "val")
    embed = ["embed", "--run", str(out), "--device", "cpu", "--no-progress", "--out"]
    assert main([*embed, str(tmp_path / "train.npy"), "--split", "train"]) == 0
    assert np.load(tmp_path / "train.npy").shape[0] == 16
    assert np.load(tmp_path / "train.labels.npy").tolist() == sorted([0, 1, 2, 3] * 4)
    monkeypatch.setattr(fastsigclr.recipe, "load_data", lambda *a, **k: pytest.fail("read the data"))
    err = fails_with([*embed, str(tmp_path / "test.npy"), "--split", "test"], capsys)
    assert "has no test images (no val/ folder): embed the images it was pre-trained on with --split" in err
    err = fails_with(["eval", "--run", str(out)], capsys)
    assert "has no labelled test images (a flat folder, or no val/)" in err, err
    assert "rename it val/" not in err
    (data / "test").mkdir()  # a torchvision-style name, which no one reads
    err = fails_with(["eval", "--run", str(out)], capsys)
    assert err.endswith("; test/ was found and is not read: rename it val/"), err
    assert not (tmp_path / "test.npy").exists()


def test_a_limited_split_is_not_charged_the_whole_splits_broken_files(capsys):
    """A split of 84 with 4 unreadable headers (4.8%): --limit-train's subset of 10, one of which
    fails to decode (10%), passes --max-broken 0.15; its decode pass was charged the whole split's
    4 as well (5 of 14, 36%) and refused the run."""
    from fastsigclr.data.samples import SampleIndex

    def decode(i: int) -> np.ndarray:
        if i == 3:
            raise OSError("image file is truncated")
        return np.zeros((8, 8, 3), np.uint8)

    split = SampleIndex("train", np.arange(80) % 10, np.full((80, 2), 8), decode)
    split.broken = [(f"junk{i}.jpg", "cannot identify image file") for i in range(4)]
    subset = split.subset(np.arange(10))
    assert len(subset.in_memory(max_broken=0.15, progress=False)) == 9
    assert "1 of 10 images cannot be decoded" in capsys.readouterr().err


def test_nested_images_hidden_folders_and_empty_classes(tmp_path):
    """A class's images in subfolders are read (they were left out without a word); hidden folders
    (.ipynb_checkpoints) are skipped in train/ and val/ alike; an empty class folder is named."""
    payload = next(iter(odd_images().values()))
    data = tmp_path / "data"
    for rel in ("train/cat/a.png", "train/cat/2019/b.png", "train/cat/2019/deeper/c.png", "val/cat/d.png"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(payload)
    (data / "train" / "dog").mkdir()
    for hidden in (
        "train/.ipynb_checkpoints/x.png",
        "val/.ipynb_checkpoints/y.png",
        "train/cat/.cache/z.png",
    ):
        (data / hidden).parent.mkdir(parents=True, exist_ok=True)
        (data / hidden).write_bytes(payload)
    reader = FolderReader(DATASETS["folder"], data)
    train, test = reader.index("train"), reader.index("test")
    assert reader.classes == ["cat", "dog"]
    assert [p.relative_to(data / "train").as_posix() for p in train.files] == [
        "cat/2019/b.png",
        "cat/2019/deeper/c.png",
        "cat/a.png",
    ]
    assert train.labels.tolist() == [0, 0, 0] and len(test) == 1
    text = reader.describe(train, test)
    assert "warning: 1 class folder(s) of train/ hold no images (dog)" in text


@pytest.mark.parametrize("method", ["supcon", "tcl"])
def test_a_method_that_uses_labels_on_unlabeled_images_is_one_line(tmp_path, capsys, method):
    """SupCon and TCL contrast by class: on a flat folder their labels were -1 and the first step
    raised in the loss (bincount), leaving a started run behind. Refused before the run starts."""
    data = tmp_path / "flat"
    data.mkdir()
    for name, payload in odd_images().items():
        (data / name).write_bytes(payload)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(folder_args(data, out, "--batch-size", "8", "--store-size", "36", "--method", method))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"--method {method} contrasts images by their class labels, and the 8 folder images" in err
    assert "pass --no-use-labels" in err and "Traceback" not in err and not out.exists()
    assert main(folder_args(data, out, "--batch-size", "8", "--store-size", "36", "--method", method,
                            "--no-use-labels")) == 0  # fmt: skip


def test_a_flat_folder_says_its_subfolders_are_not_read(tmp_path):
    payload = next(iter(odd_images().values()))
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "b.png").write_bytes(payload)
    (tmp_path / "a.png").write_bytes(payload)
    reader = FolderReader(DATASETS["folder"], tmp_path)
    train = reader.index("train")
    assert len(train) == 1
    assert "ignored 1 subfolder(s) (e.g. more/)" in reader.describe(train, None)


def test_the_tools_own_ffcv_folder_is_not_named_among_a_flat_folders_subfolders(tmp_path):
    payload = next(iter(odd_images().values()))
    (tmp_path / "ffcv").mkdir()  # `data write-ffcv`'s file of this folder
    (tmp_path / "a.png").write_bytes(payload)
    reader = FolderReader(DATASETS["folder"], tmp_path)
    assert "subfolder" not in reader.describe(reader.index("train"), None)


@pytest.mark.parametrize("mode", [0o000, 0o644])
def test_a_class_subfolder_that_cannot_be_read_stops_the_run(tmp_path, mode):
    """A class's subfolder without read permission used to be skipped by the walk without a word
    (its images never trained on), and one that can be listed but not entered (no x) raised a
    traceback; now it is named, with the fix. Root drops its file-access capabilities in the
    child, so the permission holds for it too."""
    from helpers import run_in

    data = write_odd_folder(tmp_path / "data")
    locked = next(p for p in (data / "train").iterdir() if p.is_dir()) / "locked"
    locked.mkdir()
    (locked / "x.png").write_bytes(next(iter(odd_images().values())))
    verify = ["data", "verify", "--dataset", "folder", "--data-dir", str(data), "--no-progress"]
    child = run_in(locked, *verify, mode=mode)
    assert child.returncode == 2, child.stderr
    assert child.stderr.strip().splitlines()[-1] == (
        f"fastsigclr: error: cannot read the folder {locked} (Permission denied): make it readable "
        f"(chmod), or move it out of the dataset"
    ), child.stderr


def test_resume_on_changed_images_is_refused_and_on_the_same_ones_goes_on(tmp_path, capsys):
    """Images removed from (or renamed in) a folder between a checkpoint and its resume: the run went
    on over other images (a checkpoint inside an epoch mixed two orders) and recorded the new count
    as its own. Same classes, so the class check did not see it."""
    data = write_cifar_folder(tmp_path / "imgs", per_class=12, val_per_class=2, classes=2)
    out = tmp_path / "run"
    assert main(folder_args(data, out, "--knn-every", "0")) == 0
    again = ["train", "--resume", "--out", str(out), "--epochs", "2", "--device", "cpu", "--no-progress"]
    files = sorted((data / "train").rglob("*.jpg"))
    kept = {f: f.read_bytes() for f in files[:4]}
    for f in kept:
        f.unlink()
    err = fails_with(again, capsys)
    assert "the run was trained on 24 images and folder in" in err and "now holds 20; resume it on" in err
    for f, blob in kept.items():
        f.write_bytes(blob)
    files[0].rename(files[0].with_name("renamed.jpg"))
    err = fails_with(again, capsys)
    assert "as many, 24, but other files, labels or sizes" in err, err
    files[0].with_name("renamed.jpg").rename(files[0])
    # The same training images, but val/ now of mixed sizes: both splits are stored at 37², where
    # the run trained on its 32² images as they are (other pixels: not the run, nor exact).
    odd = next((data / "val").iterdir()) / "odd.png"
    Image.new("RGB", (40, 30)).save(odd)
    err = fails_with(again, capsys)
    assert "the run stored its images as they are and they would now be stored at 37²" in err, err
    odd.unlink()
    moved = data.rename(tmp_path / "moved elsewhere")  # the same images in another folder resume
    assert main([*again, "--data-dir", str(moved)]) == 0
    assert summary(out)["epochs"] == 2 and summary(out)["train_images"] == 24


@pytest.mark.parametrize("flat", [False, True], ids=["class folders", "flat"])
def test_a_link_to_nothing_or_a_pipe_named_like_an_image_is_listed(tmp_path, capsys, flat):
    """Names that are not regular files were skipped without a word (is_file() filtered them); now
    they are listed with the files that do not read, and counted: a pipe without being opened
    (Pillow would wait on it for ever)."""
    import os

    root = tmp_path / "data"
    folder = root if flat else root / "train" / "cat"
    folder.mkdir(parents=True)
    for k, payload in enumerate(list(odd_images().values()) * 2):
        (folder / f"{k}.png").write_bytes(payload)
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(folder / "pipe.jpg")
    args = folder_args(root, tmp_path / "run", "--batch-size", "8", "--store-size", "36")
    err = fails_with(args, capsys)
    assert "2 of 18 images (11.1%) cannot be decoded" in err, err
    assert main([*args, "--max-broken", "0.2"]) == 0
    listed = capsys.readouterr().err
    assert f"{folder / 'gone.jpg'}: " in listed and f"{folder / 'pipe.jpg'}: not a regular file" in listed


def images_at(root, *rels: str):
    """One small PNG at each path under ``root``."""
    payload = odd_images()["gray.png"]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
    return root


def test_images_outside_class_folders_are_counted_and_named(tmp_path):
    """train/loose.jpg and val/l.png were skipped without a word (their class is unknown):
    counted (their headers not read) and named with the fix."""
    data = images_at(
        tmp_path, "train/a/0.png", "train/b/0.png", "val/a/0.png", "train/loose.jpg", "val/l.png"
    )
    (data / "train" / "notes.txt").write_text("not an image")
    reader = FolderReader(DATASETS["folder"], data)
    train, test = reader.index("train"), reader.index("test")
    assert len(train) == 2 and len(test) == 1
    text = reader.describe(train, test)
    assert (
        "ignored 2 images outside class folders (e.g. train/loose.jpg): move them into a class folder" in text
    )
    assert "ignored 1 files that are not images" in text, text


def test_linked_subfolders_of_a_class_are_read_once_and_loops_are_said(tmp_path):
    """A link to a folder inside a class folder was not followed (os.walk's default), a linked
    class folder was: b's 3 linked images were left out without a word. Followed now; a second link
    to one folder, a link to a class folder and one to an ancestor are skipped and said."""
    data = images_at(tmp_path / "data", "train/a/0.png", "train/b/0.png", "train/b/sub/1.png")
    extra = images_at(tmp_path / "extra", "0.png", "1.png", "2.png")
    (data / "train/b/linked").symlink_to(extra)
    (data / "train/b/twice").symlink_to(extra)  # two links to one folder: read once
    (data / "train/b/sub/up").symlink_to(tmp_path)  # a folder above DIR: a walk over all of it
    (data / "train/b/to_a").symlink_to(data / "train/a")  # a class folder: read as itself
    reader = FolderReader(DATASETS["folder"], data)
    train = reader.index("train")
    assert np.bincount(train.labels).tolist() == [1, 5]
    assert all(p.parent.name != "twice" for p in train.files)
    text = reader.describe(train, None)
    assert (
        f"skipped 3 linked folder(s) read already or holding their link (e.g. train/b/to_a -> "
        f"{data.resolve()}/train/a): each folder is read once; remove the extra link"
    ) in text, text


def test_two_class_folders_that_are_one_folder_are_refused(tmp_path, capsys):
    """train/dog2, a link to train/dog, trained dog's images under two labels ("all 18 images
    decode", no note): refused now with one line naming both and the link; in val/ as well."""
    data = images_at(
        tmp_path / "data", "train/cat/0.png", "train/dog/0.png", "val/cat/0.png", "val/dog/0.png"
    )
    (data / "train/dog2").symlink_to(data / "train/dog")
    args = ["data", "verify", "--dataset", "folder", "--data-dir", str(data), "--no-progress"]
    assert fails_with(args, capsys) == (
        f"fastsigclr: error: the class folders dog and dog2 of {data / 'train'} are one folder "
        f"({(data / 'train/dog').resolve()}): its images would have two labels; remove the link "
        f"{data / 'train/dog2'}"
    )
    (data / "train/dog2").unlink()
    images_at(data, "train/dog2/0.png")
    (data / "val/dog2").symlink_to(data / "val/cat")  # a link sorted after: still the link is named
    assert fails_with(args, capsys).endswith(
        f"the class folders cat and dog2 of {data / 'val'} are one folder ({(data / 'val/cat').resolve()}): "
        f"its images would have two labels; remove the link {data / 'val/dog2'}"
    )
    (data / "val/dog2").unlink()
    assert main(args) == 0


def test_one_folder_at_two_paths_without_a_link_is_not_told_to_remove_a_link(tmp_path, capsys, monkeypatch):
    """Two class folders that are one folder with neither a link (a bind mount; here two real
    folders given one (device, inode)) were told to "remove the link" that does not exist."""
    data = images_at(tmp_path / "data", "train/cat/0.png", "train/dog/0.png", "val/cat/0.png")
    monkeypatch.setattr(folder_module, "_folder_key", lambda path: (0, int(path.name not in ("cat", "dog"))))
    args = ["data", "verify", "--dataset", "folder", "--data-dir", str(data), "--no-progress"]
    assert fails_with(args, capsys) == (
        f"fastsigclr: error: the class folders cat and dog of {data / 'train'} are one folder "
        f"({(data / 'train/dog').resolve()}): its images would have two labels; neither is a link "
        f"(a bind mount?): unmount {data / 'train/dog'} or move it out of {data / 'train'}"
    )


def test_a_layout_error_names_the_layout_meant(tmp_path):
    """A torchvision root (DIR/<class>/*) and an empty val/ were told to put the images in
    DIR/train/<class>/, which they had (val/) or which a parent did."""
    from fastsigclr.data.info import DatasetError

    def refused(folder) -> str:
        with pytest.raises(DatasetError) as err:
            reader = FolderReader(DATASETS["folder"], folder)
            reader.index("train")
            reader.index("test")
        return str(err.value)

    root = images_at(tmp_path / "root", "cats/0.png", "dogs/0.png")
    assert refused(root) == (
        f"{root} holds class folders (cats, dogs) and no train/: move them into {root}/train/ (or pass "
        f"the folder holding train/ as --data-dir)"
    )
    data = images_at(tmp_path / "data", "train/a/0.png", "train/b/0.png")
    assert f"holds class folders (a, b) and no train/: pass its parent, {data}, the folder" in refused(
        data / "train"
    )
    for empty in ("val", "val/a"):
        (data / empty).mkdir()
        assert refused(data) == (
            f"{data / 'val'} holds no images in class folders: add {data}/val/<class>/ images (the "
            f"classes of train/) or remove val/"
        )
    flat = images_at(tmp_path / "flat", "a.png", "sub/b.png")  # images and subfolders: read as before
    assert len(FolderReader(DATASETS["folder"], flat).index("train")) == 1


def test_a_test_folder_without_val_is_named(tmp_path):
    data = images_at(tmp_path, "train/a/0.png", "test/a/0.png")
    reader = FolderReader(DATASETS["folder"], data)
    assert reader.describe(reader.index("train"), reader.index("test")).endswith(
        "no val/ folder: the kNN monitor is off; test/ was found and is not read: rename it val/ to use "
        "it for the kNN monitor"
    )


def test_a_train_that_is_a_file_is_named(tmp_path, capsys):
    """DIR/train a file beside val/<class>/: read as a flat folder, the error spoke of val/'s
    class folders and "no train/"."""
    data = write_cifar_folder(tmp_path / "data", per_class=2, val_per_class=1, classes=2)
    train = data / "train"
    for path in sorted(train.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    train.rmdir()
    train.write_bytes(b"")
    err = fails_with(["data", "verify", "--dataset", "folder", "--data-dir", str(data)], capsys)
    assert err.endswith(f"{train} is not a folder: put the training images in {train}/<class>/"), err


def test_a_data_dir_that_is_a_file_is_not_said_to_be_missing(tmp_path, capsys):
    afile = tmp_path / "images.zip"
    afile.write_bytes(b"PK")
    err = fails_with(["data", "verify", "--dataset", "folder", "--data-dir", str(afile)], capsys)
    assert err.endswith(f"{afile} is not a folder; pass --data-dir DIR, the folder holding train/<class>/"), (
        err
    )


def test_eval_notes_a_folder_that_changed_since_training(tmp_path, capsys):
    """eval read the run's folder as it is now: an image added to train/ since training changed the
    kNN bank without a word. A note says so; the same images say nothing."""
    data = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=1, classes=4)
    out = tmp_path / "run"
    assert main(folder_args(data, out)) == 0
    evaluate = ["eval", "--run", str(out), "knn", "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert main(evaluate) == 0
    assert "other training images" not in capsys.readouterr().err
    first = sorted((data / "train").rglob("*.jpg"))[0]
    (first.parent / f"copy-{first.name}").write_bytes(first.read_bytes())
    assert main(evaluate) == 0
    err = capsys.readouterr().err
    assert "holds other training images than the run trained on (16 images then, 17 now," in err, err


@pytest.mark.parametrize("held", ["kept", "streamed"])
def test_embed_names_the_file_of_each_row(tmp_path, capsys, monkeypatch, held):
    """embed wrote features and labels of a folder's images with nothing to tell which file a row
    came from (and a file that does not decode shifts every row after it). FILE.files.json lists
    them, relative to the data folder, left-out files out: each row's class folder is its label's,
    whether the split is decoded once and kept or streamed (too large to keep)."""
    import fastsigclr.data.splits as splits_module

    if held == "streamed":
        monkeypatch.setattr(splits_module, "available_memory_bytes", lambda: 0)
    data = write_cifar_folder(tmp_path / "data", per_class=4, val_per_class=3, classes=3)
    out = tmp_path / "run"
    assert main(folder_args(data, out, "--max-broken", "0.5", "--knn-every", "0", "--batch-size", "12")) == 0
    cut = sorted((data / "val").rglob("*.jpg"))[1]
    raw = cut.read_bytes()
    cut.write_bytes(raw[: raw.index(b"\xff\xda") + 40])  # its header reads, its pixels do not
    features = tmp_path / "emb" / "val.npy"
    args = ["embed", "--run", str(out), "--split", "test", "--out", str(features), "--no-progress"]
    assert main(args) == 0
    assert f"and {tmp_path / 'emb' / 'val.files.json'}, epoch 1" in capsys.readouterr().out
    listed = json.loads((tmp_path / "emb" / "val.files.json").read_text())
    labels = np.load(tmp_path / "emb" / "val.labels.npy")
    assert listed["data_dir"] == str(data.absolute()) and len(listed["files"]) == len(labels) == 8
    assert cut.relative_to(data).as_posix() not in listed["files"]
    classes = sorted(p.name for p in (data / "train").iterdir())
    assert [Path(f).parent.name for f in listed["files"]] == [classes[i] for i in labels]


def test_one_class_is_noted(tmp_path, capsys):
    """A folder of one class trained with a kNN accuracy of 1.0 and no word why."""
    data = write_cifar_folder(tmp_path / "data", per_class=8, val_per_class=2, classes=1)
    open_splits(DATASETS["folder"], data)
    said = capsys.readouterr().out
    assert "train: 8 images in 1 class (" in said
    assert "note: one class: the kNN monitor's and the probe's accuracy are 1.0 whatever" in said, said


def test_kept_out_images_leave_a_cached_array_too(tmp_path, capsys):
    """A resumed run keeps out the images its earlier sessions could not decode. Where the decoded
    split is cached (Tiny-ImageNet's), the cache is read and those rows dropped: it was ignored and
    every image decoded again, at every later session of the run."""
    data = write_cifar_folder(tmp_path / "data", per_class=3, val_per_class=1, classes=2)
    index = open_splits(DATASETS["folder"], data, announce=False).pretrain
    index.cache_dir = tmp_path / "cache"
    whole = index.in_memory(progress=False)  # decodes and writes the cache
    assert whole.undecoded == () and len(list((tmp_path / "cache").iterdir())) > 0
    index2 = open_splits(DATASETS["folder"], data, announce=False).pretrain
    index2.cache_dir = tmp_path / "cache"
    index2._decoded_at = lambda *a: pytest.fail("decoded again, not read from the cache")
    capsys.readouterr()
    kept = index2.in_memory(progress=False, max_broken=0.5, keep_out={2})
    assert kept.undecoded == (2,) and len(kept) == 5
    assert np.array_equal(kept.array(), np.delete(whole.array(), 2, axis=0))
    assert "left out: an earlier session of this run could not decode it" in capsys.readouterr().err
