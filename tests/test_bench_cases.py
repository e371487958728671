"""pytest-benchmark cases for the CPU sizes: `pytest tests/test_bench_cases.py --benchmark-enable`.

With the default `--benchmark-disable` (pyproject.toml) each case runs once, as a smoke check.
"""

from functools import partial

import pytest
import torch

from fastsigclr.losses import sigmoid_pairwise_loss, sigmoid_pairwise_loss_reference

PROVIDERS = {
    "eager": sigmoid_pairwise_loss_reference,
    "chunked": partial(sigmoid_pairwise_loss, impl="torch"),
}


@pytest.mark.parametrize("rows,dim", [(512, 128), (1024, 64)])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_loss_fwd_bwd(benchmark, provider, rows, dim):
    z = torch.randn(rows, dim, requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    fn = PROVIDERS[provider]

    def step():
        z.grad = None
        loss = fn(z, 10.0, bias)
        loss.backward()
        return loss

    loss = benchmark(step)
    assert torch.isfinite(loss) and z.grad is not None


@pytest.fixture(scope="module")
def augment_batch_inputs():
    from fastsigclr.bench.augment import synthetic_images
    from fastsigclr.data.augment import AugmentSpec

    return synthetic_images(256, 32), AugmentSpec.simclr(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("backend", ["gpu", "dali"])
def test_augment_epoch(benchmark, backend, augment_batch_inputs):
    """One epoch of 256 CIFAR-sized images, two views each, on the CPU."""
    import numpy as np

    from fastsigclr.data import LOADERS

    images, spec = augment_batch_inputs
    loader = LOADERS[backend].cls(images, np.arange(256), spec, 64, torch.device("cpu"), torch.float32)

    def epoch():
        return sum(len(x) for x, _ in loader.epoch(0))

    assert benchmark(epoch) == 512
