"""Test setup: without a GPU, Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before
fastsigclr.kernels is imported, so it is decided here, at the top of the first conftest.
"""

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import slow_tests
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests launch each kernel at its plan's configuration (kernels/launches.py): on a GPU nothing is
# autotuned, so each kernel variant is compiled once (the GPU suite's first stage fits its limit).
os.environ.setdefault("FASTSIGCLR_TUNE", "off")

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")

# Under pytest-xdist each worker gets its share of the cores (and so do the processes it starts):
# two workers each running torch's default of one thread per core on 2 cores made the kNN training
# test take 463 s instead of 126 s, its threads waiting on each other's time slices.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_share)
    torch.set_num_threads(_share)


def pytest_addoption(parser, pluginmanager):
    # pyproject.toml's addopts name --benchmark-disable; without pytest-benchmark (the GPU machine's
    # image) pytest would refuse to start over it, so the option is accepted and means nothing there.
    if not pluginmanager.has_plugin("benchmark"):
        parser.addoption("--benchmark-disable", action="store_true", help="pytest-benchmark is not installed")


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device; runs on the GPU machine")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)
        if slow_tests.is_slow(item):  # the slow tier, by measured duration (tests/slow_tests.py)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def device() -> torch.device:
    return DEVICE


ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The shared/ folder beside the checkout (CI and developers), or $FASTSIGCLR_SHARED."""
    for candidate in (os.environ.get("FASTSIGCLR_SHARED"), ROOT.parent / "shared"):
        if candidate and (Path(candidate) / "tools" / "cifar10-from-jpeg").is_file():
            return Path(candidate)
    return None


def _converted(data_dir: Path) -> bool:
    """Whether CIFAR-10 is written in ``data_dir`` (its folder is moved in whole, so one file tells)."""
    return (data_dir / "cifar-10-batches-py" / "test_batch").is_file()


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """All of CIFAR-10 (JPEG q75 copy) written in the official python layout; the data dir. Where
    $FASTSIGCLR_CIFAR10 names a folder (the GPU suite's, shared by its stages), it is converted
    there once and reused by every later process; else into the run's temporary folder, once for
    all of pytest-xdist's workers (a lock beside it)."""
    where = os.environ.get("FASTSIGCLR_CIFAR10")
    if where and _converted(Path(where)):
        return Path(where)
    shared = shared_dir()
    if shared is None:
        pytest.skip("shared/ with the CIFAR-10 JPEG pack is not beside this checkout")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # every worker's basetemp sits in the run's one folder
    target = Path(where) if where else base / "cifar10-shared"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(base / "cifar10-shared.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker converts; the others wait, then reuse it
        if not _converted(target):
            out = tmp_path_factory.mktemp("cifar10")
            subprocess.run(
                [sys.executable, str(shared / "tools" / "cifar10-from-jpeg"), str(out)],
                check=True,
                capture_output=True,
            )
            target.mkdir(parents=True, exist_ok=True)
            shutil.move(out / "cifar-10-batches-py", target / "cifar-10-batches-py")  # moved in whole
    return target
