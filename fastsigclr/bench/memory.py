"""Peak memory of a piece of torch code, measured rather than estimated.

CUDA: the caching allocator's peak statistics. CPU has no such statistics, so ``TensorAllocations``
watches every op through a dispatch mode, counts each storage an op creates, and uncounts it
when the storage dies (torch keeps one Python object per live storage, so a weakref finalizer
fires exactly when the memory is released, views and tensors saved for backward included).
"""

from __future__ import annotations

import resource
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorAllocations(TorchDispatchMode):
    """Within the ``with`` block: ``peak_bytes`` of live storages created inside it, and
    ``largest_numel``, the most elements any single new storage held (``largest_op`` made it)."""

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.largest_numel = 0
        self.largest_op = ""
        self._tracked: dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live_bytes -= self._tracked.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self._tracked or _is_input_storage(key, args, kwargs):
                continue
            nbytes = storage.nbytes()
            self._tracked[key] = nbytes
            weakref.finalize(storage, self._release, key)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            numel = nbytes // max(t.element_size(), 1)
            if numel > self.largest_numel:
                self.largest_numel, self.largest_op = numel, str(func)
        return out


def _is_input_storage(key: int, args, kwargs) -> bool:
    """In-place and out= ops return storages that existed before the op."""
    return any(
        isinstance(a, torch.Tensor) and a.device.type != "meta" and a.untyped_storage()._cdata == key
        for a in tree_leaves((args, kwargs or {}))
    )


def peak_extra_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Bytes allocated by ``fn`` above what was live before it, at its peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with TensorAllocations() as mode:
        fn()
    return mode.peak_bytes


def reset_peak_rss() -> bool:
    """Start this process's resident-memory high-water mark (Linux's VmHWM) anew, so that each
    case's peak is its own (ru_maxrss only grows: every case after the largest reported that
    one's peak); False where the kernel offers no reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (proc(5))
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """This process's peak resident memory since ``reset_peak_rss`` (VmHWM), else since it began."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
