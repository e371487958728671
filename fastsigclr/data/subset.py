"""The images ``--limit-train`` / ``--limit-test`` keep: a class-balanced subset, the same for
every loader backend, the trainer's kNN monitor and ``fastsigclr eval``."""

from __future__ import annotations

import numpy as np


def balanced_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of ``n`` of the items, taken from the classes in turn (class 0's first
    item, class 1's first, ..., then each class's second, in file order): class counts differ
    by at most one unless a class runs out. Deterministic, and nested (the subset of n lies
    inside the subset of n + 1); n ≥ len(labels) keeps everything."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    by_class = np.argsort(labels, kind="stable")  # grouped by class, file order within each
    grouped = labels[by_class]
    rank = np.arange(len(labels)) - np.searchsorted(grouped, grouped, side="left")
    turn = np.lexsort((grouped, rank))  # by rank within the class, then by class
    return np.sort(by_class[turn[:n]])
