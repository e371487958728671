"""The augmentation plan: the crop law against RandomResizedCrop's, a fixed number of tensor
operations per draw and per batch, and one plan for a seed whatever the ranks or resume point."""

import math

import numpy as np
import pytest
import torch

from fastsigclr.bench.augment import count_ops, synthetic_images
from fastsigclr.bench.pil_baseline import PilViews
from fastsigclr.data.augment import augment_reference
from fastsigclr.data.order import epoch_plan
from fastsigclr.data.plan import AugmentPlan, AugmentSpec, Col, sample_params

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def ks_uniform(x: np.ndarray, lo: float, hi: float) -> float:
    """Kolmogorov–Smirnov distance between the sample x and the uniform law on [lo, hi]."""
    x = np.sort(x)
    cdf = (x - lo) / (hi - lo)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))


def test_crop_area_and_ratio_follow_random_resized_crop():
    """On a 10,000² image (side rounding negligible) every attempt with area ≤ 3/4 fits at any
    ratio in (3/4, 4/3), so there the area is uniform on (0.08, 3/4) and the log-ratio uniform
    and independent of it: KS tests at the 0.1% level (critical distance 1.95/√n)."""
    n, side = 20_000, 10_000
    spec = AugmentSpec.simclr(32, MEAN, STD, n_views=1)
    p = sample_params(spec, n, side, side, torch.Generator().manual_seed(0))[0].double().numpy()
    area = p[:, Col.H] * p[:, Col.W] / side**2
    small = area <= 0.75
    assert ks_uniform(area[small], 0.08, 0.75) < 1.95 / math.sqrt(small.sum())
    log_ratio = np.log(p[small, Col.W] / p[small, Col.H])
    assert ks_uniform(log_ratio, math.log(3 / 4), math.log(4 / 3)) < 1.95 / math.sqrt(small.sum())
    # Above 3/4 only some ratios fit: the share of such areas is below its unconditional 0.25/0.92.
    assert 0.05 < (~small).mean() < 0.25 / 0.92


def test_crop_falls_back_to_the_centred_box_when_no_attempt_fits():
    """A 2×100 strip: no box of area ≥ 16 with ratio ≤ 4/3 fits, so every row takes
    torchvision's fallback, the full height at ratio 4/3 (3 wide), centred."""
    p = sample_params(AugmentSpec.simclr(8, MEAN, STD), 50, 2, 100, torch.Generator().manual_seed(1))
    box = p[..., [Col.Y0, Col.X0, Col.H, Col.W]].reshape(-1, 4)
    assert torch.equal(box, torch.tensor([[0.0, 48.0, 2.0, 3.0]]).expand_as(box))


@pytest.mark.parametrize("n_views", [1, 3])
def test_draw_costs_a_fixed_number_of_operations(n_views):
    """Drawing rows costs the same operations for 8 rows or 4096, one view or three."""
    spec = AugmentSpec.simclr(64, MEAN, STD, n_views=n_views)
    small = count_ops(lambda: sample_params(spec, 8, 64, 64, torch.Generator().manual_seed(0)))
    large = count_ops(lambda: sample_params(spec, 4096, 64, 64, torch.Generator().manual_seed(0)))
    base = count_ops(lambda: sample_params(AugmentSpec.simclr(64, MEAN, STD), 8, 64, 64, torch.Generator()))
    assert small == large == base
    assert small < 80  # measured 68; one per column and view was 233 for two views


@pytest.mark.parametrize("batch_size", [8, 64])
def test_a_batch_costs_a_fixed_number_of_operations(batch_size):
    """After the epoch's table, each batch only slices the order and gathers its rows."""
    plan = AugmentPlan(AugmentSpec.simclr(32, MEAN, STD, n_views=3), 256, (32, 32), seed=0)
    batches = epoch_plan(plan, batch_size, epoch=0)
    next(batches)  # the permutation and the table
    per_batch = [count_ops(lambda: next(batches)) for _ in range(3)]
    assert per_batch[0] == per_batch[1] == per_batch[2] <= 4, per_batch


def epoch_rows(plan: AugmentPlan, epoch: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each global batch of the epoch as (indices, params), rebuilt from its ranks' shares."""
    shares = [
        list(epoch_plan(plan, 16, epoch=epoch, rank=r, world_size=world_size)) for r in range(world_size)
    ]
    return [
        (torch.cat([s[i][0] for s in shares]), torch.cat([s[i][1] for s in shares], dim=1))
        for i in range(len(shares[0]))
    ]


def test_plan_is_the_same_for_any_world_size_and_resume_point():
    spec = AugmentSpec.simclr(32, MEAN, STD)
    run = AugmentPlan(spec, 64, (32, 32), seed=5)
    epochs = [epoch_rows(run, e, 1) for e in range(3)]
    resumed = AugmentPlan(spec, 64, (32, 32), seed=5)  # a new process that starts at epoch 2
    for world_size in (1, 2, 4):
        for (index, params), (i2, p2) in zip(epochs[2], epoch_rows(resumed, 2, world_size), strict=True):
            assert torch.equal(index, i2) and torch.equal(params, p2)
    index, params = epochs[1][0]
    assert torch.equal(params, run.table(1)[:, index])  # a sample's rows, whichever batch it is in
    assert not torch.equal(run.table(1), run.table(2))
    assert not torch.equal(run.table(2), AugmentPlan(spec, 64, (32, 32), seed=6).table(2))


def test_pil_baseline_applies_the_plan():
    """The PIL baseline's views of (epoch, sample) use that sample's rows: where a row changes
    no colour (PIL's jitter and hue differ from the recipe's by design), they are the
    reference's up to PIL's 8-bit output (one level: 1/255 over the std)."""
    spec = AugmentSpec.simclr(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = synthetic_images(48, 32)
    pil = PilViews(images, spec, seed=3)
    table = pil.plan.table(1)
    plain = 0
    for i in range(48):
        views, _ = pil[(1, i)]
        ref = augment_reference(torch.from_numpy(images[i : i + 1]), table[:, i : i + 1], spec)
        for v, row in enumerate(table[:, i]):
            if row[Col.BRIGHT] == 1 and row[Col.HUE] == 0 and row[Col.GRAY] == 0 and row[Col.SOLAR] == 0:
                plain += 1
                assert (views[v] - ref[v].permute(1, 2, 0)).abs().max() <= 1.01 / 255 / 0.25
    assert plain >= 5


def test_order_is_drawn_on_the_cpu_for_every_device(monkeypatch):
    """The gpu loader drew its order from a CUDA generator (another stream of numbers) while DALI's
    came from the CPU; the meta device stands in for the GPU."""
    calls, real = [], torch.randperm

    def randperm(n, *args, generator=None, device=None, **kwargs):
        calls.append((generator.device.type, torch.device(device or "cpu").type))
        return real(n, *args, generator=generator, device=device, **kwargs)

    monkeypatch.setattr(torch, "randperm", randperm)
    plan = AugmentPlan(AugmentSpec.simclr(32, MEAN, STD), 64, (32, 32), seed=0)
    index, params = next(iter(epoch_plan(plan, 16, epoch=0, device="meta")))
    assert calls == [("cpu", "cpu")]
    assert index.device.type == params.device.type == "meta"


def test_pil_baseline_moves_the_pinned_batch_before_reordering_it():
    """The bench's PIL loader reshaped its pinned batch on the host (a pageable copy) before moving
    it; the meta device stands in for the GPU: no host memory may be allocated per batch."""
    from fastsigclr.bench.memory import TensorAllocations
    from fastsigclr.bench.pil_baseline import PilLoader

    spec = AugmentSpec.simclr(16, MEAN, STD)
    loader = PilLoader(np.zeros((8, 16, 16, 3), np.uint8), None, spec, 4, torch.device("meta"), torch.float32)
    loader.loader = [(torch.zeros(4, 2, 16, 16, 3), torch.arange(4))]  # one batch as the workers give it
    with TensorAllocations() as host:
        x, ids = next(loader.epoch(0))
    assert host.peak_bytes == 0 and x.shape == (8, 3, 16, 16)
    assert x.device.type == ids.device.type == "meta"
