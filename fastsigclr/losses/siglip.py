"""SigLIP's two-tower sigmoid loss (Zhai et al., ICCV 2023): B images ``x`` against B texts ``y``::

    a_ij = t·⟨x_i, y_j⟩ + b,   z_ij = +1 if i = j else −1
    L    = −(1/B) · Σ_i Σ_j log σ(z_ij · a_ij)

the number open_clip's ``SigLipLoss()(x, y, logit_scale, logit_bias)`` returns (its logit_scale
already exponentiated, its sum divided by B), with x, y, t and b differentiated in one pass (the
two-tower block of ``sigmoid_torch`` or of the kernel, ``fastsigclr.kernels.sigmoid_block``, with
the same keywords: x and y are stacked into one (2B, D) tensor so that
``common.PrecomputedGrad`` serves it as it serves SigCLR), and its exact form across ranks: each
rank's images meet every rank's texts once around a ring, the texts' gradient travelling with
them back to their rank (docs/design.md §4).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import ranks, sigmoid
from .common import Impl, PrecomputedGrad, Scalar, as_scalar_tensor, check_scalar, kernels, resolve_impl
from .normalize import EPS, normalize_rows
from .plans import determinism, pinned_plan
from .sigmoid_torch import sigmoid_block_chunked
from .spec import LossSpec

# open_clip's ways of exchanging the texts across ranks (its SigLipLoss's dist_impl): each gives
# the global loss, as the ring here does.
DIST_IMPLS = ("bidir", "shift", "reduce", "gather")


def check_towers(x: torch.Tensor, y: torch.Tensor, logit_scale: Scalar, logit_bias: Scalar) -> None:
    """Raise a ValueError/TypeError that names the problem and the fix."""
    for name, value in (("x", x), ("y", y)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
            raise TypeError(f"{name} must be a 2-D floating-point tensor (B, D), one row per pair")
        if min(value.shape) < 1:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}: needs at least one pair and one feature"
            )
    if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device:
        raise ValueError(
            f"image and text features must match: x is {x.dtype} {tuple(x.shape)} on {x.device}, "
            f"y is {y.dtype} {tuple(y.shape)} on {y.device}; pass one (B, D) row per pair for each"
        )
    check_scalar("logit_scale", logit_scale, x, positive=True)
    check_scalar("logit_bias", logit_bias, x)


def two_tower_blocks(
    xy: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    group=None,
    world_size: int = 1,
    impl: str = "torch",
    compute_grad: bool = True,
    compute_loss: bool = True,
    deterministic: bool = False,
    plans: dict | None = None,
    per_rank: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(loss, dL/d(x;y), dL/dt, dL/db) of the whole batch for this rank's images and texts
    stacked as ``xy`` (2B, D); one rank: one block, no communication. per_rank: open_clip's
    convention instead, this rank's loss L_r (its images against every text, over its B): the
    same blocks over B rather than the global batch, and no all-reduce of the value, t and b. impl: "torch"
    (sigmoid_torch's chunked block) or "triton" (the kernel's two-tower block for this rank's
    own pairs; the ring's blocks of other ranks' texts, all negatives with both gradients, stay
    on the torch block: the kernel has no two-sided all-negative mode). deterministic: the
    kernel's block without atomics, with the plan ``plans["two_tower"]`` (see plans.py)."""
    b = xy.shape[0] // 2
    x, y = xy[:b], xy[b:]
    inv_m = 1.0 / (b if per_rank else b * world_size)
    block = dict(n_per_view=None, inv_m=inv_m, pairs="two_tower", compute_loss=compute_loss)
    grads = dict(grad_rows=compute_grad, grad_cols=compute_grad)
    own, own_args = sigmoid_block_chunked, {}
    if impl == "triton":
        # Across ranks the texts' gradient sums several blocks: each is kept in fp32.
        own, own_args = kernels.sigmoid_block, {"out_dtype": torch.float32 if world_size > 1 else None}
        if deterministic:
            own_args.update(deterministic=True, plan=pinned_plan(plans, x, y, "two_tower"))
    if world_size == 1:
        loss, dx, dy, dt, db = own(x, y, logit_scale, logit_bias, **grads, **block, **own_args)
        return loss, (torch.cat([dx, dy]) if compute_grad else None), dt, db
    dx, dy, sums = None, None, None
    texts, travelling = y, None
    for step in range(world_size):
        if step == 0:
            out = own(x, texts, logit_scale, logit_bias, **grads, **block, **own_args)
        else:
            out = sigmoid_block_chunked(x, texts, logit_scale, logit_bias, positives=False, **grads, **block)
        loss, d_rows, d_cols, dt, db = out
        part = torch.stack([dt, db, dt.new_zeros(()) if loss is None else loss])
        sums = part if sums is None else sums + part
        dx = d_rows if dx is None or d_rows is None else dx.add_(d_rows)
        travelling = d_cols if travelling is None or d_cols is None else travelling.add_(d_cols)
        # Pass the texts and their gradient so far on to rank r + 1; after the last block each
        # gradient reaches its own rank (the texts are not sent then).
        last = step == world_size - 1
        sent = ([] if last else [texts.contiguous()]) + ([travelling] if compute_grad else [])
        received = ranks.ring_exchange(sent, group)
        texts = texts if last else received[0]
        travelling = received[-1] if compute_grad else None
    dy = travelling
    if not per_rank:
        dist.all_reduce(sums, group=group)
    dt, db, loss = sums.unbind()
    return (loss if compute_loss else None), (torch.cat([dx, dy]) if compute_grad else None), dt, db


def siglip_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    logit_scale: Scalar,
    logit_bias: Scalar,
    *,
    impl: Impl = "auto",
    compute_loss: bool = True,
    deterministic: bool = False,
    plans: dict | None = None,
) -> torch.Tensor:
    """SigLIP's loss of image features ``x`` and text features ``y`` (both (B, D), row i of each
    a pair; used as given, as open_clip does: normalise them first) → fp32 scalar (fp64 for
    fp64 input). logit_scale (t, already exponentiated), logit_bias (b): floats or 0-d tensors;
    learnable tensors receive gradients. compute_loss=False: NaN, gradients only.
    impl: "triton" (fused kernel, CUDA), "torch" (chunked, any device), "auto" (triton on CUDA).
    deterministic, plans: as sigmoid_pairwise_loss, the kernel's plan under ``"two_tower"`` (its
    texts' gradient then comes from a second launch, the towers swapped, instead of atomics)."""
    check_towers(x, y, logit_scale, logit_bias)
    which = resolve_impl(impl, x)
    t, b = as_scalar_tensor(logit_scale, x), as_scalar_tensor(logit_bias, x)
    options = {"impl": which, "compute_loss": compute_loss, **determinism(deterministic, plans)}
    return PrecomputedGrad.apply(two_tower_blocks, options, torch.cat([x, y]), t, b)


def siglip_loss_distributed(
    x_local: torch.Tensor,
    y_local: torch.Tensor,
    logit_scale: Scalar,
    logit_bias: Scalar,
    *,
    group=None,
    impl: Impl = "auto",
    check_shapes: bool = True,
    compute_loss: bool = True,
    deterministic: bool = False,
    plans: dict | None = None,
    per_rank: bool = False,
) -> torch.Tensor:
    """SigLIP's loss of the global batch (each rank's pairs concatenated in rank order), from each
    rank's (b, D) images and texts: the same fp32 scalar on every rank. Backward gives x_local
    and y_local their rows of the global gradient and t, b the global ∂L/∂t, ∂L/∂b (the same on
    every rank): sum the encoders' parameter gradients across ranks and keep t's and b's as they
    are (the trainer's convention). per_rank: open_clip's convention instead: this rank's loss
    L_r (its images against every rank's texts, over its b rows; the global loss is their mean),
    x_local and y_local the gradient of Σ_r L_r, t and b that of L_r: under DDP's average every
    parameter, t and b among them, gets the global loss's gradient (``SigLipLoss``).
    deterministic, plans: as siglip_loss (the other ranks' blocks run the torch block)."""
    _, world_size = ranks.world(group)
    check_towers(x_local, y_local, logit_scale, logit_bias)
    which = resolve_impl(impl, x_local)
    if check_shapes:
        ranks.check_same_shape(x_local, group)
    t, b = as_scalar_tensor(logit_scale, x_local), as_scalar_tensor(logit_bias, x_local)
    options = {"group": group, "world_size": world_size, "impl": which, "compute_loss": compute_loss}
    options.update(determinism(deterministic, plans), per_rank=per_rank)
    return PrecomputedGrad.apply(two_tower_blocks, options, torch.cat([x_local, y_local]), t, b)


def siglip_loss_reference(
    x: torch.Tensor, y: torch.Tensor, logit_scale: Scalar, logit_bias: Scalar
) -> torch.Tensor:
    """The SigLIP definition, materialised: B×B logits, ±1 labels, −Σ log σ / B (any dtype)."""
    logits = logit_scale * (x @ y.T) + logit_bias
    labels = 2 * torch.eye(x.shape[0], dtype=logits.dtype, device=x.device) - 1
    return -F.logsigmoid(labels * logits).sum() / x.shape[0]


class SigLipLoss(nn.Module):
    """A drop-in for open_clip's ``SigLipLoss``: built with its arguments (``cache_labels``,
    ``rank``, ``world_size``, ``dist_impl``), called as ``loss(image_features, text_features,
    logit_scale, logit_bias)`` (a None bias: none), with the same value and gradients, computed
    without the B×B matrix; the loss is fp32 for 16-bit features (open_clip's is 16-bit).
    world_size > 1: open_clip's per-rank loss and gradients over torch.distributed's default group
    (or ``group``), exactly (``siglip_loss_distributed(per_rank=True)``), whatever ``dist_impl``
    (open_clip's exchanges all give them); ``cache_labels`` changes nothing (no labels are
    materialised). deterministic: see siglip_loss; ``self.plans`` holds the kernel's plan once
    launched."""

    def __init__(
        self,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
        dist_impl: str | None = None,
        *,
        group=None,
        impl: Impl = "auto",
        deterministic: bool = False,
    ) -> None:
        if dist_impl not in (None, *DIST_IMPLS):
            raise ValueError(f"dist_impl must be one of {', '.join(DIST_IMPLS)} or None, got {dist_impl!r}")
        super().__init__()
        self.rank, self.world_size, self.group, self.impl = rank, world_size, group, impl
        self.deterministic, self.plans = deterministic, {}

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: Scalar,
        logit_bias: Scalar | None,
        output_dict: bool = False,
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        args = (image_features, text_features, logit_scale, 0.0 if logit_bias is None else logit_bias)
        kw = dict(
            impl=self.impl, deterministic=self.deterministic, plans=self.plans if self.deterministic else None
        )
        if self.world_size > 1:
            if ranks.world(self.group) != (self.rank, self.world_size):
                raise ValueError(
                    f"SigLipLoss(rank={self.rank}, world_size={self.world_size}) but this process is rank "
                    f"{ranks.world(self.group)[0]} of {ranks.world(self.group)[1]}: pass the group's own"
                )
            loss = siglip_loss_distributed(*args, group=self.group, per_rank=True, **kw)
        else:
            loss = siglip_loss(*args, **kw)
        return {"contrastive_loss": loss} if output_dict else loss


def _function(
    z: torch.Tensor, labels: None = None, *, n_views: int = 2, impl: Impl = "auto",
    deterministic: bool = False,
    **params,
):  # fmt: skip
    x, y = normalize_rows(z).chunk(2)
    t, b = params["logit_scale"], params["logit_bias"]
    return siglip_loss(x, y, t, b, impl=impl, deterministic=deterministic)


def _reference(z: torch.Tensor, labels: None = None, *, n_views: int = 2, **params) -> torch.Tensor:
    x, y = F.normalize(z, dim=1, eps=EPS).chunk(2)
    return siglip_loss_reference(x, y, params["logit_scale"], params["logit_bias"])


def _built(deterministic: bool, plans: dict | None) -> SigLipLoss:
    """The module as LossSpec.build makes it: plans given to a deterministic loss are pinned."""
    module = SigLipLoss(deterministic=deterministic)
    module.plans.update(plans or {})
    return module


# Not a training method (not in LOSSES): the entry through which `fastsigclr bench loss` measures
# it, with z's two halves as the images and the texts (rows normalised) and sigclr's parameters.
SPEC = LossSpec(
    summary="SigLIP: two-tower sigmoid, images z[:N] against texts z[N:], positives on the diagonal",
    build=lambda deterministic=False, plans=None, **params: _built(deterministic, plans),
    function=_function,
    reference=_reference,
    params=sigmoid.SPEC.params,
    kernel="sigmoid_block",  # its two-tower block (pairs="two_tower")
    kernel_plans=True,
)
