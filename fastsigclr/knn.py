"""The weighted kNN vote: each of the k most cosine-similar training features votes for its class
with weight exp(similarity / temperature). ``knn_accuracy`` holds the whole bank in one process,
or lets torchrun's ranks each hold a share of it and gives every rank the same accuracy, the one
the whole bank gives (up to float rounding and ties between equal similarities)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fastsigclr.distributed import Context

# A query chunk holds at most this many similarities (1 GiB of fp32) and 1,024 queries.
CHUNK_SIMILARITIES = 1 << 28
CHUNK_QUERIES = 1024


def _chunk(bank_rows: int, chunk: int | None) -> int:
    return chunk or max(1, min(CHUNK_QUERIES, CHUNK_SIMILARITIES // max(1, bank_rows)))


def nearest(
    bank: torch.Tensor, inv_norm: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities, labels), (Q, k) each, of the k bank rows nearest each normalised query,
    the most similar first. The bank is not copied: the dot products are divided by its norms
    (``inv_norm``), where a normalised copy of ImageNet's 1.28 M ResNet-50 features is 10.5 GB."""
    sim, idx = ((queries @ bank.T) * inv_norm).topk(k, dim=1)
    return sim, labels[idx]


def vote(sim: torch.Tensor, labels: torch.Tensor, num_classes: int, temperature: float) -> torch.Tensor:
    """The class each query's neighbours (``nearest``'s, most similar first) vote for. The weights are
    taken relative to the nearest neighbour's similarity: the same vote, without float32
    overflowing for temperatures under 1/88 (every weight is in (0, 1])."""
    votes = torch.zeros(len(sim), num_classes, device=sim.device)
    votes.scatter_add_(1, labels, ((sim - sim[:, :1]) / temperature).exp())
    return votes.argmax(1)


def _bank(train_feats: torch.Tensor) -> torch.Tensor:
    return 1.0 / train_feats.norm(dim=1).clamp_min(1e-12)  # F.normalize's epsilon


@torch.no_grad()
def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    *,
    k: int,
    temperature: float,
    chunk: int | None = None,
    ctx: Context | None = None,
) -> float:
    """Top-1 accuracy of the weighted kNN vote of ``test_feats`` against the bank ``train_feats``.
    Queries go ``chunk`` at a time (default: up to 1,024, and at most 2²⁸ similarities, 1 GiB).
    With ``ctx`` of several ranks each rank passes its share of both (``_vote_over_ranks``)."""
    if ctx is not None and ctx.distributed:
        bank, queries = (train_feats, train_labels), (test_feats, test_labels)
        return _vote_over_ranks(ctx, bank, queries, num_classes, k, temperature, chunk)
    bank, inv_norm = train_feats, _bank(train_feats)
    labels = train_labels.to(bank.device)
    k = min(k, len(bank))
    chunk = _chunk(len(bank), chunk)
    correct = 0
    for start in range(0, len(test_feats), chunk):
        q = F.normalize(test_feats[start : start + chunk].to(bank.device), dim=1)
        predicted = vote(*nearest(bank, inv_norm, labels, q, k), num_classes, temperature)
        correct += (predicted == test_labels[start : start + chunk].to(bank.device)).sum().item()
    return correct / max(1, len(test_feats))


def _vote_over_ranks(
    ctx: Context, bank: tuple[torch.Tensor, torch.Tensor], queries: tuple[torch.Tensor, torch.Tensor],
    num_classes: int, k: int, temperature: float, chunk: int | None,
) -> float:  # fmt: skip
    """``knn_accuracy`` of every rank's queries against every rank's share of the bank, on every
    rank alike. The queries (the test split's features) are gathered to every rank; each rank
    finds the k nearest in its share for each chunk of them, and the ranks' candidates (k per rank)
    are gathered and merged: the k nearest of the whole bank. A bank share is then 1/K of the
    whole (1.3 GB per rank for ImageNet's training features on 8 ranks, not 10.5 on one)."""
    device = ctx.device
    feats, labels = bank[0].to(device), bank[1].to(device)
    inv_norm, mine = _bank(feats), min(k, len(feats))
    queries, query_labels = (gather_uneven(ctx, t.to(device)) for t in queries)
    sizes = gather_uneven(ctx, torch.tensor([len(feats)], device=device)).tolist()
    k = min(k, sum(sizes))
    chunk = _chunk(max(sizes), chunk)  # the same on every rank: every rank takes each collective
    correct = 0
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start : start + chunk], dim=1)
        # k candidates from every rank: a share with fewer rows pads with similarity -inf
        sim = torch.full((len(q), k), float("-inf"), device=device)
        lab = torch.zeros((len(q), k), dtype=labels.dtype, device=device)
        if mine:
            sim[:, :mine], lab[:, :mine] = nearest(feats, inv_norm, labels, q, mine)
        sims, labs = torch.cat(_all_gather(sim), 1), torch.cat(_all_gather(lab), 1)
        best, at = sims.topk(k, dim=1)
        predicted = vote(best, labs.gather(1, at), num_classes, temperature)
        correct += (predicted == query_labels[start : start + chunk]).sum().item()
    return correct / max(1, len(queries))


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def gather_uneven(ctx: Context, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (their counts may differ; the other dimensions may not), joined in
    rank order, on every rank."""
    if not ctx.distributed:
        return rows
    counts = [int(n) for n in _all_gather(torch.tensor([len(rows)], device=rows.device))]
    padded = rows.new_zeros((max(counts), *rows.shape[1:]))
    padded[: len(rows)] = rows
    return torch.cat([part[:n] for part, n in zip(_all_gather(padded), counts, strict=True)])
