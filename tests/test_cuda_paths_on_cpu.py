"""Code that runs only with CUDA, checked on the CPU through fakes: what an audit of the CUDA-only
paths found (a device sync per step or per strip, a resume on fewer GPUs, a roofline and a plot
floor computed for the wrong work)."""

import types

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastsigclr import determinism
from fastsigclr.bench import common, plot
from fastsigclr.bench.loss import useful_flops
from fastsigclr.losses import sigmoid_block_chunked
from fastsigclr.train import Epochs


class Ops(TorchDispatchMode):
    """The aten operators dispatched inside the block, in order."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def test_a_single_process_run_checks_for_preemption_without_a_tensor():
    """Every step asks whether to stop: one process needs no tensor for that, and on CUDA a
    tensor read back (bool()) was a device sync per step."""
    for signal in (None, 15):
        fake = types.SimpleNamespace(
            ctx=types.SimpleNamespace(distributed=False, device=torch.device("cpu")),
            stop=types.SimpleNamespace(signal=signal),
        )
        with Ops() as ops:
            assert Epochs._stopping(fake) is (signal is not None)
        assert ops.names == []


def test_the_chunked_path_reads_the_logit_scale_once():
    """addmm's alpha is a number: the 0-d logit scale was read (.item(), a device sync on CUDA)
    once per strip, 16,384 times per call at 2N = 131,072. Now once per call."""
    rows = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    t, b = torch.tensor(5.0), torch.tensor(-3.0)
    with Ops() as ops:
        sigmoid_block_chunked(rows, rows, t, b, n_per_view=20, inv_m=1 / 40, pairs="self", chunk_rows=4)
    assert ops.names.count("aten._local_scalar_dense.default") == 1
    assert ops.names.count("aten.addmm.default") == 10  # the strips are still there


def test_a_resume_on_fewer_gpus_restores_the_states_it_has(monkeypatch):
    """A checkpoint from 4 GPUs resumed where 1 is visible: torch's set_rng_state_all would index
    a generator per saved state (an IndexError past the last device); the states of the devices
    that exist are restored, each on its own index."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(("all", states)))
    saved = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    determinism.set_rng_state({"torch": torch.get_rng_state(), "cuda": saved})
    assert [device for _, device in restored] == [0] and torch.equal(restored[0][0], saved[0])


def test_the_fp32_roofline_is_timed_with_tf32_on_cuda_only(monkeypatch):
    """The kernels take fp32 rows as TF32 by default, so the fp32 matmul they are held to is timed
    with TF32 allowed on CUDA (torch's default is IEEE fp32), and the setting is put back."""
    seen = []
    matmul = torch.backends.cuda.matmul
    before, matmul.allow_tf32 = matmul.allow_tf32, False  # a property: monkeypatch cannot undo it
    monkeypatch.setattr(torch, "randn", lambda *size, **kw: torch.zeros(size))
    monkeypatch.setattr(
        common, "time_fn", lambda fn, device, **kw: seen.append(matmul.allow_tf32) or {"median_ms": 1.0}
    )
    try:
        for device, dtype in [("cuda", torch.float32), ("cuda", torch.bfloat16), ("cpu", torch.float32)]:
            common.matmul_tflops(torch.device(device), dtype, 4, 1)
        assert seen == [True, False, False] and matmul.allow_tf32 is False
    finally:
        matmul.allow_tf32 = before


def test_the_plot_floor_is_each_losss_own_work():
    """The dashed line of a loss panel: its own FLOPs (SigLIP's 6·B²·D, not 4·(2N)²·D) at the
    measured matmul rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for loss in ("siglip", "sigclr"):
        rows = [
            {"loss": loss, "provider": "triton", "rows": n, "dim": 64, "dtype": "bf16", "median_ms": 1.0,
             "peak_extra_bytes": 1} for n in (1024, 4096)
        ]  # fmt: skip
        fig, (ax_t, ax_m) = plt.subplots(1, 2)
        plot._loss_panel(ax_t, ax_m, rows, {"matmul_tflops": {"bf16": 100.0}})
        (dashed,) = [line for line in ax_t.get_lines() if line.get_linestyle() == "--"]
        want = [useful_flops(loss, n, 64) / 100e12 * 1e3 for n in (1024, 4096)]
        assert list(dashed.get_ydata()) == want, loss
        plt.close(fig)
