"""The kNN monitor's vote against a float64 reference of its definition."""

import pytest
import torch
import torch.nn.functional as F

from fastsigclr.knn import knn_accuracy


def reference_knn(bank, bank_labels, queries, labels, num_classes, k, temperature) -> float:
    """Each of the k most cosine-similar bank rows votes exp(similarity / T) for its class (float64:
    no overflow for 1/T below about 709)."""
    sim = F.normalize(queries.double(), dim=1) @ F.normalize(bank.double(), dim=1).T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    votes.scatter_add_(1, bank_labels[idx], (top / temperature).exp())
    return (votes.argmax(1) == labels).double().mean().item()


@pytest.mark.parametrize("temperature", [0.5, 0.07, 0.01, 0.005, 0.002])
def test_knn_vote_equals_float64_at_small_temperatures(temperature):
    """Below T ≈ 1/88 exp(s/T) overflows float32: the vote used to be inf/NaN everywhere and
    argmax gave class 0 (accuracy 0.1 here, against 0.3–0.4 from the reference)."""
    g = torch.Generator().manual_seed(0)
    classes, dim = 10, 16
    centres = torch.randn(classes, dim, generator=g)
    bank_labels = torch.randint(0, classes, (500,), generator=g)
    labels = torch.randint(0, classes, (203,), generator=g)  # 203: a chunk of 64 and a short one
    bank = centres[bank_labels] + 1.5 * torch.randn(500, dim, generator=g)
    queries = centres[labels] + 1.5 * torch.randn(203, dim, generator=g)
    want = reference_knn(bank, bank_labels, queries, labels, classes, 20, temperature)
    got = knn_accuracy(bank, bank_labels, queries, labels, classes, k=20, temperature=temperature, chunk=64)
    assert want > 0.2  # far from chance (0.1), so a vote collapsed to one class cannot match it
    assert got == pytest.approx(want, abs=1 / 203 + 1e-9), (got, want)


def _vote_worker(rank: int, world: int, init_file: str, out_dir: str, shares: list[int]) -> None:
    import torch.distributed as dist

    from fastsigclr.distributed import Context
    from fastsigclr.knn import gather_uneven

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        bank, bank_labels, queries, labels = _clusters()
        lo, hi = sum(shares[:rank]), sum(shares[: rank + 1])
        q_lo, q_hi = len(queries) * rank // world, len(queries) * (rank + 1) // world
        ctx = Context(rank=rank, world_size=world)
        mine = bank[lo:hi], bank_labels[lo:hi], queries[q_lo:q_hi], labels[q_lo:q_hi]
        got = {
            (k, temperature): knn_accuracy(*mine, 10, k=k, temperature=temperature, chunk=64, ctx=ctx)
            for k in (1, 20)
            for temperature in (0.07, 0.002)
        }
        gathered = gather_uneven(ctx, bank_labels[lo:hi])
        torch.save({"accuracy": got, "gathered": gathered}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _clusters():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(10, 16, generator=g)
    bank_labels = torch.randint(0, 10, (500,), generator=g)
    labels = torch.randint(0, 10, (203,), generator=g)
    bank = centres[bank_labels] + 1.5 * torch.randn(500, 16, generator=g)
    queries = centres[labels] + 1.5 * torch.randn(203, 16, generator=g)
    return bank, bank_labels, queries, labels


@pytest.mark.parametrize("shares", [[250, 250], [3, 250, 247]], ids=["2 ranks", "3 ranks, one of 3 rows"])
def test_the_vote_over_ranks_equals_the_whole_bank(tmp_path, shares):
    """Each rank holds a share of the bank and of the queries (uneven; one share smaller than k):
    every rank gets the accuracy of the whole bank against all the queries."""
    import torch.multiprocessing as mp

    world = len(shares)
    mp.spawn(_vote_worker, args=(world, str(tmp_path / "init"), str(tmp_path), shares), nprocs=world)
    bank, bank_labels, queries, labels = _clusters()
    for rank in range(world):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(result["gathered"], bank_labels)
        for (k, temperature), got in result["accuracy"].items():
            want = knn_accuracy(bank, bank_labels, queries, labels, 10, k=k, temperature=temperature)
            assert want > 0.2 and got == want, (rank, k, temperature, got, want)
