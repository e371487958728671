"""Unpickling of dataset files that may only hold plain data: CIFAR's python batches are pickles
(dicts of bytes, lists of ints and numpy arrays), and ``pickle.load`` on a crafted one would call
any function it names. Only the globals a numpy array's pickle names are found; anything else is
refused before it is called."""

from __future__ import annotations

import pickle
from typing import IO, Any

# What the CIFAR-10/100 python batches name (numpy 1 and 2 spell the core module differently).
ALLOWED = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes in a protocol-2 pickle written by Python 3: str → bytes only
    }
)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a dataset file holds only arrays, lists, bytes "
                f"and numbers, and unpickling it must call nothing else"
            )
        return super().find_class(module, name)


def load(f: IO[bytes]) -> Any:
    """``pickle.load(f, encoding="bytes")`` restricted to plain data and numpy arrays."""
    return _PlainUnpickler(f, encoding="bytes").load()
