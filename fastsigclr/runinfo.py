"""What ran, where: versions, device, git commit and date, saved beside every result and run."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from fastsigclr.config import ConfigError, option

# The packages whose versions every record holds, besides each loader backend's own (its entry in
# fastsigclr.data.loaders.LOADERS names its package and distributions).
PACKAGES = ("torch", "triton", "numpy", "numba", "tqdm")


def package_version(name: str, distributions: tuple[str, ...] = ()) -> str | None:
    """The installed version of ``name``, found under the first of ``distributions`` (default: the
    distribution ``name``) that is installed; None when none is."""
    for dist in distributions or (name,):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def git_commit() -> str | None:
    """$FASTSIGCLR_COMMIT where it is set (the GPU suite sets it to a commit given to it: a copied
    checkout's .git, if any travelled, may be older than its files), else the checkout's commit
    (with ``-dirty`` if it has uncommitted changes), else None.

    Result files under benchmarks/results/ do not count: a benchmark suite rewrites them while it
    runs, and they are what is being measured, not what measures."""
    if os.environ.get("FASTSIGCLR_COMMIT"):
        return os.environ["FASTSIGCLR_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":/",
                ":(top,exclude)benchmarks/results",
            ],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def device_description(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "type": "cuda",
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda,
        }
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
    }


def run_record(device: torch.device, command: list[str] | None = None) -> dict[str, Any]:
    """Device, versions, commit, date and command line: the header of every results file."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(command if command is not None else sys.argv),
        "commit": git_commit(),
        "device": device_description(device),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    """The versions of ``PACKAGES`` and of each loader backend's package (None: not installed)."""
    # Imported here: the loader registry sits a floor above (docs/design.md §12), and a record is
    # written once per run or benchmark.
    from fastsigclr.data.loaders import loader_versions

    return {**{name: package_version(name) for name in PACKAGES}, **loader_versions()}


def available_memory_bytes() -> int:
    """Memory the OS can give this process now: MemAvailable on Linux (free memory plus the page
    cache it can drop), else free physical pages, else 1 << 62 where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: no limit known
        return 1 << 62


def device_option(help: str = "device") -> Any:
    """The ``--device`` option of every command that computes (read by ``resolve_device``)."""
    return option("auto", help, choices=("auto", "cpu", "cuda"))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str) -> torch.device:
    """'auto' → cuda when present; 'cuda' without a GPU is an error naming the fix."""
    if name == "auto":
        return default_device()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def install_report(version: str) -> list[str]:
    """What ``fastsigclr info`` prints: versions, CUDA, the default device, and which loss kernel
    and loaders are usable here (with how to install those that are not)."""
    from fastsigclr.data.loaders import LOADERS

    lines = [f"fastsigclr {version} (commit {git_commit() or 'unknown'})"]
    found = versions()
    for name in ("torch", "triton", "numpy", "numba", *(e.package for e in LOADERS.values() if e.package)):
        lines.append(f"  {name:<7} {found[name] or 'not installed'}")
    cuda = torch.cuda.is_available()
    lines.append(f"  CUDA    {'available: ' + str(torch.version.cuda) if cuda else 'not available'}")
    dev = device_description(default_device())
    lines.append(f"  device  {dev['type']}: {dev['name']}")
    fused = "usable" if cuda and found["triton"] else "needs CUDA and triton"
    lines.append(f"  loss    impl='triton' {fused}; impl='torch' usable")
    for name, entry in LOADERS.items():
        usable = entry.package is None or found[entry.package]
        state = (
            f"usable ({entry.runs_on[0 if cuda else 1]})"
            if usable
            else f"not installed: {entry.install_hint}"
        )
        lines.append(f"  loader  {name}: {state}")
    return lines
