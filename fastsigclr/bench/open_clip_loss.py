"""open_clip's ``SigLipLoss`` as a provider of ``fastsigclr bench loss`` (the ``bench`` extra:
``pip install --no-deps open_clip_torch``): the two-tower sigmoid loss most SigLIP models are trained with,
and the baseline the torch path is held to (docs/design.md §3).

Applied to SigCLR's 2N view-major rows it computes the same loss on the same (2N)² logits: the
images are the rows ẑ, the texts the rows of the other view (ẑ rolled by N), so its diagonal
holds SigCLR's positives and every other entry a negative; its one extra entry per row, each row
against itself as a negative (s_ii = 1), is subtracted: (1/2N)·Σ_i softplus(t·⟨ẑ_i, ẑ_i⟩ + b).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fastsigclr.losses.normalize import EPS

# Losses open_clip has a counterpart of (bench names).
OPEN_CLIP_LOSSES = ("sigclr", "siglip")


def installed() -> bool:
    return importlib.util.find_spec("open_clip") is not None


def open_clip_siglip() -> type[torch.nn.Module]:
    """open_clip's SigLipLoss class, read from open_clip/loss.py alone: the package's __init__
    imports its models, tokenizer and torchvision, none of which the loss needs."""
    found = importlib.util.find_spec("open_clip")
    if found is None:
        raise RuntimeError(
            "open_clip is not installed: pip install --no-deps open_clip_torch (with deps it replaces torch)"
        )
    path = Path(next(iter(found.submodule_search_locations))) / "loss.py"
    spec = importlib.util.spec_from_file_location("open_clip_loss", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SigLipLoss


def open_clip_fn(method: str, params: dict[str, Any]) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """fn(z, labels) of open_clip's loss for a bench loss of OPEN_CLIP_LOSSES (rows normalised,
    as the package's losses do)."""
    criterion = open_clip_siglip()()
    t, b = params["logit_scale"], params["logit_bias"]

    def sigclr(z: torch.Tensor, labels: None) -> torch.Tensor:
        zhat = F.normalize(z, dim=1, eps=EPS)
        m = zhat.shape[0]
        self_pairs = F.softplus(t * (zhat * zhat).sum(1) + b).sum() / m
        return criterion(zhat, zhat.roll(m // 2, 0), t, b) - self_pairs

    def siglip(z: torch.Tensor, labels: None) -> torch.Tensor:
        x, y = F.normalize(z, dim=1, eps=EPS).chunk(2)
        return criterion(x, y, t, b)

    return sigclr if method == "sigclr" else siglip
