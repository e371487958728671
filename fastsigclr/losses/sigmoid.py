"""SigCLR's pairwise sigmoid loss (docs/design.md §3): functional API, module, reference, its
blockwise form across ranks, and its registry entry.

For rows ``z`` of shape ``(V·N, D)``, view-major, and anchors ``i`` against columns ``j ≠ i``::

    a_ij = t·⟨ẑ_i, ẑ_j⟩ + b,   y_ij = +1 if i ≡ j (mod N) else −1
    L    = (1 / (V·N)) · Σ_i Σ_{j≠i} softplus(−y_ij · a_ij)

Because the loss is elementwise in the logits, its whole gradient can be formed in the same pass
as the value. One block loop (``sigmoid_blocks``) does so inside ``common.PrecomputedGrad``, in one
process (a single self-block) and across ranks (this rank's rows against every rank's block, the
ring or all-gather of ``ranks``): ``"torch"`` walks strips of rows, each unordered pair once
(``sigmoid_torch``; no (V·N)² tensor), ``"triton"`` runs the fused kernel of ``fastsigclr.kernels``.

Why no gradient travels between ranks: with G the (scaled) matrix σ(a) − [positive], the loss
gives ∂L/∂ẑ_i = 2t·Σ_j G_ij ẑ_j because G is symmetric. Rank r therefore needs only its own rows
of G, i.e. its rows against every rank's columns, to form the complete gradient of its rows. The
loss and ∂L/∂t, ∂L/∂b are sums over rows: one 3-float all-reduce.

Deterministic mode (``deterministic=True``): the kernel reduces in a fixed order (no atomics) with a
tile plan pinned per kind of block (``plans``: pair mode "self" or "cross" → ``kernels.Plan``, each
picked for its own block; ``plans.py``); the torch path always sums in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastsigclr.config import FLOAT32_MAX

from . import ranks
from .common import (
    Impl,
    PrecomputedGrad,
    Scalar,
    as_scalar_tensor,
    check_rows,
    check_scalar,
    kernels,
    resolve_impl,
)
from .normalize import EPS, normalize_rows
from .plans import as_plans, determinism, pinned_plan
from .sigmoid_torch import sigmoid_block_chunked
from .spec import HyperParam, LossSpec

# SigCLR's fixed logit scale t and SigLIP's initial bias b (docs/design.md §3).
LOGIT_SCALE = 10.0
LOGIT_BIAS = -10.0


def check_inputs(z: torch.Tensor, logit_scale: Scalar, logit_bias: Scalar, n_views: int) -> None:
    """Raise a ValueError/TypeError that names the problem and the fix."""
    check_rows(z, n_views)
    check_scalar("logit_scale", logit_scale, z, positive=True)
    check_scalar("logit_bias", logit_bias, z)


# (self_block, cols) for every column block this rank's rows meet.
Blocks = Callable[[torch.Tensor], Iterable[tuple[bool, torch.Tensor]]]


def sigmoid_blocks(
    zhat: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    n_views: int,
    impl: str = "torch",
    blocks: Blocks | None = None,
    world_size: int = 1,
    group=None,
    compute_grad: bool = True,
    compute_loss: bool = True,
    deterministic: bool = False,
    plans: dict | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The loss of a batch of ``world_size`` equal shares, this rank's rows ``zhat`` (M, D)
    against each column block of ``blocks(zhat)`` (None: one rank, one self-block, no
    all-reduce): (loss, dL/dzhat, dL/dt, dL/db) of the whole batch, loss None without
    compute_loss. impl: "torch" (sigmoid_torch's chunked block) or "triton" (the kernel's).
    deterministic: the kernel without atomics, each kind of block with its plan in ``plans``
    (pinned; one missing is picked and written in); the blocks are added in their fixed order."""
    m = zhat.shape[0]
    args = dict(n_per_view=m // n_views, inv_m=1.0 / (m * world_size), compute_loss=compute_loss)
    args["deterministic"] = deterministic
    block = sigmoid_block_chunked
    if impl == "triton":
        # Across ranks dz sums several blocks: each is kept in fp32 until the sum is done.
        block, args["out_dtype"] = kernels.sigmoid_block, torch.float32 if world_size > 1 else None
    sums, dz = None, None
    for self_block, cols in [(True, zhat)] if blocks is None else blocks(zhat):
        pairs = "self" if self_block else "cross"
        pinned = {"plan": pinned_plan(plans, zhat, cols, pairs)} if impl == "triton" and deterministic else {}
        loss, dz_block, _, dt, db = block(
            zhat, cols, logit_scale, logit_bias, pairs=pairs, grad_rows=compute_grad, **args, **pinned
        )
        part = torch.stack([dt, db, dt.new_zeros(()) if loss is None else loss.to(dt.dtype)])
        sums = part if sums is None else sums + part
        dz = dz_block if dz is None or dz_block is None else dz.add_(dz_block)
    if world_size > 1:
        dist.all_reduce(sums, group=group)
    dt, db, loss = sums.unbind()
    return (loss if compute_loss else None), dz, dt, db


def sigmoid_pairwise_loss(
    z: torch.Tensor,
    logit_scale: Scalar,
    logit_bias: Scalar,
    *,
    n_views: int = 2,
    normalize: bool = True,
    impl: Impl = "auto",
    compute_loss: bool = True,
    deterministic: bool = False,
    plans: dict | None = None,
) -> torch.Tensor:
    """SigCLR loss of ``z`` (shape ``(n_views·N, D)``, view-major) → fp32 scalar.

    logit_scale, logit_bias: floats or 0-d tensors (learnable tensors receive gradients): the
    logits are logit_scale·⟨ẑ_i, ẑ_j⟩ + logit_bias (``--logit-scale``, ``--logit-bias`` in training).
    normalize: L2-normalise rows first, z / max(‖z‖, 1e-4) (normalize.EPS; set False when z is
    already on the unit sphere).
    impl: "triton" (fused kernel, CUDA), "torch" (chunked, any device), "auto" (triton on CUDA).
    compute_loss: False skips the loss terms (about 70% of the fused kernel's instructions per
    pair at D = 128; the gradients are unchanged): the result then has the value NaN and is only
    for ``backward()``. Compute it on the steps whose loss is logged.
    deterministic: bitwise-equal results from call to call. The kernel then reduces its partial
    sums in a fixed order (no atomics; about twice the tiles of the symmetric schedule where that
    one runs, and a (column ranges, M, D) fp32 buffer) with a pinned tile plan: ``plans["self"]``
    (a ``kernels.Plan``, or its fields as a dict) when given, else the one this GPU picks, which is
    then written into ``plans`` (when a dict is passed): record it and pass it back after a
    restart, so that another GPU reduces in the same order. The torch path always sums in a fixed
    order. Without it results are exact to fp32 rounding, not bitwise (atomic adds, autotuning).
    """
    check_inputs(z, logit_scale, logit_bias, n_views)
    which = resolve_impl(impl, z)
    zhat = normalize_rows(z) if normalize else z
    options = {"n_views": n_views, "impl": which, "compute_loss": compute_loss}
    options.update(determinism(deterministic, plans))
    t, b = as_scalar_tensor(logit_scale, z), as_scalar_tensor(logit_bias, z)
    return PrecomputedGrad.apply(sigmoid_blocks, options, zhat, t, b)


def sigmoid_pairwise_loss_distributed(
    z_local: torch.Tensor,
    logit_scale: Scalar,
    logit_bias: Scalar,
    *,
    n_views: int = 2,
    mode: str = "ring",
    group=None,
    normalize: bool = True,
    impl: Impl = "auto",
    check_shapes: bool = True,
    compute_loss: bool = True,
    deterministic: bool = False,
    plans: dict | None = None,
) -> torch.Tensor:
    """The SigCLR loss of the global batch, computed from each rank's ``z_local`` (V·n, D).

    Returns the global loss (the same fp32 scalar on every rank; NaN without compute_loss).
    Backward gives ``z_local`` its rows of the global gradient and ``logit_scale``/``logit_bias`` (when
    they are tensors that need gradients) the global ∂L/∂t and ∂L/∂b, identical on every rank.
    mode: "ring" (neighbour exchange, two remote blocks held at most, whatever the world size) or
    "gather" (all-gather: K blocks held at once).
    check_shapes: verify with one small all-gather that every rank's z has the same shape.
    deterministic, plans: as sigmoid_pairwise_loss, with a plan for the "self" block and one for
    the "cross" blocks (other ranks' rows); the blocks are added in the ring's (or gather's) order.
    """
    ranks.check_mode(mode)
    rank, world_size = ranks.world(group)
    check_inputs(z_local, logit_scale, logit_bias, n_views)
    if check_shapes:
        ranks.check_same_shape(z_local, group)
    which = resolve_impl(impl, z_local)
    zhat = normalize_rows(z_local) if normalize else z_local
    stream = ranks.ring_blocks if mode == "ring" else ranks.gather_blocks

    def blocks(rows: torch.Tensor) -> Iterable[tuple[bool, torch.Tensor]]:
        return ((owner == rank, cols) for owner, cols in stream(rows, group))

    options = dict(n_views=n_views, impl=which, blocks=blocks, world_size=world_size, group=group)
    options.update(determinism(deterministic, plans))
    t, b = as_scalar_tensor(logit_scale, z_local), as_scalar_tensor(logit_bias, z_local)
    return PrecomputedGrad.apply(sigmoid_blocks, {**options, "compute_loss": compute_loss}, zhat, t, b)


def sigmoid_pairwise_loss_reference(
    z: torch.Tensor, logit_scale: Scalar, logit_bias: Scalar, *, n_views: int = 2, normalize: bool = True
) -> torch.Tensor:
    """Plain autograd formulation that materialises the (V·N)² logits: the baseline to beat."""
    m = z.shape[0]
    zhat = F.normalize(z, dim=1, eps=EPS) if normalize else z
    logits = logit_scale * (zhat @ zhat.T) + logit_bias
    img = torch.arange(m, device=z.device) % (m // n_views)
    same = img[:, None] == img[None, :]
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    signs = torch.where(same, 1.0, -1.0).to(logits.dtype)
    terms = F.softplus(-signs * logits).masked_fill(eye, 0)
    return terms.sum() / m


class SigmoidPairwiseLoss(nn.Module):
    """The SigCLR loss with a learnable logit bias (init −10) and a fixed or learnable logit scale.

    A learnable scale is kept as ``logit_scale = exp(log_logit_scale)``, initialised to log(t0).
    Checkpoints written under the earlier names (``log_temperature``, ``bias``) load as today's.
    deterministic: see sigmoid_pairwise_loss; ``plans`` (kind of block → Plan, or its fields) are
    the plans to pin, and ``self.plans`` holds every plan launched so far, for the run to record.
    """

    def __init__(
        self,
        logit_scale: float = LOGIT_SCALE,
        logit_bias: float = LOGIT_BIAS,
        *,
        learnable_logit_scale: bool = False,
        learnable_logit_bias: bool = True,
        n_views: int = 2,
        normalize: bool = True,
        impl: Impl = "auto",
        deterministic: bool = False,
        plans: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.n_views = n_views
        self.normalize = normalize
        self.impl = impl
        self.deterministic = deterministic
        self.plans = as_plans(plans)
        self.learnable_logit_scale = learnable_logit_scale
        log_t = torch.tensor(math.log(logit_scale))
        if learnable_logit_scale:
            self.log_logit_scale = nn.Parameter(log_t)
            self.adapted_parameters = ("log_logit_scale",)  # LARS's steps (optim.param_groups)
        else:
            self.register_buffer("log_logit_scale", log_t)
        b = torch.tensor(float(logit_bias))
        if learnable_logit_bias:
            self.logit_bias = nn.Parameter(b)
        else:
            self.register_buffer("logit_bias", b)
        self._register_load_state_dict_pre_hook(_renamed_state)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp()

    def forward(
        self, z: torch.Tensor, labels: torch.Tensor | None = None, *, compute_loss: bool = True
    ) -> torch.Tensor:
        """z: (n_views·N, D) view-major projections → scalar loss (NaN without compute_loss:
        see sigmoid_pairwise_loss). The loss is self-supervised: labels must be None."""
        if labels is not None:
            raise ValueError("the sigmoid loss is self-supervised: call it without labels")
        return sigmoid_pairwise_loss(
            z,
            self.logit_scale,
            self.logit_bias,
            n_views=self.n_views,
            normalize=self.normalize,
            impl=self.impl,
            compute_loss=compute_loss,
            **self.determinism(),
        )

    def determinism(self) -> dict[str, Any]:
        """The loss functions' deterministic and plans arguments of this module."""
        return {"deterministic": self.deterministic, "plans": self.plans if self.deterministic else None}

    def log_values(self) -> dict[str, float]:
        """What the logs record of this loss: the logit scale t and the logit bias b."""
        return {"logit_scale": self.logit_scale.item(), "logit_bias": self.logit_bias.item()}

    def extra_repr(self) -> str:
        return (
            f"logit_scale={self.logit_scale.item():.4g}, logit_bias={self.logit_bias.item():.4g}, "
            f"learnable_logit_scale={self.learnable_logit_scale}, n_views={self.n_views}"
        )


# state_dict keys of checkpoints written before the loss's quantities had one name each.
OLD_STATE_KEYS = {"log_temperature": "log_logit_scale", "bias": "logit_bias"}


def _renamed_state(state: dict, prefix: str, *args) -> None:
    for old, new in OLD_STATE_KEYS.items():
        if prefix + old in state and prefix + new not in state:
            state[prefix + new] = state.pop(prefix + old)


def _distributed(
    module: SigmoidPairwiseLoss, z: torch.Tensor, labels: None, *, mode: str, group, compute_loss: bool
) -> torch.Tensor:
    return sigmoid_pairwise_loss_distributed(
        z,
        module.logit_scale,
        module.logit_bias,
        n_views=module.n_views,
        mode=mode,
        group=group,
        normalize=module.normalize,
        impl=module.impl,
        check_shapes=False,  # the loaders give every rank the same batch size
        compute_loss=compute_loss,
        **module.determinism(),
    )


def _function(
    z: torch.Tensor, labels: None = None, *, n_views: int = 2, impl: Impl = "auto",
    deterministic: bool = False,
    **params,
):  # fmt: skip
    t, b = params["logit_scale"], params["logit_bias"]
    return sigmoid_pairwise_loss(z, t, b, n_views=n_views, impl=impl, deterministic=deterministic)


def _reference(z: torch.Tensor, labels: None = None, *, n_views: int = 2, **params) -> torch.Tensor:
    return sigmoid_pairwise_loss_reference(z, params["logit_scale"], params["logit_bias"], n_views=n_views)


SPEC = LossSpec(
    summary="SigCLR: pairwise sigmoid, softplus(−y·(t·s + b)), t 10 fixed, b learnt from −10",
    build=SigmoidPairwiseLoss,  # its keywords are the spec's parameter names
    function=_function,
    reference=_reference,
    params={
        "logit_scale": HyperParam(
            LOGIT_SCALE, "sigmoid logit scale t: logits t·s + b (multiplies the similarities)", {"gt": 0}
        ),
        "learnable_logit_scale": HyperParam(False, "learn t as exp(t')"),
        "logit_bias": HyperParam(
            LOGIT_BIAS, "initial sigmoid logit bias b", {"ge": -FLOAT32_MAX, "le": FLOAT32_MAX}
        ),
        "learnable_logit_bias": HyperParam(
            True, "learn the logit bias b; --no-learnable-logit-bias keeps it at --logit-bias"
        ),
    },
    kernel="sigmoid_block",
    kernel_plans=True,
    distributed=_distributed,
    notes={"temperature": "sigclr multiplies its logits by a scale instead: pass --logit-scale"},
    renamed={"bias": "logit_bias", "learnable_bias": "learnable_logit_bias"},
)
