"""Configuration: one frozen dataclass per command; defaults live only in those dataclasses.

The command-line parser is generated from the fields (``--field-name``), values are validated by
each class's ``__post_init__``, and dictionaries with keys that no field declares are rejected.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import os
import time
import types
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

C = TypeVar("C")


class FastSigCLRError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback (``error_text``).
    ``alike``: every process of a torchrun run raises it with the same message (from the command
    line, the node's files, what the ranks agreed on, or rank 0's failure passed on), so one process
    per node says it."""

    alike = False

    def __init__(self, *args: object, alike: bool | None = None) -> None:
        super().__init__(*args)
        if alike is not None:
            self.alike = alike


class ConfigError(FastSigCLRError, ValueError):
    """A configuration value or key is invalid; the message says what is allowed. From the command
    line (the same on every process of a node), the settings the ranks checked alike
    (``cluster.check_same_run``) and the node's files: ``alike``."""

    alike = True


E = TypeVar("E", bound=BaseException)

# How long a process of a torchrun run leaves an error its whole node raises alike to the node's
# LOCAL_RANK 0 (``defer_to_node``). torchrun stops the other processes as soon as that one exits
# with it: one that is still running after this says the error itself (it was not alike after all).
ALIKE_GRACE_S = 10.0


def alike(err: E) -> E:
    """``err``, marked as raised alike by every process of a torchrun run (FastSigCLRError.alike)."""
    err.alike = True
    return err


def raising_alike(fn: Callable[..., C], *args: Any, **kwargs: Any) -> C:
    """``fn(*args, **kwargs)``; a FastSigCLRError it raises is marked ``alike``."""
    try:
        return fn(*args, **kwargs)
    except FastSigCLRError as err:
        err.alike = True
        raise


def several_ranks() -> bool:
    """Whether this process is one rank of several (WORLD_SIZE > 1: torchrun's, or set by hand)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1
    except ValueError:
        return False


def speaks_for_node() -> bool:
    """Whether this process says what every process of its node would say alike (a warning about
    the node's files, an ``alike`` error): torchrun's LOCAL_RANK 0, or a process outside torchrun."""
    return not several_ranks() or os.environ.get("LOCAL_RANK", "0") == "0"


def defer_to_node() -> bool:
    """Before saying an error its node raises alike: in a process that does not speak for its
    node, wait ``ALIKE_GRACE_S`` for torchrun to stop it. Returns whether it waited (and so must
    say the error itself, naming its rank)."""
    if speaks_for_node():
        return False
    time.sleep(ALIKE_GRACE_S)
    return True


def error_text(err: FastSigCLRError) -> str:
    """The line the command line prints for ``err``. Under torchrun an ``alike`` error is said
    once per node (``defer_to_node``), and one a rank meets alone names the rank."""
    if not several_ranks() or (err.alike and not defer_to_node()):
        return f"fastsigclr: error: {err}\n"
    rank, text = os.environ.get("RANK", "?"), str(err)
    return f"fastsigclr: error: {text if text.startswith(f'rank {rank} ') else f'rank {rank}: {text}'}\n"


# The largest --seed: seeds reach torch.manual_seed, which overflowed ("Overflow when unpacking long
# long") at 99999999999999999999 and took 2**63 - 1 through a whole run.
SEED_MAX = 2**63 - 1
# The largest float32: the weights and loss parameters are float32, so a larger --lr or --logit-bias
# overflows at the first step (--lr 1e39 stopped in the optimiser: "value cannot be converted to
# type float without overflow"). The bound of every option that becomes a float32.
FLOAT32_MAX = float.fromhex("0x1.fffffep+127")

# option(...) keyword -> (test, symbol in messages and --help)
BOUNDS = {
    "ge": (operator.ge, "≥"),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "≤"),
    "lt": (operator.lt, "<"),
}


def option(
    default: Any,
    help: str,
    choices: Collection[str] | None = None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    bare: str | None = None,
    path: bool = False,
    **kw: Any,
) -> Any:
    """A dataclass field carrying its help text, for strings the allowed values, and for numbers
    the bounds every value must satisfy (ge: ≥, gt: >, le: ≤, lt: <; checked by check_fields).
    ``choices`` may be a registry's live ``keys()``, so that an entry added later is accepted.
    ``bare``: a string option whose flag may stand alone (``--name`` means ``bare``; ``--no-name``
    means the default), as a yes/no option that gained more choices. ``path``: a file or folder,
    whose leading ``~`` is expanded when read from the command line (a shell leaves ``--out=~/x``
    as it is)."""
    bounds = {
        name: value for name, value in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if value is not None
    }
    metadata = {"help": help, "choices": choices, "bounds": bounds, "bare": bare, "path": path}
    return dataclasses.field(default=default, metadata=metadata, **kw)


def option_from(cls: type, name: str, default: Any = dataclasses.MISSING, unset: str | None = None) -> Any:
    """Option ``name`` of config ``cls`` declared again for another command: the same help, choices
    and bounds, and the same default unless ``default`` is given (``unset``: what the help says an
    unset value means), so that each is written once."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    metadata = dict(f.metadata)
    if unset is not None:
        metadata["help"] = f"{metadata['help']}; unset: {unset}"
    value = f.default if default is dataclasses.MISSING else default
    return dataclasses.field(default=value, metadata=metadata)


def default_of(cls: type, name: str) -> Any:
    """The default of option ``name`` of config ``cls`` (for text that quotes it)."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def flag(name: str) -> str:
    """The command-line flag of option ``name``: ``--field-name``."""
    return "--" + name.replace("_", "-")


def listed(items: Sequence[Any], shown: int = 3) -> str:
    """The first ``shown`` of ``items`` for a message, and how many more: "a, b, c and 4 more"."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(str(item) for item in items[:shown]) + more


def check_not_empty(config: Any, *names: str) -> None:
    """Options ``names`` of ``config`` (tuples, lists of values) must hold at least one value, each
    once (a value given twice ran, or timed, the same case twice)."""
    for name in names:
        if not isinstance(given := getattr(config, name), (tuple, list)):  # unset (None): the default
            continue  # (another type is check_fields' to refuse)
        values = tuple(given)
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{flag(name)} must list at least one value, each once; got {list(values)}")


def _allowed(bounds: dict[str, float]) -> str:
    return " and ".join(f"{BOUNDS[b][1]} {_number(limit)}" for b, limit in bounds.items())


def _number(value: float) -> str:
    """An int in full (a seed bound of 2**63 − 1 read 9.22337e+18 in %g), a float in %g."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def check_fields(config: Any) -> None:
    """Every number of a config (tuples element by element) must be finite and within the bounds
    its option declares; called by each config's ``__post_init__``. Raises a ValueError that
    names the option, the value and the allowed range."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        bounds = f.metadata.get("bounds", {})
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                raise ValueError(f"{flag(f.name)} must be a finite number, got {v}")
            if not all(BOUNDS[b][0](v, limit) for b, limit in bounds.items()):
                raise ValueError(f"{flag(f.name)} must be {_allowed(bounds)}, got {_number(v)}")


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(type, optional) for X, X | None, tuple[X, ...]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return annotation, False


def _parse_value(text: str, annotation: Any, name: str) -> Any:
    kind, optional = _base_type(annotation)
    if not text.strip():  # an unset shell variable, say: never read as "unset" silently
        unset = ", or `none` to leave it unset" if optional else ""
        raise ConfigError(f"{flag(name)} was given an empty value: pass a value{unset}")
    if optional and text.strip().lower() == "none":
        return None
    if typing.get_origin(kind) is tuple:
        (elem, _ellipsis) = typing.get_args(kind)
        parts = [p.strip() for p in text.split(",")]
        if not all(parts):  # "64,,32" or ",,": never read as fewer values silently
            kept = ",".join(p for p in parts if p)
            raise ConfigError(
                f"{flag(name)}: {text!r} has an empty value (two commas in a row, or one at an end); "
                f"pass values separated by single commas" + (f", e.g. {kept}" if kept else "")
            )
        return tuple(_parse_value(p, elem, name) for p in parts)
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise ConfigError(f"{flag(name)}: cannot read {text!r} as {kind.__name__}") from None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_arguments(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    """One ``--option`` per field of ``cls`` (or a positional argument for names in ``positional``),
    with its default and help text."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        arg = flag(f.name)
        kind, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata.get("help", "")
        if default is not None:
            help_text += f" (default: {shown})"
        choices = f.metadata.get("choices")
        if choices:
            help_text += f"; one of {', '.join(choices)}"
        if f.metadata.get("bounds"):
            help_text += f"; {_allowed(f.metadata['bounds'])}"
        bare = f.metadata.get("bare")
        if f.name in positional:
            parser.add_argument(f.name, nargs="?", default=None, choices=choices, help=help_text)
        elif bare is not None:
            help_text += f"; {arg} alone: {bare}"
            parser.add_argument(
                arg, nargs="?", const=bare, default=None, metavar=f.name.upper(), help=help_text
            )
            no_flag = "--no-" + arg[2:]
            parser.add_argument(
                no_flag, dest=f.name, action="store_const", const=default, help=f"{arg} {default}"
            )
        elif kind is bool:
            parser.add_argument(arg, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(arg, default=None, metavar=f.name.upper(), help=help_text)


def from_args(cls: type[C], namespace: argparse.Namespace) -> C:
    """Build ``cls`` from parsed arguments; options left out keep the dataclass defaults."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        raw = getattr(namespace, f.name, None)
        if raw is None:
            continue
        value = raw if isinstance(raw, bool) else _parse_value(raw, hints[f.name], f.name)
        if f.metadata.get("path") and isinstance(value, str):
            value = os.path.expanduser(value)
        values[f.name] = value
    return build(cls, values)


def typed_fields(cls: type, namespace: argparse.Namespace) -> set[str]:
    """The fields of ``cls`` whose option was given on the command line (left out: None)."""
    return {f.name for f in dataclasses.fields(cls) if getattr(namespace, f.name, None) is not None}


def build(cls: type[C], values: dict[str, Any]) -> C:
    """Construct and validate; unknown keys and disallowed choices are errors that list what is allowed."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for {cls.__name__}: {', '.join(unknown)}; allowed: {', '.join(fields)}"
        )
    for name, value in values.items():
        choices = fields[name].metadata.get("choices")
        items = value if isinstance(value, tuple) else (value,)
        if choices and value is not None:
            bad = [v for v in items if v not in choices]
            if bad:
                raise ConfigError(
                    f"{flag(name)}: {', '.join(map(str, bad))} not allowed; choose from {', '.join(choices)}"
                )
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err


def _json_fits(value: Any, annotation: Any) -> bool:
    """Whether a value read from JSON has the type a field declares (an int fits a float)."""
    kind, optional = _base_type(annotation)
    if value is None:
        return optional
    if typing.get_origin(kind) is tuple:
        elem = typing.get_args(kind)[0]
        return isinstance(value, (list, tuple)) and all(_json_fits(v, elem) for v in value)
    if kind in (int, float):
        return isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    return isinstance(value, kind)


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a config saved with ``to_dict`` (lists become tuples again); a value of the wrong
    type (a hand-edited ``"lr": "abc"``) is a ConfigError naming it."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object of options, got {type(data).__name__} {data!r:.40}")
    hints = _hints(cls)
    values = {}
    for key, value in data.items():
        if key in hints and not _json_fits(value, hints[key]):
            wanted = getattr(_base_type(hints[key])[0], "__name__", str(hints[key]))
            raise ConfigError(f"{key} is {value!r:.40}, not a {wanted}")
        kind = _base_type(hints[key])[0] if key in hints else None
        if isinstance(value, list) and kind is not None and typing.get_origin(kind) is tuple:
            value = tuple(value)
        values[key] = value
    return build(cls, values)


def to_dict(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def replace(config: C, **changes: Any) -> C:
    return build(type(config), {**to_dict(config), **changes})
