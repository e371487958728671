"""The DALI loader's memory and lifetime, for real on the CPU (raw pixels and JPEG files): what it
yields is torch's own memory (intact after later batches, after its pipeline is gone, and as the
input a backward pass reads), what it feeds DALI may be overwritten at once, and each epoch's
pipeline and threads end with the epoch, also when the consumer stops early."""

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_loaders import CPU, MEAN, STD, smooth_images

from fastsigclr.data.augment import AugmentSpec
from fastsigclr.data.dali_loader import DaliLoader

N, BATCH = 24, 8  # three batches: more than DALI's prefetch queue of two


def dali_threads() -> int:
    """Threads of this process that DALI started (it names them "[DALI]…")."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            count += (task / "comm").read_text().startswith("[DALI]")
    return count


def dali_threads_settle(expected: int) -> int:
    """The count once it reaches ``expected``, or after 5 s: a joined thread can still be listed
    for a moment until the kernel has reaped it."""
    deadline = time.monotonic() + 5.0
    while (count := dali_threads()) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


@pytest.fixture(params=["pixels", "jpeg"])
def make_loader(request, tmp_path):
    images = smooth_images(N, 32, seed=4)
    files = None
    if request.param == "jpeg":
        files = [tmp_path / f"{i}.jpg" for i in range(N)]
        for image, file in zip(images, files, strict=True):
            Image.fromarray(image).save(file, quality=90)
    spec = AugmentSpec.simclr(32, MEAN, STD)
    return lambda: DaliLoader(
        images, np.arange(N) % 5, spec, BATCH, CPU, torch.float32, seed=5, files=files, num_threads=2
    )


def test_dali_batches_stay_intact_through_later_batches_and_backward(make_loader):
    """Forward on each batch as it is yielded; backward only once the epoch's later batches were
    made and its pipeline shut down. The views autograd saved, and the views and labels, equal
    copies taken at yield time; the gradient equals the one of those copies."""
    loader = make_loader()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    for epoch in range(3):
        kept = []
        for views, labels in loader.epoch(epoch):
            loss = conv(views).square().mean()  # saves views: the weight's gradient reads them
            kept.append((views, labels, views.clone(), labels.clone(), loss))
        assert len(kept) == 3
        assert len({views.data_ptr() for views, *_ in kept}) == 3  # no two batches share memory
        assert not torch.equal(kept[0][2], kept[1][2])
        for views, labels, views_then, labels_then, loss in kept:
            (grad,) = torch.autograd.grad(loss, conv.weight)
            (expected,) = torch.autograd.grad(conv(views_then).square().mean(), conv.weight)
            assert torch.equal(views, views_then) and torch.equal(labels, labels_then)
            assert torch.equal(grad, expected)


def test_dali_fed_arrays_may_be_overwritten_once_fed(make_loader, monkeypatch):
    """DALI copies what it is fed (no_copy=False): zeroing every batch's arrays as soon as the
    next batch is asked for, while DALI still works on them, changes no view and no label."""
    clean = list(make_loader().epoch(0))
    fed = []
    build = DaliLoader._batch

    def build_and_poison(self, index, params):
        for array in fed:
            array.fill(0)  # 0: a black image, an empty JPEG, crop boxes and jitter factors of 0
        batch = build(self, index, params)
        fed.extend(a for entry in batch for a in (entry if isinstance(entry, list) else [entry]))
        return batch

    monkeypatch.setattr(DaliLoader, "_batch", build_and_poison)
    poisoned = list(make_loader().epoch(0))
    assert len(poisoned) == len(clean) == 3
    assert all(not a.any() for a in fed[: 2 * len(fed) // 3])  # the first two batches were zeroed
    for (views, labels), (views_clean, labels_clean) in zip(poisoned, clean, strict=True):
        assert torch.equal(views, views_clean) and torch.equal(labels, labels_clean)


def test_dali_pipeline_ends_with_its_epoch_also_when_the_consumer_stops_early(make_loader):
    before = dali_threads()
    reference = list(make_loader().epoch(1))
    assert dali_threads_settle(before) == before  # an epoch that ran out
    loader = make_loader()
    unfinished = loader.epoch(0)
    next(unfinished)  # a break that keeps the iterator
    assert dali_threads() > before
    again = list(loader.epoch(1))  # the next epoch first shuts the unfinished one down
    assert dali_threads_settle(before) == before
    assert next(unfinished, None) is None
    for (views, labels), (views_ref, labels_ref) in zip(again, reference, strict=True):
        assert torch.equal(views, views_ref) and torch.equal(labels, labels_ref)
    unfinished = loader.epoch(2)
    next(unfinished)
    loader.close()
    assert dali_threads_settle(before) == before
    for _ in loader.epoch(3):
        break  # the loop drops the iterator
    assert dali_threads_settle(before) == before
    with pytest.raises(RuntimeError, match="consumer failed"):
        for _ in loader.epoch(4):
            raise RuntimeError("consumer failed")
    assert dali_threads_settle(before) == before


def test_dali_host_outputs_are_copied_on_the_host_then_moved(monkeypatch):
    """DALI copies within one side: the labels (always CPU outputs) went into a CUDA tensor on a GPU.
    The meta device stands in for the GPU; every output here is a CPU one, as the labels are there."""
    import types

    import nvidia.dali.plugin.pytorch as plugin
    from nvidia.dali.backend import TensorListCPU

    real, destinations = plugin.feed_ndarray, []

    def feed(tensor, arr, cuda_stream=None):
        destinations.append(arr.device.type)
        return real(tensor, arr, cuda_stream) if arr.device.type == "cpu" else arr

    monkeypatch.setattr(plugin, "feed_ndarray", feed)
    loader = DaliLoader.__new__(DaliLoader)
    loader.device, loader.dtype, loader.spec = (
        torch.device("meta"),
        torch.bfloat16,
        types.SimpleNamespace(size=4),
    )
    b = 3
    view = np.zeros((b, 4, 4, 3), dtype=np.float32)
    outputs = [TensorListCPU(view), TensorListCPU(view), TensorListCPU(np.arange(b).reshape(b, 1))]
    x, y = loader._copy_out(outputs, stream=None)
    assert destinations == ["cpu", "cpu", "cpu"]
    assert x.device.type == y.device.type == "meta" and x.shape == (2 * b, 3, 4, 4) and y.shape == (b,)
