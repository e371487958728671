"""The tile plans of the sigmoid kernel's deterministic launches, as the losses pin and record them.

A deterministic launch reduces in a fixed order given its ``kernels.Plan`` (tile, schedule, column
ranges, warps, stages); the plan a GPU picks depends on its SM count. The losses keep one plan per
kind of block (``PLAN_KINDS``) in a dict that the caller owns: a plan there is launched as it is, a
missing one is picked on this GPU and written in, so that a run can record the plans (as
``dataclasses.asdict``) and pass them back after a restart on another GPU.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import torch

from .common import kernels

# The kinds of block the losses launch, each with its own plan (kernels.sigmoid_block's pair
# modes): SigCLR's rows against themselves and (across ranks) against another rank's rows, and
# SigLIP's images against its texts.
PLAN_KINDS = ("self", "cross", "two_tower")


def as_plans(saved: Mapping[str, Any] | None) -> dict[str, Any]:
    """Plans by kind of block, each a ``kernels.Plan`` or a dict of its fields (as recorded with
    ``dataclasses.asdict``, e.g. in a run's config.json), as Plans; a ValueError names a bad one.
    Without triton (no kernel to launch) the dicts are checked for their kinds only."""
    if saved is None:
        return {}
    if not isinstance(saved, Mapping):
        raise ValueError(
            f"plans must map a kind of block ({', '.join(PLAN_KINDS)}) to a plan, got {type(saved).__name__}"
        )
    plans: dict[str, Any] = {}
    for kind, plan in saved.items():
        if kind not in PLAN_KINDS:
            raise ValueError(f"plans: {kind!r} is not a kind of block; one of {', '.join(PLAN_KINDS)}")
        if kernels is None or isinstance(plan, kernels.Plan):
            plans[kind] = plan
            continue
        fields = typing.get_type_hints(kernels.Plan)  # name → bool or int
        if not isinstance(plan, Mapping) or set(plan) != set(fields) or not all(
            isinstance(v, fields[k]) and (fields[k] is bool or (not isinstance(v, bool) and v >= 1))
            for k, v in plan.items()
        ):  # fmt: skip
            raise ValueError(f"plans: {kind!r} is {plan!r:.80}, not a plan's fields ({', '.join(fields)})")
        plans[kind] = kernels.Plan(**plan)
        try:  # the plan of a deterministic launch: never symmetric
            kernels.check_plan(plans[kind], symmetric_ok=False)
        except ValueError as err:
            raise ValueError(f"plans: {kind!r}: {err}") from None
    return plans


def pinned_plan(plans: dict | None, rows: torch.Tensor, cols: torch.Tensor, pairs: str) -> Any:
    """The plan of a deterministic launch: the one in ``plans`` for this kind of block, else the
    one this GPU picks (``kernels.sigmoid_plan``), written into ``plans`` for the caller to record."""
    plan = None if plans is None else plans.get(pairs)
    if plan is None:
        plan = kernels.sigmoid_plan(rows, cols, pairs=pairs, deterministic=True)
        if plans is not None:
            plans[pairs] = plan
    return plan


def determinism(deterministic: bool, plans: dict | None) -> dict[str, Any]:
    """The block loop's deterministic and plans options: ``plans`` itself (filled in as plans are
    picked), its plans given as fields read as Plans."""
    if plans is not None and not isinstance(plans, dict):
        raise ValueError(
            f"plans must be a dict (kind of block → plan) that the loss fills in as it picks plans, got "
            f"{type(plans).__name__}; pass {{}} to record them"
        )
    if plans and not deterministic:
        raise ValueError("plans pin the reduction order of deterministic=True; pass deterministic=True")
    if plans is not None:
        plans.update(as_plans(plans))
    return {"deterministic": deterministic, "plans": plans}
