"""What `bench plot` reads from a results file, checked before it draws: the file is untrusted (a
hand-edited or damaged one plotted ``"median_ms": "abc"`` or an empty ``results`` and exited 0)."""

from __future__ import annotations

import math
from typing import Any


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _bytes_or_none(v: Any) -> bool:
    return v is None or (
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    )


def _text(v: Any) -> bool:
    return isinstance(v, str)


# A field's check: (test, what it must be).
COUNT = (_count, "a positive whole number")
POSITIVE = (_positive, "a positive number")
TEXT = (_text, "a string")
BYTES = (_bytes_or_none, "a number of bytes or null")
TIMES = {"median_ms": POSITIVE, "p20_ms": POSITIVE, "p80_ms": POSITIVE}
# Each kind's rows: the fields its plot reads. loss and augment plot the rows of status "ok".
ROWS = {
    "loss": {"provider": TEXT, "rows": COUNT, "dim": COUNT, "dtype": TEXT, "median_ms": POSITIVE,
             "peak_extra_bytes": BYTES},
    "augment": {"backend": TEXT, "size": COUNT, "views_per_s": POSITIVE, "p20_views_per_s": POSITIVE,
                "p80_views_per_s": POSITIVE},
    "dist": {"provider": TEXT, "rows": COUNT, **TIMES, "overhead_vs_plain": POSITIVE},
}  # fmt: skip
TRAIN_PARTS = ("full_step", "model_step", "augment")
TRAIN_FIELDS = {**TIMES, "img_per_s": POSITIVE, "views_per_s": POSITIVE, "reps": COUNT}


def _check(record: Any, fields: dict[str, tuple], where: str) -> str | None:
    """The first of ``fields`` that ``record`` (at ``where``) lacks or holds of the wrong kind."""
    if not isinstance(record, dict):
        return f"{where} is {_shown(record)}, not an object"
    for name, (test, what) in fields.items():
        if name not in record:
            return f"{where}.{name} is missing"
        if not test(record[name]):
            return f"{where}.{name} is {_shown(record[name])}, not {what}"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def problem(payload: dict[str, Any]) -> str | None:
    """What in a results payload of a plotted kind its plot cannot draw, naming the field, or None."""
    kind, results = payload["benchmark"], payload.get("results")
    if kind == "train":
        found = _check(payload.get("config"), {"batch_size": COUNT}, "config") or _check(
            payload, {"full_over_model": POSITIVE, "augment_path": TEXT}, "the file"
        )
        if found or not isinstance(results, dict):
            return found or f"results is {_shown(results)}, not an object"
        return next((p for part in TRAIN_PARTS if (p := _check(results.get(part), TRAIN_FIELDS,
                                                                   f"results.{part}"))), None)  # fmt: skip
    if not isinstance(results, list) or not results:
        return f"results is {_shown(results)}, not a list of measured cases"
    if kind == "dist":
        found = _check(payload.get("config"), {"dim": COUNT, "dtype": TEXT}, "config")
        if found:
            return found
    measured = 0
    for i, row in enumerate(results):
        if not isinstance(row, dict):
            return f"results[{i}] is {_shown(row)}, not an object"
        status = row.get("status", "ok") if kind == "dist" else row.get("status")
        if not _text(status):
            return f"results[{i}].status is {_shown(status)}, not a string"
        if status == "ok":
            measured += 1
            found = _check(row, ROWS[kind], f"results[{i}]")
            if found:
                return found
    return None if measured else "results has no measured case (none of status ok)"
