"""Unpickling of dataset files that may only hold plain data: CIFAR's python batches are pickles
(dicts of bytes, lists of ints and numpy arrays), and ``pickle.load`` on a crafted one would call
any function it names. Only the globals a numpy array's pickle names are found; anything else is
refused before it is called.

What those globals are given is checked before numpy sees it, for numpy trusts a pickle's state:
an array may not declare more bytes than the file holds (``numpy.ndarray((2**47,))`` asked for
128 TiB), a dtype is a plain one (no fields, no sub-array) whose pickled state only sets its byte
order (a damaged state crashed the interpreter), and an array's state holds exactly the data its
shape needs (an object array given a short list crashed it too)."""

from __future__ import annotations

import io
import math
import operator
import os
import pickle
from typing import IO, Any

import numpy as np

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


def _refuse(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(f"{what}: not a plain numpy array")


class _DType:
    """``numpy.dtype(*args)`` as a file names it; its pickled state is checked, and ``dtype`` is the
    dtype, a plain one: no fields, no sub-array."""

    def __init__(self, *args: Any) -> None:
        self.dtype = np.dtype(*args)
        if self.dtype.fields is not None or self.dtype.subdtype is not None:
            raise _refuse(f"a structured dtype {self.dtype}")

    def __setstate__(self, state: Any) -> None:  # (3, byte order, None, None, None, size, align, flags)
        d = self.dtype
        if isinstance(state, tuple) and len(state) > 1 and isinstance(state[1], bytes):
            # Python 2's str, as the official CIFAR batches (cPickle) hold it, read as bytes
            state = (state[0], state[1].decode("latin-1"), *state[2:])
        swappable = d.byteorder != "|" and d.kind in "biufcU"
        if not (
            isinstance(state, tuple)
            and len(state) == 8
            and state[:1] + state[2:5] == (3, None, None, None)
            and state[5:7] in ((-1, -1), (d.itemsize, d.alignment))
            and state[7] == d.flags
            and (state[1] == d.byteorder == "|" or (swappable and state[1] in ("<", ">", "=")))
        ):
            raise _refuse(f"a damaged dtype state {state!r:.80}")
        self.dtype = d.newbyteorder(state[1]) if swappable else d


def _real(dtype: Any) -> Any:
    return dtype.dtype if isinstance(dtype, _DType) else dtype


def _check_size(shape: Any, dtype: Any, limit: int) -> int:
    """The element count of ``shape``, or an UnpicklingError when it is not a shape of
    non-negative integers or an array of it would take more than ``limit`` bytes (what the file
    could hold)."""
    try:
        dims = (
            list(map(operator.index, shape)) if isinstance(shape, tuple | list) else [operator.index(shape)]
        )
        count = math.prod(dims)
        real = np.dtype(_real(dtype))
        # An object array's elements are in the file, one opcode (a byte) at least each.
        size = count * (1 if real.hasobject else real.itemsize)
    except (TypeError, ValueError) as err:
        raise _refuse(f"an array of shape {shape!r:.80} and dtype {dtype!r:.80}") from err
    if min(dims, default=0) < 0:
        raise _refuse(f"an array of shape {tuple(dims)}")
    if size > limit:
        raise pickle.UnpicklingError(
            f"an array declares shape {tuple(dims)} of {size} bytes, more than the file's {limit} bytes"
        )
    return count


class _Array(np.ndarray):
    """``numpy.ndarray`` as a file names it: its size is checked before numpy allocates it, its
    state before numpy reads it, and ``load`` hands back plain ndarrays. Each load makes a subclass
    whose ``limit`` is its file's size."""

    limit = 0

    def __new__(cls, shape: Any, dtype: Any = float) -> _Array:
        _check_size(shape, dtype, cls.limit)
        return np.ndarray.__new__(cls, shape, _real(dtype))

    def __setstate__(self, state: Any) -> None:  # (version, shape, dtype, is_fortran, data)
        if not isinstance(state, tuple) or len(state) not in (4, 5) or (len(state) == 5 and state[0] != 1):
            raise _refuse(f"a damaged array state {state!r:.80}")
        shape, dtype, fortran, data = state[-4:]
        count, dtype = _check_size(shape, dtype, type(self).limit), np.dtype(_real(dtype))
        if dtype.hasobject:
            ok = isinstance(data, list) and len(data) == count
        else:
            ok = isinstance(data, bytes) and len(data) == count * dtype.itemsize
        if not ok or not isinstance(fortran, bool):
            raise _refuse(f"an array state whose data does not fill shape {shape!r:.80} of {dtype}")
        super().__setstate__((1, shape, dtype, fortran, data))


class _PlainUnpickler(pickle.Unpickler):
    def __init__(self, f: IO[bytes], limit: int) -> None:
        super().__init__(f, encoding="bytes")
        self.array = type("ndarray", (_Array,), {"limit": limit})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: a dataset file holds only arrays, lists, bytes "
                f"and numbers, and unpickling it must call nothing else"
            )
        found = super().find_class(module, name)
        if name in ("ndarray", "dtype"):
            return self.array if name == "ndarray" else _DType
        if name in ("_reconstruct", "scalar"):  # (subtype, shape, dtype) / (dtype, data)
            array = self.array

            def checked(*args: Any) -> Any:
                if name == "_reconstruct":
                    _check_size(
                        args[1] if len(args) == 3 else (), args[2] if len(args) == 3 else "", array.limit
                    )
                return found(*map(_real, args))

            return checked
        return found


def _plain(value: Any) -> Any:
    """``value`` with each ``_Array`` in it (in dicts, lists and tuples) a plain ndarray, and each
    ``_DType`` its dtype."""
    if isinstance(value, _Array | _DType):
        return value.view(np.ndarray) if isinstance(value, _Array) else value.dtype
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _size(f: IO[bytes]) -> int:
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):  # an in-memory file
        here = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(here)
        return end


def load(f: IO[bytes]) -> Any:
    """``pickle.load(f, encoding="bytes")`` restricted to plain data and numpy arrays no larger
    than the file."""
    return _plain(_PlainUnpickler(f, _size(f)).load())
