"""``--deterministic`` outside the loss: torch's deterministic algorithms (Inductor's with them),
cuDNN without benchmarking and cuBLAS with a fixed workspace, for the time of a run (restored
after it: runs started from Python share the process). The loss's own part, its kernel's fixed
reduction order and recorded tile plans, is the loss's (``fastsigclr.losses.plans``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from fastsigclr.config import speaks_for_node

# cuBLAS is deterministic with a fixed workspace per stream; torch's deterministic mode refuses
# cuBLAS calls without one of these two values (":4096:8": 8 buffers of 4 MiB).
CUBLAS_WORKSPACES = (":4096:8", ":16:8")


def _cublas_workspace() -> str | None:
    """CUBLAS_WORKSPACE_CONFIG set before CUDA starts (cuBLAS reads it as it starts); one line
    when CUDA has started already. Returns the value it had, for the run's end to restore."""
    before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if before in CUBLAS_WORKSPACES:
        return before
    if torch.cuda.is_initialized() and speaks_for_node():  # every process of a torchrun node alike
        print(
            f"fastsigclr: --deterministic: CUDA started before CUBLAS_WORKSPACE_CONFIG could be set, so "
            f"cuBLAS may still vary; set CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACES[0]} in the "
            f"environment of the process that trains",
            file=sys.stderr,
        )
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACES[0]
    return before


@contextlib.contextmanager
def deterministic_torch(enabled: bool) -> Iterator[None]:
    """Within it (``enabled``): torch.use_deterministic_algorithms(True), which also puts Inductor
    in its deterministic mode (no timing of kernel candidates against each other: torch 2.13), and
    cuDNN deterministic and not benchmarking. Enter it before CUDA starts (see _cublas_workspace)."""
    if not enabled:
        yield
        return
    workspace = _cublas_workspace()
    cudnn = torch.backends.cudnn
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU that saved it; a resume on fewer GPUs restores those it has (torch's
        # set_rng_state_all indexes a generator per saved state and fails past the last device).
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
