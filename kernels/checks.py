"""The dtype of the kernels' gradients, and the checks of their public entry points
(``sigmoid_loss``, ``sigmoid_block``): what a launch would otherwise take silently (int64 rows,
rows not divisible by n_views: positives misplaced) or fail on deep inside (a Python float
scale, a 1-D tensor)."""

from __future__ import annotations

import torch

# What the loss kernels take (fp64 tl.dot is not among their configurations).
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def grad_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a gradient of ``dtype`` inputs is returned in. bf16 keeps fp32's exponent range;
    an fp16 gradient stored before GradScaler multiplies it back up would flush to zero (~1e-5
    at M = 8192), so fp16 inputs keep an fp32 gradient; other dtypes keep their own."""
    return torch.float32 if dtype == torch.float16 else dtype


def _described(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return f"a {type(x).__name__}"


def check_operand(name: str, x: object) -> None:
    """A (rows, features) tensor of a dtype the kernels take, with at least one of each."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype not in KERNEL_DTYPES:
        raise ValueError(
            f"{name} must be a 2-D float32, float16 or bfloat16 tensor (rows × features), got {_described(x)}"
        )
    if 0 in x.shape:
        raise ValueError(f"{name} has no rows or no features: shape {tuple(x.shape)}")


def check_scalars(like: torch.Tensor, **scalars: object) -> None:
    """logit_scale and logit_bias: one-element float tensors on ``like``'s device."""
    for name, value in scalars.items():
        ok = isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()
        if not ok or value.device != like.device:
            raise ValueError(
                f"{name} must be a one-element float tensor on {like.device} (e.g. "
                f"torch.tensor(10.0, device=...)), got {_described(value)}"
            )


def check_views(zhat: torch.Tensor, n_views: object) -> None:
    """View-major rows: n_views blocks of N rows each."""
    if type(n_views) is not int or n_views < 2 or zhat.shape[0] % n_views:
        raise ValueError(
            f"n_views must be an integer ≥ 2 that divides zhat's {zhat.shape[0]} rows (view-major: "
            f"n_views blocks of N rows), got {n_views!r}"
        )
