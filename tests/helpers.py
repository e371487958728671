"""Comparison helpers shared by the tests."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Where Triton kernels run in the tests: CUDA when present (compiled), else the CPU interpreter.
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# Whether the kernel tests make their launches as on a GPU: on CUDA, and where the launches are
# recorded as a GPU would make them (kernels/launches.py; tools/launch_inventory.py).
AS_ON_GPU = KERNEL_DEVICE.type == "cuda" or bool(os.environ.get("FASTSIGCLR_RECORD_LAUNCHES"))


def interpreter_tiles(**tiles) -> dict:
    """Tile overrides that only keep the interpreter fast (large tiles, few programs): none on a
    GPU, where the launch takes its plan, nor in a record of the GPU's launches."""
    return {} if AS_ON_GPU else tiles


def fp32_tol(interpreter_tol: float) -> float:
    """A tolerance against float64 for fp32 rows through the loss API. Compiled, fp32 rows meet the
    tensor cores as TF32 (kernels/sigmoid.py ``_dot_flags``), which drops the 13 low mantissa bits
    (TF32_UNIT) and moves each logit t·s by up to about t·2⁻⁹: dZ errs 4.8-6.5e-4 of its scale in
    test_sigmoid_block.py::test_tf32_error_against_float64's model of the format, and on an H200
    the kernel tests' largest errors were 2.1e-3 (SigLIP's dx at B = 37, t = 10), 8.0e-4 (the
    loss at t = 100) and 3.9e-4 (a cross-rank block's loss at t = 6); 5e-3 leaves 2.4x. The
    interpreter computes the dots in fp32, where ``interpreter_tol`` holds."""
    return 5e-3 if KERNEL_DEVICE.type == "cuda" else interpreter_tol


def error_scales(z: torch.Tensor, t: float, b: float, n_views: int) -> tuple[float, float]:
    """Natural sizes of the errors in dL/dz and dL/dt, where the values themselves cancel.

    dL/dz = (I − ẑẑᵀ)·(dL/dẑ)/‖z‖ removes most of dL/dẑ at small D (all of it at D = 1, where the
    true gradient is 0): its scale is max |(dL/dẑ)/‖z‖|. dL/dt = Σ g_ij·s_ij, and each rounded
    s_ij = ⟨ẑ_i, ẑ_j⟩ errs by ε·‖ẑ_i‖‖ẑ_j‖ = ε however small s_ij is: its scale is Σ |g_ij|.
    """
    z = z.detach().double().cpu()
    norms = z.norm(dim=1, keepdim=True)
    zh, logits, positive = _float64_pairs(z, t, b, n_views)
    g = (torch.sigmoid(logits) - positive).fill_diagonal_(0) / z.shape[0]
    dzhat = 2 * float(t) * g @ zh
    return (dzhat / norms).abs().max().item(), g.abs().sum().item()


def _float64_pairs(z: torch.Tensor, t: float, b: float, n_views: int) -> tuple[torch.Tensor, ...]:
    """(unit rows ẑ, logits t·ẑẑᵀ + b, 1 where i ≡ j mod M / n_views) in float64 on the CPU."""
    zh = torch.nn.functional.normalize(z.detach().double().cpu(), dim=1)
    image = torch.arange(zh.shape[0]) % (zh.shape[0] // n_views)
    return zh, float(t) * zh @ zh.T + float(b), (image[:, None] == image[None, :]).double()


# TF32 keeps 10 of fp32's 23 mantissa bits. The H200's tensor cores truncate the rest: emulated on
# the CPU, truncated operands reproduce its db at t = 100, b = −50 (test_extreme_logits_are_finite)
# to 3 digits, 7.65e-3 from float64, where rounding to nearest gives 1.3e-4. Up to 2⁻¹⁰ of a value.
TF32_UNIT = 2.0**-10


def tf32_db_bound(z: torch.Tensor, t: float, b: float, n_views: int) -> float:
    """A bound on the error in dL/db = Σ σ(±a_ij)/M when the dots are TF32: each operand of
    ⟨ẑ_i, ẑ_j⟩ cut by up to TF32_UNIT moves a_ij = t·s_ij + b by up to t·2·TF32_UNIT (unit rows),
    and σ by σ'(a_ij) times that (first order); plus fp32's own rounding of the sum, 1e-5 of it
    (at t = 1e-3 the first term is 1e-26 and db = 64 is fp32's 64.0 against 63.99999999999995)."""
    _, a, positive = _float64_pairs(z, t, b, n_views)
    m = a.shape[0]
    slope = (torch.sigmoid(a) * torch.sigmoid(-a)).fill_diagonal_(0)
    db = ((torch.sigmoid(a) - positive).fill_diagonal_(0).sum() / m).abs()
    return (slope.sum() * float(t) * 2 * TF32_UNIT / m + 1e-5 * db).item()


def tf32_dt_scale(z: torch.Tensor, t: float, b: float, n_views: int) -> float | None:
    """The scale to compare dL/dt with for fp32 rows through the kernel: its own size in the
    interpreter (exact fp32 dots), and Σ |g_ij| where the dots are TF32 (error_scales). There dt
    cancels: at 66 rows, t = 10, b = −10 it is 5e-4, and TF32's error of each s_ij left it 7.6e-2
    of itself from float64 on an H200 (3.8e-5 of Σ |g_ij| = 1.02)."""
    return error_scales(z, t, b, n_views)[1] if KERNEL_DEVICE.type == "cuda" else None


def gpu_cases(cases: list, on_gpu: list) -> list:
    """A kernel test's parametrisation: every case in the interpreter (CI), ``on_gpu`` where the
    kernels are compiled. Each new kernel variant (dtype, tiles, feature tiles, and whether each
    integer argument is 1, a multiple of 16 or neither) costs a GPU run seconds of compiling, and
    the GPU suite's first stage must fit its limit (docs/design.md §11): there the tests keep
    one odd size per launch kind, sizes whose variants other tests and the loss bench share."""
    return on_gpu if AS_ON_GPU else cases


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> float:
    """max |actual − expected| over max |expected|, or over ``scale`` when one is given (for
    quantities whose own size is not their natural scale, e.g. a gradient after a projection)."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.isfinite(actual).all(), "non-finite values"
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    if scale is None:
        scale = expected.abs().max().item() if expected.numel() else 0.0
    return err / scale if scale > 0 else err


def assert_close_rel(
    actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str = "", scale: float | None = None
) -> None:
    err = max_rel_error(actual, expected, scale)
    assert err <= tol, f"{what}: max error {err:.3e} relative to the scale exceeds {tol:.1e}"


def reversed_programs(monkeypatch) -> None:
    """Run the Triton interpreter's programs in reverse order (the last program of every grid
    axis first): a result that depends on the order programs run in changes."""
    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    forward = type(builder).set_grid_idx

    def backwards(self, x, y, z):
        nx, ny, nz = self.grid_dim
        forward(self, nx - 1 - x, ny - 1 - y, nz - 1 - z)

    monkeypatch.setattr(type(builder), "set_grid_idx", backwards)


def run_in(read_only: Path, *argv: str, mode: int = 0o555) -> subprocess.CompletedProcess:
    """``python -m fastsigclr argv`` with ``read_only`` made read-only (or given ``mode``) for its
    duration (root drops its file-access capabilities, so the permissions hold for it too); skips
    where it cannot."""
    read_only.chmod(mode)
    try:
        return subprocess.run(
            [sys.executable, "-m", "fastsigclr", *argv],
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=without_root_file_access if os.geteuid() == 0 else None,
        )
    except subprocess.SubprocessError as err:
        pytest.skip(f"cannot drop root's file-access capabilities here: {err}")
    finally:
        read_only.chmod(0o755)


def without_root_file_access() -> None:
    """In a child process, before exec: root drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from
    its bounding set, so file permissions apply to it as to anyone (PR_CAPBSET_DROP = 24)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def write_refusal(path: Path, call) -> None:
    """Write to ``path`` (JSON) the one line ``call()`` refused with (a FastSigCLRError), or null:
    what a gloo worker hands back to the test that spawned it."""
    import json

    from fastsigclr.config import FastSigCLRError

    try:
        call()
        message = None
    except FastSigCLRError as err:
        message = str(err)
    path.write_text(json.dumps(message))
