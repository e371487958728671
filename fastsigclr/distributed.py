"""The plumbing of ``torchrun`` runs: this process's place in the run (Context), joining and
leaving the process group, barriers and sums over ranks, the check that every rank runs the same
settings and code, and the DDP hook that sums gradients.

The losses of a distributed run live with the losses (``fastsigclr.losses.ranks`` and the sigmoid
loss's block loop): every rank computes the loss of the global batch and the true global gradient
of its own rows, so a DDP model must *sum* its parameter gradients across ranks rather than
average them: ``sum_gradients_hook`` does that (the trainer installs it).
"""

import inspect
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from fastsigclr import cluster
from fastsigclr.config import FastSigCLRError

# Options of every DDP wrapper. find_unused_parameters=True keeps the gradient buckets DDP builds
# at the start (parameter order) instead of rebuilding them after the first step in the order the
# gradients arrived. A resumed run starts a new DDP, whose first step would otherwise all-reduce in
# another layout (float32 sums in another order) than the uninterrupted run's: measured, the losses
# 1.7e-7 relative apart one step later, 0.8% seven steps later (2 nodes x 2 ranks, width 8, LARS);
# with it the resumed run is bitwise the uninterrupted one (tests/test_elastic.py). Cost: one walk
# of the autograd graph per step, and DDP's one-time warning per rank that it found no unused
# parameters.
DDP_OPTIONS = {"find_unused_parameters": True}
# The model's DDP (MODEL_DDP_OPTIONS) does not broadcast rank 0's buffers at every forward:
# GlobalBatchNorm's statistics are the same on every rank already, and --no-sync-bn keeps each
# rank's own. torch 2.13 deprecates broadcast_buffers (a FutureWarning on every rank) for
# forward_sync_buffers, whose False still broadcasts rank 0's buffers once, as DDP starts: harmless,
# since every rank holds the same buffers then (the model's only buffers are batch-norm statistics:
# their initial values in a new run; in a resumed one the checkpoint's, which every rank loads
# before DDP starts). torch before it: broadcast_buffers.
_DDP_PARAMETERS = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
MODEL_DDP_OPTIONS = {
    **DDP_OPTIONS,
    "forward_sync_buffers" if "forward_sync_buffers" in _DDP_PARAMETERS else "broadcast_buffers": False,
}


def sum_gradients_hook(group, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-reduce SUM (DDP's default averages). See the module docstring.
    (DDP checks this signature's annotations as objects: this module has no lazy annotations.)"""
    pg = group if group is not None else dist.group.WORLD
    work = dist.all_reduce(bucket.buffer(), group=pg, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


@dataclass(frozen=True)
class Context:
    """This process's place in a run: one process (world_size 1) or one rank of torchrun's."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device, timeout_s: float) -> Context:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT): NCCL on CUDA, gloo on CPU. Without torchrun: one process.
    ``timeout_s`` bounds the wait to join and every collective after (FastSigCLRError on a join
    that does not complete in time)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=device)
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise FastSigCLRError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed runs with "
            f"`torchrun --nproc_per_node K -m fastsigclr train ...`",
            alike=True,  # the environment of every process of a node
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise FastSigCLRError(
                f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs on this node: "
                f"lower --nproc_per_node"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        cluster.check_restartable()
        backend = "nccl" if device.type == "cuda" else "gloo"
        cluster.join(backend, rank, world, timeout_s, device if device.type == "cuda" else None)
    return Context(rank=rank, world_size=world, local_rank=local_rank, device=device)


def check_same_run(ctx: Context, settings: dict) -> None:
    """Refuse, on every rank, a run whose ranks differ in settings or code (see fastsigclr.cluster)."""
    if ctx.distributed:
        cluster.check_same_run(settings)


def check_same_data(ctx: Context, identity: dict[str, Any] | None, what: str = "images") -> None:
    """Refuse, on every rank, a run whose ranks read other images (``SampleIndex.identity``, None
    for a split that is absent: each node may hold its own copy of the dataset at the same
    --data-dir). Raised on one rank alone, the others would wait in the next collective until
    --dist-timeout."""
    if not ctx.distributed:
        return
    per_rank: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(per_rank, identity)
    if any(other != per_rank[0] for other in per_rank):
        shown = [f"{i['images']} images (digest {i['digest']})" if i else "none" for i in per_rank]
        raise FastSigCLRError(
            f"the {ctx.world_size} ranks read different {what}, so none starts: {cluster.by_value(shown)}; "
            f"give every node the same copy of the dataset in --data-dir",
            alike=True,  # every rank compares the same gathered identities
        )


def union(ctx: Context, ids: Collection[int]) -> set[int]:
    """The union of every rank's ``ids``."""
    if not ctx.distributed:
        return set(ids)
    per_rank: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(per_rank, sorted(ids))
    return set().union(*per_rank)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def all_sum(ctx: Context, value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over ranks (a copy; the input is untouched)."""
    if not ctx.distributed:
        return value
    out = value.clone()
    dist.all_reduce(out)
    return out


def share(ctx: Context, value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not ctx.distributed:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
