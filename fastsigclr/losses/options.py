"""The command-line options of the losses' hyper-parameters, generated once from the registry
(``fastsigclr train`` and ``fastsigclr bench loss`` add them with ``with_loss_options``): one option
per parameter name of any loss, unset by default (each method's own default then applies), help
and bounds from the spec. A new loss whose parameters already exist needs no change here or in the
configs."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, TypeVar

from fastsigclr.config import flag, option

from . import LOSSES
from .spec import HyperParam, LossSpec


def _users() -> dict[str, dict[str, HyperParam]]:
    users: dict[str, dict[str, HyperParam]] = {}
    for method, spec in LOSSES.items():
        for name, param in spec.params.items():
            users.setdefault(name, {})[method] = param
    return users


def _shown(value: float | bool) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else f"{value:g}"


def _fields() -> list[tuple[str, Any, Any]]:
    fields = []
    for name, by_method in _users().items():
        first = next(iter(by_method.values()))
        kind = bool if isinstance(first.default, bool) else float
        shown = ", ".join(f"{m} {_shown(p.default)}" for m, p in by_method.items())
        fields.append((name, kind | None, option(None, f"{first.help} (unset: {shown})", **first.bounds)))
    return fields


_FIELDS = _fields()
LOSS_OPTIONS = tuple(name for name, _, _ in _FIELDS)
C = TypeVar("C")


def with_loss_options(cls: type[C]) -> type[C]:
    """Class decorator for a frozen config dataclass: the same class with the loss options added
    after its own fields (so its --help and error messages list its own options first)."""
    namespace = {"__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    made = dataclasses.make_dataclass(cls.__name__, _FIELDS, bases=(cls,), frozen=True, namespace=namespace)
    # The module that defines cls, which `fastsigclr bench` imports for its run(): Python 3.12's
    # make_dataclass sets __module__ to its caller's (this module), whatever the namespace says.
    made.__module__ = cls.__module__
    return made


def check_applicable(
    config: Any, methods: Iterable[str], fix: str = "drop it", losses: dict[str, LossSpec] = LOSSES
) -> None:
    """A loss option given (not None) that none of ``methods`` takes is a ValueError naming the
    methods it applies to (and the spec's hint where the method has one, e.g. --logit-scale).
    losses: where the methods are looked up (``bench loss`` adds losses that are not methods)."""
    methods = tuple(methods)
    for name in LOSS_OPTIONS:
        if getattr(config, name) is None or any(name in losses[m].params for m in methods):
            continue
        users = ", ".join(m for m, spec in losses.items() if name in spec.params)
        notes = [losses[m].notes[name] for m in methods if name in losses[m].notes]
        note = f" ({notes[0]})" if notes else ""
        raise ValueError(f"{flag(name)} applies to {users} only; {fix}{note}")


def renamed_options(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the loss options written under an earlier name (``LossSpec.renamed``,
    e.g. sigclr's bias, now logit_bias) read under today's; other keys as they are."""
    renamed = dict(saved)
    for spec in LOSSES.values():
        for before, after in spec.renamed.items():
            if before in renamed and after not in renamed:
                renamed[after] = renamed.pop(before)
    return renamed
