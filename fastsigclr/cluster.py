"""Joining a multi-process (possibly multi-node) run, and agreeing on what it runs.

``join`` enters the process group that torchrun describes, within a bounded time, and turns a
failure into one line that names MASTER_ADDR/MASTER_PORT and what to check. ``check_same_run``
then all-gathers every rank's resolved settings and code fingerprint, and refuses (on every rank,
with the same message) to start a run whose ranks disagree, naming the options and the ranks.
Gathering the settings themselves rather than a hash of them costs a few kilobytes once and lets
the message name each differing option.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from fastsigclr import __version__
from fastsigclr.config import FastSigCLRError, flag
from fastsigclr.runinfo import git_commit

# What must match across ranks for them to compute the same thing (the commit only helps a reader
# find the checkout: a docs-only commit changes it without changing the code).
COMPARED_CODE = ("fastsigclr", "source_sha256", "torch")


# Whether this process joined a process group (entry.console ends such a process without the
# interpreter's finalization: see entry._leave_distributed).
joined = False


def join(
    backend: str, rank: int, world_size: int, timeout_s: float, device_id: torch.device | None = None
) -> None:
    """``init_process_group`` from torchrun's environment; waiting longer than ``timeout_s`` for
    the other ranks (or for MASTER_ADDR) raises FastSigCLRError with what to check."""
    global joined
    try:
        dist.init_process_group(backend, device_id=device_id, timeout=timedelta(seconds=timeout_s))
    except RuntimeError as err:  # DistStoreError, DistNetworkError and gloo's connect errors
        raise FastSigCLRError(join_failure(rank, world_size, timeout_s, err)) from err
    joined = True


def join_failure(rank: int, world_size: int, timeout_s: float, err: BaseException) -> str:
    addr = os.environ.get("MASTER_ADDR", "?")
    port = os.environ.get("MASTER_PORT", "?")
    cause = (str(err).strip().splitlines() or [type(err).__name__])[0][:300].rstrip(".")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if local < world_size and _is_loopback(addr):
        check = (
            f"{addr} is a loopback address, but the run spans several nodes: start torchrun with "
            f"--local_addr set to each node's own address (as the other nodes reach it)"
        )
    else:
        check = (
            f"Check that every node was started with the same torchrun command, that {addr} is "
            f"reachable from this host (torchrun --local_addr: each node's own address, as the other "
            f"nodes reach it), that no firewall blocks port {port}, and that GLOO_SOCKET_IFNAME (CPU) / "
            f"NCCL_SOCKET_IFNAME (GPU) name the interface that reaches the other nodes"
        )
    return (
        f"rank {rank} of {world_size} could not join the run at MASTER_ADDR={addr} MASTER_PORT={port} "
        f"within --dist-timeout {timeout_s:g} s ({cause}). {check}"
    )


def max_restarts() -> int:
    """torchrun's ``--max-restarts`` for this job (it tells its workers); 0 outside torchrun."""
    try:
        return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        return 0


def check_restartable() -> None:
    """Refuse a restarting torchrun job whose workers share the agent's rendezvous store (torch's
    default since 2.5). The store outlives the workers, so a restarted worker can read the
    addresses the previous attempt's ranks published and fail to connect to them: measured with
    torch 2.13, both restarts of a 2-node job whose rank 3 was killed failed that way
    (pytorch/pytorch#135712). With the store not shared, rank 0 starts a new one per attempt."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if shared and max_restarts() > 0:  # torchrun's environment: the same on every process of a node
        raise FastSigCLRError(
            f"torchrun --max-restarts {max_restarts()} with the rendezvous store shared with the "
            "workers: a restart would reuse the previous attempt's addresses and fail to connect "
            "(pytorch/pytorch#135712); set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in the environment "
            "of torchrun on every node",
            alike=True,
        )


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(addr)).is_loopback
    except (OSError, ValueError):
        return False


def _source_digest() -> str:
    """sha256 of fastsigclr's Python files and its kernels' (kernels/ in a checkout, installed as
    fastsigclr/kernels/): each named within its own package, so a checkout and an installed copy
    of the same code agree."""
    roots = {}
    for name in ("fastsigclr", "fastsigclr.kernels"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None:
            roots[name] = Path(spec.origin).parent
    digest = hashlib.sha256()
    for name, root in roots.items():
        others = [r for n, r in roots.items() if n != name and r.is_relative_to(root)]
        for path in sorted(root.rglob("*.py")):
            if not any(path.is_relative_to(r) for r in others):
                key = f"{name}/{path.relative_to(root).as_posix()}"
                digest.update(key.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_fingerprint() -> dict[str, Any]:
    """What this rank runs: fastsigclr's version and source digest, torch's version, and the git
    commit when there is one."""
    return {
        "fastsigclr": __version__,
        "source_sha256": _source_digest(),
        "torch": torch.__version__,
        "commit": git_commit(),
    }


def _ranks(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> 'ranks 0-2,5'."""
    spans: list[list[int]] = []
    for r in sorted(ranks):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    return f"rank{'s' if len(ranks) > 1 else ''} {text}"


def by_value(shown: list[str]) -> str:
    """Each distinct value once, with the ranks that hold it: "'a' on ranks 0-2, 'b' on rank 3"."""
    groups: dict[str, list[int]] = {}
    for rank, value in enumerate(shown):
        groups.setdefault(value, []).append(rank)
    return ", ".join(f"{value} on {_ranks(ranks)}" for value, ranks in groups.items())


def differences(per_rank: list[dict[str, Any]]) -> list[str]:
    """One phrase per option or code property on which the ranks disagree."""
    found = []
    settings = [r["settings"] for r in per_rank]
    for key in sorted(set().union(*settings)):
        values = [s.get(key) for s in settings]
        if any(v != values[0] for v in values):
            found.append(f"{flag(key)} is {by_value([repr(v) for v in values])}")
    codes = [r["code"] for r in per_rank]
    for key in COMPARED_CODE:
        values = [c.get(key) for c in codes]
        if any(v != values[0] for v in values):
            where = [
                f" (commit {c.get('commit') or 'unknown'})" if key == "source_sha256" else "" for c in codes
            ]
            found.append(f"{key} is {by_value([f'{v}{w}' for v, w in zip(values, where, strict=True)])}")
    return found


def check_same_run(settings: dict[str, Any], code: dict[str, Any] | None = None, group=None) -> None:
    """All-gather (settings, code fingerprint); if any rank differs, raise on every rank."""
    mine = {"settings": settings, "code": code if code is not None else code_fingerprint()}
    per_rank: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(per_rank, mine, group=group)
    found = differences(per_rank)
    if found:
        raise FastSigCLRError(
            f"the {len(per_rank)} ranks were not started alike, so none starts: {'; '.join(found)}. "
            f"Run the same `fastsigclr train` options, fastsigclr code and torch version on every node",
            alike=True,  # every rank compares the same gathered settings
        )
