"""One profiled call of a benchmark case: where its time goes, kernel by kernel.

``bench loss --profile`` adds this to each measured case, so that a GPU run can tell a loss whose
time is its kernel from one whose time is the launches and small ops around it (on an H200,
SigLIP's loss at B = 8,192 took 3.1 ms where its kernel is modelled at under 0.4 ms)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def profile_step(step: Callable[[], None], device: torch.device, top: int = 8) -> dict[str, Any]:
    """Profile one call of ``step`` (warmed up by the caller): the number of device kernels it
    launched (CUDA) or operators it ran (CPU), the total of their self time in µs, and the ``top``
    names by self time, each with its calls and self µs."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    if cuda:  # the kernels themselves, not the CPU-side operators that launched them
        times = [
            (e.key, e.count, e.self_device_time_total)
            for e in prof.key_averages()
            if e.self_device_time_total > 0
            and e.device_type == torch.autograd.DeviceType.CUDA
            and not e.is_user_annotation  # ranges (torch.compile's, record_function), not kernels
        ]
    else:
        events = prof.key_averages()
        times = [(e.key, e.count, e.self_cpu_time_total) for e in events if e.self_cpu_time_total > 0]
    times.sort(key=lambda t: -t[2])
    return {
        "what": "CUDA kernels" if cuda else "CPU operators",
        "launches": sum(count for _, count, _ in times),
        "self_us": round(sum(us for *_, us in times), 1),
        "top": [
            {"name": name[:120], "calls": count, "self_us": round(us, 1)} for name, count, us in times[:top]
        ],
    }
