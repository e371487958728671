"""The two-view augmentation: fused kernel vs the PyTorch reference, the reference vs first
principles, the sampled parameters vs the recipe, and the GPU-resident loader's contract."""

import math

import numpy as np
import pytest
import torch
from helpers import KERNEL_DEVICE, gpu_cases

from fastsigclr.data.augment import augment_reference, gaussian_blur
from fastsigclr.data.gpu_loader import KERNEL_COLUMNS, GpuLoader, normalized
from fastsigclr.data.plan import AugmentSpec, Col, sample_params
from fastsigclr.kernels import two_view_augment

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CPU = torch.device("cpu")


def images(n, h, w, seed=0):
    return torch.randint(
        0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def identity_params(n_views, b, h, w):
    p = torch.zeros(n_views, b, len(Col))
    p[..., Col.H], p[..., Col.W] = h, w
    p[..., Col.BRIGHT] = p[..., Col.CONTRAST] = p[..., Col.SAT] = 1.0
    return p


# On a GPU the 32² case: the size the identity and loader tests (and training) launch.
@pytest.mark.parametrize(
    "h,w,size,batch", gpu_cases([(32, 32, 32, 17), (20, 28, 24, 5), (64, 64, 64, 3)], [(32, 32, 32, 17)])
)
def test_kernel_matches_reference(h, w, size, batch):
    spec = AugmentSpec.simclr(size, MEAN, STD, blur=False)
    data = images(40, h, w)
    gen = torch.Generator().manual_seed(h * w + batch)
    index = torch.randperm(40, generator=gen)[:batch]
    params = sample_params(spec, batch, h, w, gen)
    params[:, :, Col.SOLAR] = (torch.rand(2, batch, generator=gen) < 0.5).float()  # exercise solarisation
    ref = augment_reference(data[index], params, spec)
    dev = KERNEL_DEVICE
    out = two_view_augment(
        data.to(dev), index.to(dev), params.to(dev), size, MEAN, STD, torch.float32, columns=KERNEL_COLUMNS
    )
    assert out.shape == ref.shape == (2 * batch, 3, size, size)
    assert out.is_contiguous(memory_format=torch.channels_last)
    # Same arithmetic in the same order; measured ≤ 2e-6 (fp32 rounding of sums of four taps).
    assert (out.cpu() - ref).abs().max().item() < 1e-5
    half = two_view_augment(
        data.to(dev), index.to(dev), params.to(dev), size, MEAN, STD, torch.bfloat16, columns=KERNEL_COLUMNS
    )
    assert half.dtype == torch.bfloat16 and half.is_contiguous(memory_format=torch.channels_last)
    # bf16 keeps 8 significant bits: |x| ≤ 4.2 here, and the interpreter truncates (2⁻⁷ relative).
    assert (half.cpu().float() - ref).abs().max().item() < 4.2 * 2**-7


def test_identity_parameters_reproduce_the_image():
    data = images(4, 32, 32)
    spec = AugmentSpec.simclr(32, MEAN, STD)
    out = augment_reference(data, identity_params(2, 4, 32, 32), spec)
    expected = normalized(data, MEAN, STD, torch.float32)
    assert torch.allclose(out[:4], expected, atol=1e-5) and torch.allclose(out[4:], expected, atol=1e-5)
    dev = KERNEL_DEVICE
    params = identity_params(2, 4, 32, 32).to(dev)
    index = torch.arange(4, device=dev)
    kernel = two_view_augment(
        data.to(dev), index, params, 32, MEAN, STD, torch.float32, columns=KERNEL_COLUMNS
    )
    assert torch.allclose(kernel[:4].cpu(), expected, atol=1e-5)


def test_single_operations_do_what_they_say():
    data = images(2, 16, 16, seed=3)
    spec = AugmentSpec(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    base = augment_reference(data, identity_params(2, 2, 16, 16), spec)[:2]
    p = identity_params(2, 2, 16, 16)
    p[:, :, Col.FLIP] = 1
    assert torch.allclose(augment_reference(data, p, spec)[:2], base.flip(-1), atol=1e-6)
    p = identity_params(2, 2, 16, 16)
    p[:, :, Col.GRAY] = 1
    gray = augment_reference(data, p, spec)[:2]
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    p = identity_params(2, 2, 16, 16)
    p[:, :, Col.SOLAR] = 1
    solar = augment_reference(data, p, spec)[:2]
    assert torch.allclose(solar, torch.where(base >= 0.5, 1 - base, base), atol=1e-6)
    for turns in (0.0, 1.0):  # no rotation, and a full turn of the chroma plane
        p = identity_params(2, 2, 16, 16)
        p[:, :, Col.HUE] = turns
        assert torch.allclose(augment_reference(data, p, spec)[:2], base, atol=1e-5)
    p = identity_params(2, 2, 16, 16)
    p[:, :, Col.HUE] = 1 / 3  # a third of a turn cycles the channels: r → g → b → r
    assert torch.allclose(augment_reference(data, p, spec)[:2], base[:, [2, 0, 1]], atol=1e-5)
    p = identity_params(2, 2, 16, 16)
    p[:, :, Col.BRIGHT] = 0.5
    assert torch.allclose(augment_reference(data, p, spec)[:2], base * 0.5, atol=1e-6)
    p = identity_params(2, 2, 16, 16)
    p[:, :, Col.SAT] = 0.0
    desat = augment_reference(data, p, spec)[:2]
    assert torch.allclose(desat, gray, atol=1e-6)


def test_blur():
    x = torch.rand(3, 20, 20, 3)
    assert torch.equal(gaussian_blur(x, torch.zeros(3)), x)
    flat = torch.full((2, 20, 20, 3), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.0, 2.0])), flat, atol=1e-6)
    blurred = gaussian_blur(x, torch.full((3,), 2.0))
    assert blurred.std() < x.std() * 0.7


def five_sigma(p, n):
    return 5 * math.sqrt(p * (1 - p) / n)


def test_parameters_follow_the_recipe():
    n, h, w = 20_000, 1000, 1000  # large images: integer rounding of crop sides is negligible
    spec = AugmentSpec.simclr(64, MEAN, STD)  # 64²: blur on (p 1.0 / 0.1), solarise p 0 / 0.2
    p = sample_params(spec, n, h, w, torch.Generator().manual_seed(0))
    assert p.shape == (2, n, len(Col))
    for v, view in enumerate(spec.views):
        q = p[v]
        assert (q[:, Col.Y0] >= 0).all() and (q[:, Col.Y0] + q[:, Col.H] <= h).all()
        assert (q[:, Col.X0] >= 0).all() and (q[:, Col.X0] + q[:, Col.W] <= w).all()
        area = q[:, Col.H] * q[:, Col.W] / (h * w)
        assert area.min() >= 0.079 and area.max() <= 1.0
        # Below 0.75 of the area every aspect ratio fits, so accepted areas there are uniform.
        small = np.sort(area[area <= 0.75].numpy())
        cdf = (small - 0.08) / (0.75 - 0.08)
        ks = np.max(np.abs(cdf - np.arange(1, len(small) + 1) / len(small)))
        assert ks < 1.95 / math.sqrt(len(small)), ks  # KS test at the 0.1% level
        log_ratio = torch.log(q[:, Col.W] / q[:, Col.H])
        assert log_ratio.abs().max() <= math.log(4 / 3) + 0.01
        rates = {
            Col.FLIP: (q[:, Col.FLIP].mean(), view.flip_p),
            Col.GRAY: (q[:, Col.GRAY].mean(), view.gray_p),
            Col.SOLAR: (q[:, Col.SOLAR].mean(), view.solarize_p),
            Col.BLUR: ((q[:, Col.BLUR] > 0).float().mean(), view.blur_p),
        }
        jittered = (q[:, Col.BRIGHT] != 1) | (q[:, Col.HUE] != 0)
        rates["jitter"] = (jittered.float().mean(), view.jitter_p)
        for name, (rate, target) in rates.items():
            assert abs(rate.item() - target) <= five_sigma(target, n) + 1e-9, (v, name, rate, target)
        j = q[jittered]
        for col, spread in ((Col.BRIGHT, 0.4), (Col.CONTRAST, 0.4), (Col.SAT, 0.2)):
            assert j[:, col].min() >= 1 - spread and j[:, col].max() <= 1 + spread
            assert abs(j[:, col].mean().item() - 1) < 5 * spread / math.sqrt(3 * len(j))
        assert j[:, Col.HUE].abs().max() <= 0.1
        sigma = q[q[:, Col.BLUR] > 0, Col.BLUR]
        assert sigma.numel() == 0 or (sigma.min() >= 0.1 and sigma.max() <= 2.0)
    assert [view.blur_p for view in AugmentSpec.simclr(32, MEAN, STD).views] == [0.0, 0.0]  # off at 32²


def loader(n=50, batch=8, seed=0, device=CPU, dtype=torch.float32, **kw):
    data = images(n, 32, 32).numpy()
    labels = np.arange(n)  # labels double as sample ids
    return GpuLoader(data, labels, AugmentSpec.simclr(32, MEAN, STD), batch, device, dtype, seed=seed, **kw)


def test_loader_batches_layout_dtype_and_coverage():
    ld = loader(n=48, batch=8, dtype=torch.bfloat16)
    seen = []
    for views, ids in ld.epoch(0):
        assert views.shape == (16, 3, 32, 32) and views.dtype == torch.bfloat16
        assert views.is_contiguous(memory_format=torch.channels_last)
        assert not torch.equal(views[:8], views[8:])  # two different views of the same images
        seen += ids.tolist()
    assert sorted(seen) == list(range(48)), "one epoch covers every sample exactly once"
    ragged = loader(n=50, batch=8, drop_last=False)
    assert len(ragged) == 7 and sum(len(ids) for _, ids in ragged.epoch(0)) == 50


def test_loader_is_reproducible_from_seed_and_epoch():
    a, b, c = loader(seed=1), loader(seed=1), loader(seed=2)
    for (va, ia), (vb, ib) in zip(a.epoch(3), b.epoch(3), strict=True):
        assert torch.equal(ia, ib) and torch.equal(va, vb)
    first = [ids.tolist() for _, ids in a.epoch(0)]
    assert first != [ids.tolist() for _, ids in a.epoch(1)]
    assert first != [ids.tolist() for _, ids in c.epoch(0)]


def test_loader_kernel_path_equals_reference_path():
    # Same device for both: parameters come from that device's generator.
    ref = loader(seed=4, device=KERNEL_DEVICE, use_kernel=False)
    fused = loader(seed=4, device=KERNEL_DEVICE, use_kernel=True)
    for (vr, ir), (vk, ik) in zip(ref.epoch(0), fused.epoch(0), strict=True):
        assert torch.equal(ir, ik)
        assert (vr - vk).abs().max() < 1e-5


def test_loader_kernel_with_blur_matches_reference():
    data = images(20, 64, 64).numpy()
    spec = AugmentSpec.simclr(64, MEAN, STD)
    assert spec.uses_blur
    args = (data, np.arange(20), spec, 4, KERNEL_DEVICE, torch.float32)
    ref, fused = GpuLoader(*args, seed=5, use_kernel=False), GpuLoader(*args, seed=5, use_kernel=True)
    vr, _ = next(iter(ref.epoch(0)))
    vk, _ = next(iter(fused.epoch(0)))
    assert (vr - vk).abs().max() < 1e-4


def test_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        GpuLoader(
            np.zeros((4, 32, 32, 3), np.float32),
            np.arange(4),
            AugmentSpec.simclr(32, MEAN, STD),
            2,
            torch.device("cpu"),
            torch.float32,
        )
    with pytest.raises(ValueError, match="larger than the 10 training images"):
        loader(n=10, batch=16)
    with pytest.raises(ValueError, match="not divisible by the 3 ranks"):
        loader(n=64, batch=16, world_size=3)


def test_ranks_split_the_global_batch_exactly():
    """K ranks' views, concatenated per view in rank order, are the one-process views."""
    whole = list(loader(n=64, batch=16).epoch(2))
    shards = [list(loader(n=64, batch=16, rank=r, world_size=2).epoch(2)) for r in range(2)]
    assert len(whole) == len(shards[0]) == 4
    for i, (views, labels) in enumerate(whole):
        parts = [shard[i] for shard in shards]
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        per_view = [p[0].view(2, 8, *p[0].shape[1:]) for p in parts]
        joined = torch.cat(per_view, dim=1).reshape(views.shape)
        assert torch.equal(joined, views)


def test_third_view_takes_a_different_weak_transform():
    spec = AugmentSpec.simclr(32, MEAN, STD, n_views=3)
    first, second, third = spec.views
    assert third != first and third != second
    assert (
        third.crop_scale == (0.2, 1.0) and third.jitter_p == 0 and third.gray_p == 0 and third.solarize_p == 0
    )
    p = sample_params(spec, 4000, 32, 32, torch.Generator().manual_seed(0))
    assert (p[2, :, Col.BRIGHT] == 1).all() and (p[2, :, Col.GRAY] == 0).all()
    assert (p[2, :, Col.H] * p[2, :, Col.W] / 1024).min() >= 0.19  # crop scale from 0.2 (integer sides)


def test_kernel_names_each_column_it_needs():
    params = torch.zeros(2, 1, 12)
    with pytest.raises(ValueError, match="solar"):
        two_view_augment(images(1, 8, 8), torch.arange(1), params, 8, MEAN, STD, torch.float32,
                         columns={k: v for k, v in KERNEL_COLUMNS.items() if k != "solar"})  # fmt: skip
