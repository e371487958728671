"""What every loader backend shares: the epoch's order, its global batches, each rank's share of
a batch, and the augmentation parameters of that share.

An epoch's permutation and parameter table (``plan.AugmentPlan``) come from generators seeded by
(seed, epoch) alone, so an epoch is the same whether a run was resumed or not, and whatever the
number of ranks: each rank takes a contiguous slice of every global batch, and the slices
concatenated in rank order are the batch one process would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fastsigclr.config import ConfigError
from fastsigclr.data.plan import AugmentPlan, seed_for


def check_batch(
    batch_size: int, n: int, images: str = "training images", fix: str = "use more images", given: str = ""
) -> None:
    """The one check (and message) of a batch larger than the training images: by every loader on
    the images it has, and by ``TrainConfig.resolved`` on ``--limit-train`` before anything loads.
    ``given``: where the batch size came from, when not typed (e.g. " (the cifar10 preset)")."""
    if batch_size > n:
        raise ConfigError(
            f"--batch-size {batch_size}{given} is larger than the {n} {images}: pass --batch-size {n} "
            f"or less, or {fix}"
        )


def check_sharding(n: int, batch_size: int, drop_last: bool, rank: int, world_size: int) -> None:
    """The errors every loader gives for impossible batch/rank settings (ConfigErrors: the
    command line prints them without a traceback)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    if batch_size % world_size:
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the {world_size} ranks; choose a "
            f"--batch-size that is a multiple of the number of processes"
        )
    if drop_last:
        check_batch(batch_size, n)
    if not drop_last and n % batch_size and n % batch_size < world_size:
        raise ConfigError(f"the last batch of {n % batch_size} images cannot be shared by {world_size} ranks")


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_plan(
    plan: AugmentPlan,
    batch_size: int,
    *,
    epoch: int,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    start: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (indices (b,), params (V, b, len(Col))) of this rank's share of each global batch,
    from batch ``start`` on (a run resumed inside the epoch: the batches it has not trained).

    The epoch's table and permutation are drawn once on the CPU, whatever ``device`` (a CUDA
    generator draws another order: every backend must see the same one), and moved there; a batch
    only gathers its rows."""
    gen = torch.Generator().manual_seed(seed_for(plan.seed, epoch))
    perm = torch.randperm(plan.n, generator=gen).to(device)
    table = plan.table(epoch).to(device)
    for i in range(start, num_batches(plan.n, batch_size, drop_last)):
        index = perm[i * batch_size : (i + 1) * batch_size]
        share = len(index) // world_size  # a remainder below world_size is left out
        mine = index[rank * share : (rank + 1) * share]
        yield mine, table[:, mine]
