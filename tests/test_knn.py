"""The kNN monitor's vote against a float64 reference of its definition."""

import pytest
import torch
import torch.nn.functional as F

from fastsigclr.eval import knn_accuracy


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
