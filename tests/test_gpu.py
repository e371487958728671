"""What only a CUDA device can check: the autotuned kernels compiled for the real GPU, the loss's
memory target, and training with bf16 autocast and the fused kernels. Skipped without CUDA."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_rel, tf32_dt_scale

from fastsigclr.cli import main
from fastsigclr.kernels import sigmoid_strip
from fastsigclr.losses import sigmoid_blocks, sigmoid_pairwise_loss

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


# fp32 rows take TF32 by default (dZ 4.8-6.5e-4 of its scale in the format's model, design §3.4).
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 4e-3), (torch.float32, 2e-3)])
# 2N = 4128 leaves tails in 64- and 128-row tiles, D = 80 in its 128-feature tile and D = 240 in the
# last of its 64-feature steps; 2N, N and D are multiples of 16, as in the loss bench (the same integer
# specialisations): bf16 compiles nothing the bench (and the memory test) do not, fp16 and fp32 one
# variant per D (docs/design.md §11).
@pytest.mark.parametrize("m,d,n_views", [(4128, 80, 2), (4128, 240, 3)])
def test_autotuned_kernel_against_float64(m, d, n_views, dtype, tol):
    """The plan's tiles and configuration on this GPU (not the test block sizes; tests do not
    autotune, tests/conftest.py: the other candidates differ in warps and stages only, and CI
    compiles each of them) at sizes that leave tails in every tile."""
    zh = F.normalize(torch.randn(m, d, device=CUDA, dtype=torch.float64), dim=1).to(dtype)
    t = torch.tensor(10.0, device=CUDA)
    b = torch.tensor(-10.0, device=CUDA)
    from fastsigclr.kernels import sigmoid_block

    loss, dz, _, dt, db = sigmoid_block(zh, zh, t, b, n_per_view=m // n_views, inv_m=1.0 / m, pairs="self")
    got = (loss, dz, dt, db)
    want = sigmoid_blocks(zh.double(), t.double(), b.double(), n_views=n_views)
    # dt cancels (to 0.044 here): under TF32 it is judged on the size of its terms (helpers).
    dt_scale = tf32_dt_scale(zh, 10.0, -10.0, n_views) if dtype == torch.float32 else None
    scales = (None, None, dt_scale, None)
    for name, x, y, scale in zip(("loss", "dz", "dt", "db"), got, want, scales, strict=True):
        assert_close_rel(x, y, tol, name, scale)


def test_fused_kernel_past_one_feature_tile_with_its_plan():
    """bf16 at D = 240 takes the weight strips by default (test above); with this GPU's plan given,
    as deterministic runs give it, the fused kernel's 64-feature steps, against float64."""
    m, d = 4128, 240
    zh = F.normalize(torch.randn(m, d, device=CUDA, dtype=torch.float64), dim=1).to(torch.bfloat16)
    t, b = torch.tensor(10.0, device=CUDA), torch.tensor(-10.0, device=CUDA)
    from fastsigclr.kernels import sigmoid_block, sigmoid_plan

    plan = sigmoid_plan(zh, zh, pairs="self")
    loss, dz, _, dt, db = sigmoid_block(
        zh, zh, t, b, n_per_view=m // 3, inv_m=1.0 / m, pairs="self", plan=plan
    )
    want = sigmoid_blocks(zh.double(), t.double(), b.double(), n_views=3)
    for name, x, y in zip(("loss", "dz", "dt", "db"), (loss, dz, dt, db), want, strict=True):
        assert_close_rel(x, y, 1e-2, name)


def test_autotuned_launch_of_a_64_row_tile(monkeypatch):
    """The production launch (autotuned; the other tests run pinned, tests/conftest.py) at 2N =
    1,024, where the plan takes 64-row tiles and the autotuner compiles two candidates in its
    pruning hook: that launch raised a TypeError on an H200 (tests/test_launches.py)."""
    from fastsigclr.kernels import launches

    monkeypatch.setenv(launches.TUNE_ENV, "on")
    z = torch.randn(1024, 128, device=CUDA, generator=torch.Generator(CUDA).manual_seed(3))
    x = z.to(torch.bfloat16).requires_grad_()
    bias = torch.tensor(-10.0, device=CUDA, requires_grad=True)
    sigmoid_pairwise_loss(x, 10.0, bias).backward()
    want = z.to(torch.bfloat16).double().requires_grad_()
    want_bias = torch.tensor(-10.0, device=CUDA, dtype=torch.float64, requires_grad=True)
    sigmoid_pairwise_loss(want, 10.0, want_bias, impl="torch").backward()
    assert_close_rel(x.grad, want.grad, 1e-2, "dz")
    assert_close_rel(bias.grad, want_bias.grad, 1e-2, "db")


def test_memory_target_at_65536_rows():
    """At 2N = 65536, D = 256, bf16, fwd+bwd allocates at most 4x the size of z, plus the fp32
    1/‖z‖ per row that normalize_rows keeps for backward, a few KiB of per-launch sums (an
    H200 measured 4×|z| + 269,312 bytes: 65,536 rows × 4 B + 7,168 B, before the weight strips)
    and, past D = 128, one weight strip (kernels/sigmoid_strip.py: 512 MiB, 4,096 rows here) with
    the fp32 product of its mirror pairs (the 61,440 later rows × 256, within MIRROR_BYTES)."""
    z = torch.randn(65536, 256, device=CUDA, dtype=torch.bfloat16, requires_grad=True)
    bias = torch.tensor(-10.0, device=CUDA, requires_grad=True)
    sigmoid_pairwise_loss(z, 10.0, bias).backward()  # compile outside the measurement
    z.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    sigmoid_pairwise_loss(z, 10.0, bias).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    strip = sigmoid_strip.strip_rows(65536, 65536, 2, sigmoid_strip.STRIP_CONFIG["block"]) * 65536 * 2
    mirror = min(sigmoid_strip.MIRROR_BYTES, (65536 - strip // (65536 * 2)) * 256 * 4)
    budget = 4 * z.numel() * z.element_size() + 4 * z.shape[0] + 64 * 1024 + strip + mirror
    assert extra <= budget, extra / (z.numel() * z.element_size())


@pytest.mark.parametrize("compile_flag", ["--no-compile", "--compile"])
def test_training_on_cuda(cifar10_dir, tmp_path, compile_flag, monkeypatch):
    """`fastsigclr train` as a user runs it: autotuned launches (the other tests run pinned; a
    batch of 256 gives 2N = 512 and 64-row tiles, whose autotuning raised on an H200 before)."""
    from fastsigclr.kernels import launches

    monkeypatch.setenv(launches.TUNE_ENV, "on")
    out = tmp_path / "run"
    args = (
        f"train --dataset cifar10 --data-dir {cifar10_dir} --device cuda --limit-train 2048 --limit-test 500 "
        f"--width 16 --batch-size 256 --epochs 2 --no-progress {compile_flag} --out {out}"
    ).split()
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["device"]["type"] == "cuda" and 0 <= summary["knn_acc"] <= 1
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses)))
