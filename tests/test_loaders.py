"""The DALI and FFCV backends (for real, on the CPU) and Tiny-ImageNet: same recipe, same output
contract as the gpu loader; DALI's views equal the gpu loader's for the same seed, FFCV's numba
operations equal the PyTorch reference for the same parameters."""

import dataclasses
import math
import os
import sys

import numba
import numpy as np
import pytest
import torch
from test_augment import five_sigma
from test_datasets import server  # noqa: F401 - the loopback HTTP server fixture
from tiny_fixture import WNIDS, small_info, write_tiny, write_tiny_zip

from fastsigclr.cli import main
from fastsigclr.config import FastSigCLRError
from fastsigclr.data import DATASETS, ffcv_ops
from fastsigclr.data.augment import augment_reference
from fastsigclr.data.dali_loader import DaliLoader
from fastsigclr.data.datasets import DatasetError, load_split, prepare
from fastsigclr.data.ffcv_loader import FfcvLoader, write_beton
from fastsigclr.data.gpu_loader import GpuLoader
from fastsigclr.data.loaders import beton_path
from fastsigclr.data.plan import AugmentPlan, AugmentSpec, Col, sample_params
from fastsigclr.data.tinyimagenet import split_files
from fastsigclr.runlog import read_metrics

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CPU = torch.device("cpu")


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 images with structure at several scales (noise alone hides interpolation errors)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 4, size // 4, generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.rand(n, 3, size, size, generator=gen)
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def epoch_of(loader, epoch=0):
    return list(loader.epoch(epoch))


# ---- DALI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_dali_views_equal_the_gpu_loader_reference(size):
    """Same seed, same parameters: DALI's CPU pipeline gives the PyTorch reference's views
    (64²: with the blur). Measured differences: 1.7e-6 at 32², 1e-5 at 48² with blur."""
    imgs = smooth_images(40, size)
    spec = AugmentSpec.simclr(size, MEAN, STD)
    ref = GpuLoader(imgs, np.arange(40), spec, 16, CPU, torch.float32, seed=3)
    dali = DaliLoader(imgs, np.arange(40), spec, 16, CPU, torch.float32, seed=3, num_threads=2)
    batches = 0
    for (va, la), (vb, lb) in zip(ref.epoch(1), dali.epoch(1), strict=True):
        assert torch.equal(la, lb)
        assert vb.shape == va.shape == (32, 3, size, size)
        assert vb.is_contiguous(memory_format=torch.channels_last)
        assert (va - vb).abs().max().item() < 1e-4
        batches += 1
    assert batches == len(dali) == 2


def test_dali_dtype_coverage_partial_batch_and_ranks():
    imgs = smooth_images(50, 32)
    spec = AugmentSpec.simclr(32, MEAN, STD)
    whole = epoch_of(DaliLoader(imgs, np.arange(50), spec, 16, CPU, torch.bfloat16, drop_last=False))
    assert [len(labels) for _, labels in whole] == [16, 16, 16, 2]
    ids = torch.cat([labels for _, labels in whole])
    assert sorted(ids.tolist()) == list(range(50))  # every image once, the last batch partial
    assert all(
        v.dtype == torch.bfloat16 and v.is_contiguous(memory_format=torch.channels_last) for v, _ in whole
    )
    one = epoch_of(DaliLoader(imgs, np.arange(50), spec, 16, CPU, torch.float32))
    shards = [
        epoch_of(DaliLoader(imgs, np.arange(50), spec, 16, CPU, torch.float32, rank=r, world_size=2))
        for r in range(2)
    ]
    for i, (views, labels) in enumerate(one):
        parts = [s[i] for s in shards]
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        joined = torch.cat([p[0].view(2, 8, 3, 32, 32) for p in parts], dim=1).reshape(views.shape)
        assert torch.equal(joined, views)


def test_dali_decodes_the_jpeg_files(tmp_path):
    info = small_info()
    folder = write_tiny(tmp_path)
    images, labels = load_split(info, folder, "train", progress=False)
    files, _ = split_files(info, folder, "train")
    spec = AugmentSpec.simclr(64, MEAN, STD)
    from_pixels = epoch_of(DaliLoader(images, labels, spec, 8, CPU, torch.float32, seed=1))
    from_jpegs = epoch_of(DaliLoader(images, labels, spec, 8, CPU, torch.float32, seed=1, files=files))
    for (a, la), (b, lb) in zip(from_pixels, from_jpegs, strict=True):
        assert torch.equal(la, lb)
        # Two JPEG decoders (PIL for the cache, DALI's) may round a few pixels differently.
        assert (a - b).abs().mean().item() < 0.01


def test_dali_reads_an_exif_rotated_photo_as_stored(tmp_path):
    """Phones write EXIF orientation 6 ("rotate 90°"). DALI's decoder turned such images, while the
    crop boxes come from the stored (unturned) sizes, as Pillow reads them for every other loader,
    kNN and eval: on non-square photos it read out of bounds and the process died (SIGSEGV), on
    square ones it trained on other pixels (0.69 mean difference of the views)."""
    from PIL import Image

    from fastsigclr.data.samples import decode_file

    files = []
    for i in range(16):
        exif = Image.Exif()
        exif[0x0112] = 6
        files.append(tmp_path / f"{i}.jpg")
        pixels = smooth_images(1, 96, seed=i)[0][:48]  # 48 × 96, stored unturned
        Image.fromarray(pixels).save(files[-1], exif=exif, quality=95)
    images = np.stack([decode_file(f) for f in files])
    assert images.shape == (16, 48, 96, 3)
    spec = AugmentSpec.simclr(32, MEAN, STD)
    args = (images, np.arange(16), spec, 8, CPU, torch.float32)
    from_pixels = epoch_of(DaliLoader(*args, seed=1))
    from_jpegs = epoch_of(DaliLoader(*args, seed=1, files=files))
    for (a, la), (b, lb) in zip(from_pixels, from_jpegs, strict=True):
        assert torch.equal(la, lb) and (a - b).abs().mean().item() < 0.01


def test_dali_takes_pillows_pixels_where_it_would_read_a_file_otherwise(tmp_path, capsys):
    """A GIF named .jpg: Pillow (and `data verify`) read it, DALI stopped mid-epoch with an error
    naming no file (then, refused it at the start). An RGBA PNG: DALI dropped its alpha where
    Pillow composites it on white, the views 0.88 apart on average. Both are found by the header
    pass and now reach DALI as Pillow's pixels: the views equal DALI's from those pixels exactly,
    and the Pillow decodes they cost are said once."""
    from PIL import Image

    from fastsigclr.data.samples import decode_file, file_index

    files = []
    for i in range(8):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(smooth_images(1, 32, seed=i)[0]).save(files[-1])
    clear = tmp_path / "clear.png"  # red under an alpha from 0 to 255: composited, not red
    alpha = np.broadcast_to(np.linspace(0, 255, 32).astype(np.uint8)[:, None, None], (32, 32, 1))
    Image.fromarray(np.concatenate([smooth_images(1, 32, seed=9)[0], alpha], -1), "RGBA").save(clear)
    fake = tmp_path / "fake.jpg"
    Image.fromarray(smooth_images(1, 32, seed=10)[0]).save(fake, format="GIF")
    keyed = tmp_path / "keyed.png"  # an RGB colour key: Pillow drops it as DALI does, nothing to say
    Image.new("RGB", (32, 32), (0, 0, 0)).save(keyed, transparency=(0, 0, 0))
    every = [*files, clear, fake, keyed]
    index = file_index("odd", every, np.zeros(11, np.int64))
    assert index.notes == {8: "transparency", 9: "format GIF"}
    spec = AugmentSpec.simclr(32, MEAN, STD)
    from_files = epoch_of(DaliLoader(index, None, spec, 11, CPU, torch.float32, seed=3))
    said = capsys.readouterr().err
    assert "note: 2 images are decoded by Pillow as they are fed to DALI, " in said, said
    assert f"(e.g. {clear}: transparency); with many of them --loader gpu or ffcv is faster" in said, said
    pixels = np.stack([decode_file(f) for f in every])
    from_pixels = epoch_of(DaliLoader(pixels, np.zeros(11, np.int64), spec, 11, CPU, torch.float32, seed=3))
    for (a, _), (b, _) in zip(from_files, from_pixels, strict=True):
        assert torch.equal(a, b)
    # A subset (--limit-train) renumbers the samples: the notes move with them, and so do the ids
    # fed as Pillow's pixels (a stale id would send the GIF to DALI raw, a PNG through Pillow).
    picked = np.array([9, 0, 1, 8])
    moved = DaliLoader(index.subset(picked), None, spec, 4, CPU, torch.float32, seed=3)
    assert moved.by_pillow == {0, 3}
    capsys.readouterr()
    from_pixels = DaliLoader(pixels[picked], np.zeros(4, np.int64), spec, 4, CPU, torch.float32, seed=3)
    for (a, _), (b, _) in zip(epoch_of(moved), epoch_of(from_pixels), strict=True):
        assert torch.equal(a, b)


# ---- FFCV: the numba operations ----------------------------------------------------------------


def test_ffcv_image_kernels_equal_the_reference():
    """crop + flip, jitter, grayscale, blur, solarisation, normalisation with the parameters
    the gpu loader draws: the numba kernels give the reference's views."""
    spec = AugmentSpec.simclr(40, MEAN, STD, blur=True)
    imgs = smooth_images(12, 48, seed=5)
    params = sample_params(spec, 12, 48, 48, torch.Generator().manual_seed(2))
    params[0, :4, Col.GRAY] = 1.0  # make sure every operation is exercised
    params[1, :4, Col.SOLAR] = 1.0
    ref = augment_reference(torch.from_numpy(imgs), params, spec).permute(0, 2, 3, 1).numpy()
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    for v in range(2):
        for i in range(12):
            q = params[v, i].numpy().astype(np.float64)
            x = np.empty((40, 40, 3), np.float32)
            ffcv_ops.crop_resize_image(
                imgs[i], q[Col.Y0], q[Col.X0], q[Col.H], q[Col.W], q[Col.FLIP] > 0.5, x
            )
            ffcv_ops.color_jitter_image(x, q[Col.BRIGHT], q[Col.CONTRAST], q[Col.SAT], q[Col.HUE])
            if q[Col.GRAY] > 0.5:
                ffcv_ops.grayscale_image(x)
            ffcv_ops.gaussian_blur_image(x, q[Col.BLUR], 5)  # blur_window(40) = 5
            if q[Col.SOLAR] > 0.5:
                ffcv_ops.solarize_image(x)
            ffcv_ops.normalize_image(x, mean, std)
            err = np.abs(x - ref[v * 12 + i]).max()
            assert err < 2e-5, (v, i, err)


@pytest.mark.parametrize("op", ["ColorJitter", "RandomGrayscale", "RandomSolarize", "GaussianBlur"])
def test_ffcv_operations_apply_each_view_with_its_probability(op):
    """Each operation's compiled code on a batch, with the rows of a plan: the share of views it
    changed is the view's probability (5σ), and the same batch indices give the same views."""
    spec = AugmentSpec.simclr(8, MEAN, STD, blur=True)
    # σ from 1: a σ of 0.1 leaves an image unchanged to float precision, and would read as "off".
    spec = dataclasses.replace(
        spec, views=tuple(dataclasses.replace(v, blur_sigma=(1.0, 2.0)) for v in spec.views)
    )
    n = 4000
    rows = ffcv_ops.EpochRows(AugmentPlan(spec, n, (8, 8), seed=4))
    code = numba.njit(getattr(ffcv_ops, op)(spec, rows).generate_code())
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 0.95, (n, 2, 8, 8, 3)).astype(np.float32)
    x[:, :, :, :, 0] = 0.9  # colourful, and red ≥ 0.5 so that solarisation shows
    indices = np.arange(n, dtype=np.int64)
    out = code(x.copy(), None, indices)
    again = code(x.copy(), None, indices)
    assert np.array_equal(out, again)
    changed = np.abs(out - x).reshape(n, 2, -1).max(-1) > 1e-6
    probs = {
        "ColorJitter": [v.jitter_p for v in spec.views],
        "RandomGrayscale": [v.gray_p for v in spec.views],
        "RandomSolarize": [v.solarize_p for v in spec.views],
        "GaussianBlur": [v.blur_p for v in spec.views],
    }[op]
    for v, p in enumerate(probs):
        assert abs(changed[:, v].mean() - p) <= five_sigma(p, n) + 1e-9, (op, v, changed[:, v].mean(), p)


# ---- FFCV: the loader -------------------------------------------------------------------------------


def test_ffcv_loader_contract_coverage_and_seed(tmp_path):
    imgs = smooth_images(48, 32)
    labels = np.arange(48)
    beton = write_beton(tmp_path / "d.beton", imgs, labels, num_workers=2, progress=False)
    spec = AugmentSpec.simclr(32, MEAN, STD)
    a = FfcvLoader(imgs, labels, spec, 16, CPU, torch.bfloat16, seed=2, beton=beton, num_workers=2)
    first = epoch_of(a, 0)
    assert len(first) == len(a) == 3
    for views, ids in first:
        assert views.shape == (32, 3, 32, 32) and views.dtype == torch.bfloat16
        assert views.is_contiguous(memory_format=torch.channels_last) and ids.dtype == torch.int64
        assert not torch.equal(views[:16], views[16:])
        # Normalised pixels of these images: centred near 0, and not constant.
        assert abs(views.float().mean().item()) < 1.0 and views.float().std().item() > 0.2
    assert sorted(torch.cat([ids for _, ids in first]).tolist()) == list(range(48))
    second = epoch_of(a, 1)
    assert not torch.equal(torch.cat([i for _, i in first]), torch.cat([i for _, i in second]))
    b = FfcvLoader(imgs, labels, spec, 16, CPU, torch.bfloat16, seed=2, beton=beton, num_workers=2)
    for (va, ia), (vb, ib) in zip(first, epoch_of(b, 0), strict=True):
        assert torch.equal(ia, ib) and torch.equal(va, vb)  # a seed reproduces order and draws


def _labels_in(beton) -> list[int]:
    from ffcv.reader import Reader

    return Reader(str(beton)).metadata["f1"].tolist()  # fields are unnamed: f0 image, f1 label


def test_a_beton_written_from_other_data_is_written_again(tmp_path, capsys):
    """The .beton of a split records what it was written from (labels, sizes, the array's bytes; a
    split of files: their names, sizes and mtimes): the same data keeps the file; a relabelled
    image, a changed pixel or a rewritten JPEG writes it again. One without its record (an older
    fastsigclr's, or copied without it) is used as it is, with a note."""
    from PIL import Image

    from fastsigclr.data.loaders import ensure_beton
    from fastsigclr.data.samples import SampleIndex, decode_file

    path, imgs, labels = tmp_path / "ffcv" / "d.beton", smooth_images(12, 8), np.arange(12) % 3

    def ensure(samples) -> int:
        ensure_beton(path, samples, progress=False)
        return path.stat().st_ino  # a rewrite renames a new file into place

    written = ensure(SampleIndex.from_array(imgs, labels))
    assert ensure(SampleIndex.from_array(imgs.copy(), labels.copy())) == written
    assert capsys.readouterr().err == ""
    relabelled = labels.copy()
    relabelled[4] = 0
    written = ensure(SampleIndex.from_array(imgs, relabelled))
    assert "was written from other data" in capsys.readouterr().err
    assert _labels_in(path) == relabelled.tolist()
    changed = imgs.copy()
    changed[7, 3, 3, 0] ^= 1
    written = ensure(SampleIndex.from_array(changed, relabelled))
    assert "was written from other data" in capsys.readouterr().err
    path.with_name("d.beton.json").unlink()  # written before the record existed
    assert ensure(SampleIndex.from_array(imgs, labels)) == written  # used, not rewritten
    assert "has no record of the data it was written from" in capsys.readouterr().err
    files = []
    for i, img in enumerate(imgs):
        files.append(tmp_path / "jpegs" / f"{i}.jpg")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(files[-1], quality=90)
    jpegs = SampleIndex("jpegs", labels, np.full((12, 2), 8), lambda i: decode_file(files[i]), files=files)
    path = tmp_path / "ffcv" / "jpegs.beton"
    written = ensure(jpegs)
    assert ensure(jpegs) == written
    st = files[5].stat()
    Image.fromarray(imgs[6]).save(files[5], quality=90)  # edited in place: a new mtime
    os.utime(files[5], ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert ensure(jpegs) != written


def test_ffcv_views_are_the_plan_of_the_gpu_loader(tmp_path):
    """FFCV applies the run's plan by sample id: whatever batch FFCV's order puts a sample in,
    its views in an epoch are the reference's for that sample's rows (the gpu/dali loaders'),
    blur included (measured ≤ 2e-5, as the numba kernels against the reference)."""
    imgs = smooth_images(24, 48, seed=2)
    labels = np.arange(24)
    beton = write_beton(tmp_path / "d.beton", imgs, labels, num_workers=1, progress=False)
    spec = AugmentSpec.simclr(40, MEAN, STD, blur=True)
    ffcv = FfcvLoader(imgs, labels, spec, 8, CPU, torch.float32, seed=7, beton=beton, num_workers=2)
    plan = AugmentPlan(spec, 24, (48, 48), seed=7)
    for epoch in (0, 1):
        seen = []
        for views, ids in ffcv.epoch(epoch):
            expected = augment_reference(torch.from_numpy(imgs)[ids], plan.rows(epoch, ids), spec)
            assert (views - expected).abs().max().item() < 2e-5
            seen += ids.tolist()
        assert sorted(seen) == list(range(24))


def test_ffcv_loader_errors(tmp_path):
    imgs = smooth_images(8, 32)
    spec = AugmentSpec.simclr(32, MEAN, STD)
    with pytest.raises(FastSigCLRError, match="write-ffcv"):
        FfcvLoader(imgs, np.arange(8), spec, 4, CPU, torch.float32, beton=tmp_path / "missing.beton")
    beton = write_beton(tmp_path / "d.beton", imgs, np.arange(8), num_workers=1, progress=False)
    with pytest.raises(FastSigCLRError, match="written for other data"):
        FfcvLoader(smooth_images(16, 32), np.arange(16), spec, 4, CPU, torch.float32, beton=beton)
    with pytest.raises(ValueError, match="quasi-random"):
        FfcvLoader(
            imgs, np.arange(8), spec, 4, CPU, torch.float32, beton=beton, order="quasi_random", world_size=2
        )


def test_missing_backends_say_how_to_install(monkeypatch):
    imgs = smooth_images(8, 32)
    spec = AugmentSpec.simclr(32, MEAN, STD)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    with pytest.raises(FastSigCLRError, match=r"pip install 'fastsigclr\[dali\]'"):
        DaliLoader(imgs, np.arange(8), spec, 4, CPU, torch.float32)
    monkeypatch.setitem(sys.modules, "ffcv", None)
    with pytest.raises(FastSigCLRError, match=r"pip install 'fastsigclr\[ffcv\]'"):
        FfcvLoader(imgs, np.arange(8), spec, 4, CPU, torch.float32, beton=None)


# ---- Tiny-ImageNet ----------------------------------------------------------------------------------


def test_tiny_imagenet_layout_labels_and_cache(tmp_path, monkeypatch):
    info = small_info()
    folder = write_tiny(tmp_path)
    x, y = load_split(info, folder, "train", progress=False)
    assert x.shape == (24, 64, 64, 3) and x.dtype == np.uint8
    assert y.tolist() == [c for c in range(3) for _ in range(8)]  # sorted wnids
    gray = x[8]  # class 1, image 0 is a grayscale JPEG, decoded to three equal channels
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    tx, ty = load_split(info, folder, "test", progress=False)
    assert tx.shape == (6, 64, 64, 3) and ty.tolist() == [0, 1, 2, 0, 1, 2]  # val_annotations.txt
    assert (tmp_path / "tiny-imagenet-200-decoded" / "train-images.npy").is_file()

    def no_decoding(*args):
        raise AssertionError("decoded again although the cache matches")

    monkeypatch.setattr("fastsigclr.data.samples.decode_file", no_decoding)
    x2, _ = load_split(info, folder, "train", progress=False)
    assert np.array_equal(x, x2)


def test_tiny_imagenet_rejects_broken_layouts(tmp_path):
    folder = write_tiny(tmp_path)
    with pytest.raises(DatasetError, match="lists 3 classes, expected 200"):
        load_split(DATASETS["tinyimagenet"], folder, "train", progress=False)
    info = small_info()
    (folder / "train" / WNIDS[2] / "images" / f"{WNIDS[2]}_3.JPEG").unlink()
    with pytest.raises(DatasetError, match="holds 7 JPEGs, expected 8"):
        load_split(info, folder, "train", progress=False)
    notes = folder / "val" / "val_annotations.txt"
    notes.write_text(notes.read_text().replace(WNIDS[0], "n99999999", 1))
    with pytest.raises(DatasetError, match="known wnid"):
        load_split(info, folder, "test", progress=False)


def test_tiny_imagenet_downloads_the_zip(server, tmp_path):  # noqa: F811
    import hashlib

    url, root = server
    write_tiny_zip(root / "tiny-imagenet-200.zip")
    info = small_info(md5=hashlib.md5((root / "tiny-imagenet-200.zip").read_bytes()).hexdigest())
    folder = prepare(info, tmp_path / "data", url=f"{url}/tiny-imagenet-200.zip", progress=False)
    assert folder == tmp_path / "data" / "tiny-imagenet-200" and (folder / "wnids.txt").is_file()
    assert load_split(info, folder, "test", progress=False)[0].shape == (6, 64, 64, 3)
    bad = small_info(md5="0" * 32)
    with pytest.raises(DatasetError, match="checksum mismatch"):
        prepare(bad, tmp_path / "other", url=f"{url}/tiny-imagenet-200.zip", progress=False)


# ---- the trainer with each backend ------------------------------------------------------------------


def smoke_args(data_dir, out, *extra):
    return [
        *(
            f"train --dataset cifar10 --data-dir {data_dir} --device cpu --limit-train 128 --limit-test 100 "
            f"--width 8 --proj-dims 64,32 --batch-size 32 --epochs 1 --log-every 1 --knn-k 10 "
            f"--no-progress --no-tensorboard --out {out}"
        ).split(),
        *extra,
    ]


@pytest.mark.parametrize("loader", ["dali", "ffcv"])
def test_train_runs_with_each_backend(loader, cifar10_dir, tmp_path):
    out = tmp_path / loader
    if loader == "ffcv":
        assert (
            main(["data", "write-ffcv", "--data-dir", str(cifar10_dir), "--limit", "128", "--no-progress"])
            == 0
        )
        assert beton_path(DATASETS["cifar10"], cifar10_dir, 128).is_file()
    assert main(smoke_args(cifar10_dir, out, "--loader", loader)) == 0
    steps = [r for r in read_metrics(out) if r["kind"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(r["loss"]) for r in steps)


# ids "…-loader": an id "gpu" would read as the gpu mark (conftest skips those without CUDA).
@pytest.mark.parametrize("loader", ["dali", "gpu"], ids=lambda name: f"{name}-loader")
def test_train_on_tiny_imagenet(loader, tmp_path, monkeypatch):
    """64² JPEGs through the trainer (DALI decodes the files). The gpu loader trains the same
    model on the same images: the control that tells a DALI fault from one of the backward."""
    monkeypatch.setitem(DATASETS, "tinyimagenet", small_info())
    write_tiny(tmp_path / "data")
    out = tmp_path / "run"
    args = (
        f"train --dataset tinyimagenet --data-dir {tmp_path / 'data'} --device cpu --arch resnet18 --width 8 "
        f"--proj-dims 64,32 --batch-size 8 --epochs 1 --knn-k 5 --loader {loader} --no-progress "
        f"--no-tensorboard --out {out}"
    ).split()
    assert main(args) == 0
    config = read_metrics(out)
    assert [r["kind"] for r in config].count("epoch") == 1
