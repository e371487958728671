"""How the launchers pick a kernel's configuration, and a record of the launches they would compile.

Autotuning (the default, ``FASTSIGCLR_TUNE=on``) compiles every candidate configuration of each new
specialisation; ``FASTSIGCLR_TUNE=off`` (the tests, tests/conftest.py) launches the plan's first
configuration only, so a test run on a GPU compiles each kernel variant once.

``FASTSIGCLR_RECORD_LAUNCHES=FILE`` appends one JSON line per launch to FILE: the kernel, its
arguments as the JIT specialises them, and the constexprs, warps and stages the COMPILED launch
would have on an H100 (tools/launch_inventory.py runs the GPU suite's first stage under it in the
interpreter; tools/compile_kernels.py --inventory compiles what it recorded). With
``FASTSIGCLR_RECORD_ONLY=1`` as well, launches are recorded and not run (meta tensors, or sizes
the interpreter cannot afford).
"""

from __future__ import annotations

import json
import os

import torch

TUNE_ENV = "FASTSIGCLR_TUNE"
RECORD_ENV = "FASTSIGCLR_RECORD_LAUNCHES"
RECORD_ONLY_ENV = "FASTSIGCLR_RECORD_ONLY"
# Triton's defaults for a launch that names no warps or stages (CUDA backend, triton 3.6).
DEFAULT_CONFIG = (4, 3)
INT32 = 2**31


def autotune() -> bool:
    """Whether launchers autotune (FASTSIGCLR_TUNE=on, the default) or take the plan's first
    configuration (off). Read at every launch, so a test may set it."""
    value = os.environ.get(TUNE_ENV, "on")
    if value not in ("on", "off"):
        raise ValueError(f"{TUNE_ENV} must be 'on' or 'off', got {value!r}")
    return value == "on"


def recording() -> bool:
    return bool(os.environ.get(RECORD_ENV))


def record_only() -> bool:
    """Launches are recorded and not run (their outputs are not computed)."""
    return recording() and os.environ.get(RECORD_ONLY_ENV) == "1"


def specialised(arg: object) -> object:
    """An argument as the JIT tells its specialisations apart (triton 3.6): a tensor by dtype and
    whether its address is a multiple of 16 bytes; an integer by whether it is 1, a multiple of
    16, or neither, and whether it needs 64 bits; a float is an fp32 scalar whatever its value."""
    if isinstance(arg, torch.Tensor):
        return {"tensor": str(arg.dtype).removeprefix("torch."), "aligned": arg.data_ptr() % 16 == 0}
    if isinstance(arg, bool) or arg is None:
        return arg
    if isinstance(arg, int):
        value = 1 if arg == 1 else 16 if arg % 16 == 0 else 17
        return value if -INT32 <= arg < INT32 else value + 2**32
    if isinstance(arg, float):
        return 0.5
    raise TypeError(f"cannot record a launch argument of type {type(arg).__name__}")


def record(kernel: str, args: tuple, constexprs: dict, configs: list[tuple[int, int]]) -> None:
    """Append the compiled launch of ``kernel`` (a name tools/compile_kernels.py knows) to the
    record: its arguments, constexprs and the (warps, stages) configurations it compiles."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    entry = {"kernel": kernel, "args": [specialised(a) for a in args], "constexprs": constexprs}
    entry["configs"] = [list(c) for c in configs]
    with open(path, "a") as f:  # one write per line: concurrent writers append whole lines
        f.write(json.dumps(entry, sort_keys=True) + "\n")
