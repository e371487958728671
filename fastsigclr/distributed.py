"""Many processes: the exact distributed sigmoid loss, and the plumbing of ``torchrun`` runs.

Rank r holds its local rows ``z_r`` (V·n, D), view-major. The global batch is each view's rows
concatenated across ranks in rank order (rows v·K·n + r·n + i), and every function here returns
exactly what the single-process loss returns on that batch: value and gradients.

Why no gradient travels between ranks: with G the (scaled) matrix σ(a) − [positive], the sigmoid
loss gives ∂L/∂ẑ_i = 2t·Σ_j G_ij ẑ_j because G is symmetric. Rank r therefore needs only its own
rows of G, i.e. its rows against every rank's columns, to form the complete gradient of its rows.
The loss and ∂L/∂t, ∂L/∂b are sums over rows: one 3-float all-reduce. In ``mode="ring"`` the
column blocks travel around the ring (send to r+1, receive from r−1) while the kernel works on the
block in hand, so a rank holds at most two remote blocks at a time, whatever the world size;
``mode="gather"`` all-gathers them first (K blocks held at once).

Because every rank's loss is the global loss and its gradients are the true global gradients of
its own rows, a DDP model must *sum* its parameter gradients across ranks rather than average
them: ``sum_gradients_hook`` does that (the trainer installs it).
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fastsigclr import cluster
from fastsigclr.config import FastSigCLRError
from fastsigclr.losses import SigmoidPairwiseLoss
from fastsigclr.losses.common import (
    Impl,
    PrecomputedGrad,
    Scalar,
    as_scalar_tensor,
    kernel,
    resolve_impl,
)
from fastsigclr.losses.normalize import normalize_rows
from fastsigclr.losses.sigmoid import check_inputs, sigmoid_block_chunked

MODES = ("ring", "gather")


def _world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group first "
            "(torchrun sets the environment it needs), or use sigmoid_pairwise_loss in one process"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def _global_rank(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _check_same_shape(z: torch.Tensor, group) -> None:
    """All ranks must hold the same number of rows and features; one tiny all-gather says so."""
    _, world = _world(group)
    shape = torch.tensor(list(z.shape), dtype=torch.int64, device=z.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    seen = [tuple(s.tolist()) for s in shapes]
    if len(set(seen)) != 1:
        raise ValueError(
            f"every rank must pass z of the same shape; got {seen} by rank. Give each rank the same "
            f"local batch size (drop the last partial batch)"
        )


def ring_blocks(zhat: torch.Tensor, group=None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (owner rank, rows) for every rank's rows, starting with this rank's own.

    The next block is already on its way (non-blocking send to r+1, receive from r−1) while the
    caller works on the current one; at most the current and the incoming block are held."""
    rank, world = _world(group)
    send_to = _global_rank(group, (rank + 1) % world)
    recv_from = _global_rank(group, (rank - 1) % world)
    current = zhat.contiguous()
    for step in range(world):
        pending = []
        if step < world - 1:
            incoming = torch.empty_like(current)
            pending = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, current, send_to, group),
                    dist.P2POp(dist.irecv, incoming, recv_from, group),
                ]
            )
        yield (rank - step) % world, current
        for request in pending:
            request.wait()
        if pending:
            current = incoming


def gather_blocks(zhat: torch.Tensor, group=None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (owner rank, rows) for every rank, from one all-gather (all K blocks held)."""
    rank, world = _world(group)
    blocks = [torch.empty_like(zhat) for _ in range(world)]
    dist.all_gather(blocks, zhat.contiguous(), group=group)
    yield rank, zhat
    for owner in range(world):
        if owner != rank:
            yield owner, blocks[owner]


def _distributed_backend(
    zhat: torch.Tensor,
    temperature: torch.Tensor,
    bias: torch.Tensor,
    *,
    n_views: int,
    mode: str,
    group,
    impl: str,
    compute_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    rank, world = _world(group)
    m = zhat.shape[0]
    if impl == "triton":
        block = partial(kernel("sigmoid_block_triton"), dz_dtype=torch.float32)
    else:
        block = sigmoid_block_chunked
    work = torch.float64 if zhat.dtype == torch.float64 else torch.float32
    dz = torch.zeros(zhat.shape, dtype=work, device=zhat.device) if compute_grad else None
    sums = torch.zeros(3, dtype=work, device=zhat.device)  # loss, dL/dt, dL/db
    blocks = ring_blocks(zhat, group) if mode == "ring" else gather_blocks(zhat, group)
    for owner, cols in blocks:
        loss, dz_block, dt, db = block(
            zhat,
            cols,
            temperature,
            bias,
            n_per_view=m // n_views,
            inv_m=1.0 / (m * world),
            self_block=owner == rank,
            compute_grad=compute_grad,
        )
        sums += torch.stack([loss, dt, db]).to(work)
        if dz is not None:
            dz += dz_block
    dist.all_reduce(sums, group=group)
    return sums[0], dz, sums[1], sums[2]


def sigmoid_pairwise_loss_distributed(
    z_local: torch.Tensor,
    temperature: Scalar,
    bias: Scalar,
    *,
    n_views: int = 2,
    mode: str = "ring",
    group=None,
    normalize: bool = True,
    impl: Impl = "auto",
    check_shapes: bool = True,
) -> torch.Tensor:
    """The SigCLR loss of the global batch, computed from each rank's ``z_local`` (V·n, D).

    Returns the global loss (the same fp32 scalar on every rank). Backward gives ``z_local`` its
    rows of the global gradient and ``temperature``/``bias`` (when they are tensors that need
    gradients) the global ∂L/∂t and ∂L/∂b, identical on every rank.
    mode: "ring" (neighbour exchange, two remote blocks at most) or "gather" (all-gather).
    check_shapes: verify with one small all-gather that every rank's z has the same shape.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_inputs(z_local, temperature, bias, n_views)
    if check_shapes:
        _check_same_shape(z_local, group)
    which = resolve_impl(impl, z_local)
    zhat = normalize_rows(z_local) if normalize else z_local
    backend = partial(_distributed_backend, n_views=n_views, mode=mode, group=group, impl=which)
    t = as_scalar_tensor(temperature, z_local)
    b = as_scalar_tensor(bias, z_local)
    return PrecomputedGrad.apply(backend, zhat, t, b)


class _GatherRows(torch.autograd.Function):
    """All-gather of view-major rows into the global batch order. Backward keeps this rank's rows
    of the incoming gradient: correct when every rank computes the same function of the result
    (each then holds the full global gradient, of which its own rows are its share)."""

    @staticmethod
    def forward(ctx, z, n_views, group):
        rank, world = _world(group)
        blocks = [torch.empty_like(z) for _ in range(world)]
        dist.all_gather(blocks, z.contiguous(), group=group)
        ctx.shape = (n_views, world, z.shape[0] // n_views)
        ctx.rank = rank
        stacked = torch.stack(blocks)  # (K, V·n, D)
        v, k, n = ctx.shape
        return stacked.view(k, v, n, -1).transpose(0, 1).reshape(v * k * n, -1)

    @staticmethod
    def backward(ctx, grad):
        v, k, n = ctx.shape
        return grad.reshape(v, k, n, -1)[:, ctx.rank].reshape(v * n, -1), None, None


def gather_rows(z_local: torch.Tensor, n_views: int, group=None) -> torch.Tensor:
    """(V·n, D) per rank → (V·K·n, D) global batch, view-major; see _GatherRows for the gradient."""
    return _GatherRows.apply(z_local, n_views, group)


def gather_labels(labels: torch.Tensor, group=None) -> torch.Tensor:
    """(n,) per rank → (K·n,) in rank order."""
    _, world = _world(group)
    out = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(out, labels.contiguous(), group=group)
    return torch.cat(out)


class DistributedCriterion(nn.Module):
    """Wraps a loss module so that every rank computes the loss of the global batch.

    SigmoidPairwiseLoss goes through ``sigmoid_pairwise_loss_distributed`` (``mode``); the other
    losses see the gathered rows (and labels). Parameters stay those of the wrapped module."""

    def __init__(self, criterion: nn.Module, mode: str = "ring", group=None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.criterion = criterion
        self.mode = mode
        self.group = group

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.criterion
        if isinstance(c, SigmoidPairwiseLoss):
            return sigmoid_pairwise_loss_distributed(
                z,
                c.temperature,
                c.bias,
                n_views=c.n_views,
                mode=self.mode,
                group=self.group,
                normalize=c.normalize,
                impl=c.impl,
                check_shapes=False,  # the loaders give every rank the same batch size
            )
        z_all = gather_rows(z, c.n_views, self.group)
        if labels is None:
            return c(z_all)
        return c(z_all, gather_labels(labels, self.group))


# Options of every DDP wrapper. find_unused_parameters=True keeps the gradient buckets DDP builds
# at the start (parameter order) instead of rebuilding them after the first step in the order the
# gradients arrived. A resumed run starts a new DDP, whose first step would otherwise all-reduce in
# another layout (float32 sums in another order) than the uninterrupted run's: measured, the losses
# 1.7e-7 relative apart one step later, 0.8% seven steps later (2 nodes x 2 ranks, width 8, LARS);
# with it the resumed run is bitwise the uninterrupted one (tests/test_elastic.py). Cost: one walk
# of the autograd graph per step, and DDP's one-time warning per rank that it found no unused
# parameters.
DDP_OPTIONS = {"find_unused_parameters": True}


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
            f"`torchrun --nproc_per_node K -m fastsigclr train ...`"
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
