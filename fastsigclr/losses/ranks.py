"""Rows across ranks for the losses of a ``torchrun`` run: the ring and all-gather block streams
that the blockwise sigmoid loss walks, and the gathered global batch for the other losses.

Rank r holds its local rows ``z_r`` (V·n, D), view-major. The global batch is each view's rows
concatenated across ranks in rank order (rows v·K·n + r·n + i), and every loss computed through
here returns exactly what the single-process loss returns on that batch: value and gradients.
Because each rank's loss is the global loss and its gradients are the true global gradients of
its own rows, a DDP model must *sum* its parameter gradients across ranks
(``fastsigclr.distributed.sum_gradients_hook``).
"""

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from .spec import LossSpec

MODES = ("ring", "gather")


def world(group) -> tuple[int, int]:
    """(rank, world size) in ``group``; a clear error without a process group."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group first "
            "(torchrun sets the environment it needs), or use sigmoid_pairwise_loss in one process"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _global_rank(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def check_same_shape(z: torch.Tensor, group) -> None:
    """All ranks must hold the same number of rows and features; one tiny all-gather says so."""
    _, size = world(group)
    shape = torch.tensor(list(z.shape), dtype=torch.int64, device=z.device)
    shapes = [torch.empty_like(shape) for _ in range(size)]
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
    rank, size = world(group)
    send_to = _global_rank(group, (rank + 1) % size)
    recv_from = _global_rank(group, (rank - 1) % size)
    current = zhat.contiguous()
    for step in range(size):
        pending = []
        if step < size - 1:
            incoming = torch.empty_like(current)
            pending = dist.batch_isend_irecv(
                [
                    dist.P2POp(dist.isend, current, send_to, group),
                    dist.P2POp(dist.irecv, incoming, recv_from, group),
                ]
            )
        yield (rank - step) % size, current
        for request in pending:
            request.wait()
        if pending:
            current = incoming


def ring_exchange(tensors: list[torch.Tensor], group=None) -> list[torch.Tensor]:
    """Send ``tensors`` to rank r+1 and receive the same shapes from rank r−1 (blocking)."""
    rank, size = world(group)
    send_to = _global_rank(group, (rank + 1) % size)
    recv_from = _global_rank(group, (rank - 1) % size)
    received = [torch.empty_like(t) for t in tensors]
    ops = [dist.P2POp(dist.isend, t, send_to, group) for t in tensors]
    ops += [dist.P2POp(dist.irecv, t, recv_from, group) for t in received]
    for request in dist.batch_isend_irecv(ops) if ops else []:
        request.wait()
    return received


def gather_blocks(zhat: torch.Tensor, group=None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (owner rank, rows) for every rank, from one all-gather (all K blocks held)."""
    rank, size = world(group)
    blocks = [torch.empty_like(zhat) for _ in range(size)]
    dist.all_gather(blocks, zhat.contiguous(), group=group)
    yield rank, zhat
    for owner in range(size):
        if owner != rank:
            yield owner, blocks[owner]


class _GatherRows(torch.autograd.Function):
    """All-gather of view-major rows into the global batch order. Backward keeps this rank's rows
    of the incoming gradient: correct when every rank computes the same function of the result
    (each then holds the full global gradient, of which its own rows are its share)."""

    @staticmethod
    def forward(ctx, z, n_views, group):
        rank, size = world(group)
        blocks = [torch.empty_like(z) for _ in range(size)]
        dist.all_gather(blocks, z.contiguous(), group=group)
        ctx.shape = (n_views, size, z.shape[0] // n_views)
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
    _, size = world(group)
    out = [torch.empty_like(labels) for _ in range(size)]
    dist.all_gather(out, labels.contiguous(), group=group)
    return torch.cat(out)


class DistributedCriterion(nn.Module):
    """Wraps a loss module (built from ``spec``) so that every rank computes the loss of the
    global batch: through the spec's blockwise ``distributed`` form where it has one (``mode``),
    else on the gathered rows (and labels). Parameters stay those of the wrapped module."""

    def __init__(self, criterion: nn.Module, spec: LossSpec, mode: str = "ring", group=None) -> None:
        super().__init__()
        check_mode(mode)
        self.criterion = criterion
        self.spec = spec
        self.mode = mode
        self.group = group

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, *, compute_loss: bool = True
    ) -> torch.Tensor:
        c = self.criterion
        if self.spec.distributed is not None:
            return self.spec.distributed(
                c, z, labels, mode=self.mode, group=self.group, compute_loss=compute_loss
            )
        z_all = gather_rows(z, c.n_views, self.group)
        all_labels = None if labels is None else gather_labels(labels, self.group)
        return c(z_all, all_labels, compute_loss=compute_loss)
