"""Files that cannot be decoded: listed with their path and reason, left out with a count up to
``--max-broken`` of a split (header failures and later ones together), beyond which the run
stops with one line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from fastsigclr.config import alike, option, speaks_for_node
from fastsigclr.data.info import DatasetError

# Broken files listed in full up to this many; the rest are counted.
LIST_BROKEN = 20


def max_broken_option() -> Any:
    """--max-broken, the one definition: of `fastsigclr train` and of `data write-ffcv`, which must
    leave out the same files for a run to find the .beton it wrote."""
    return option(
        0.01,
        "largest fraction of images that cannot be decoded to list and skip; above it the run stops",
        ge=0,
        le=1,
    )


def skipped_line(what: str, count: int, max_broken: float) -> str:
    """The line that says ``count`` undecodable images of ``what`` are left out, within the limit."""
    those = "that image" if count == 1 else f"those {count} images"
    return f"{what}: skipped {those} (at most --max-broken {max_broken:g})"


def report_broken(
    what: str,
    broken: Sequence[tuple[str, str]],
    total: int,
    max_broken: float,
    already: int = 0,
    fix: str | None = None,
    limit: bool = True,
) -> None:
    """List the files that cannot be decoded on stderr (path and reason); a DatasetError when more
    than ``max_broken`` of the ``total`` are, counting the ``already`` left out by an earlier pass
    (the header pass, whose files were listed then): the limit is on the split, not on each pass.
    ``limit`` False: only the list (a rank's share, whose limit the ranks check together). A pass
    over the whole split meets the same files in every process of a node: one lists them."""
    if not broken:
        return
    said = not limit or speaks_for_node()
    lines = [f"  {path}: {reason}" for path, reason in broken[:LIST_BROKEN]]
    if len(broken) > LIST_BROKEN:
        lines.append(f"  ... and {len(broken) - LIST_BROKEN} more")
    count = len(broken) + already
    earlier = f" (and {already} more listed above)" if already else ""
    if said:
        print(f"{what}: {len(broken)} of {total} images cannot be decoded{earlier}:\n" + "\n".join(lines),
              file=sys.stderr)  # fmt: skip
    if not limit:
        return
    if error := over_limit(what, count, total, max_broken, broken[0][0], fix):
        raise error
    if said:
        print(skipped_line(what, count, max_broken), file=sys.stderr)


def over_limit(
    what: str, count: int, total: int, max_broken: float, first: str | None = None, fix: str | None = None
) -> DatasetError | None:
    """The error when ``count`` undecodable images of ``total`` are more than ``max_broken``: raised
    alike by every process of a node (the header pass reads the node's files; the ranks check
    what they met as they trained on the union of their finds)."""
    share = count / max(total, 1)
    if share <= max_broken:
        return None
    error = DatasetError(
        f"{what}: {count} of {total} images ({share:.1%}) cannot be decoded"
        f"{f' (first: {first})' if first else ''}, more than {'' if fix else '--max-broken '}{max_broken:g}: "
        f"{fix or 'repair or delete the files listed above, or raise --max-broken'}"
    )
    return alike(error)


# A checkpoint's records of sample ids: what each holds, and what a damaged one costs.
RECORDED_IDS = {
    # left out as they trained (DALI meets a broken file only as it reads it)
    "left_out": (
        "the images earlier sessions left out",
        "summary.json's train_images leaves out only those met from now on",
    ),
    # could not decode before training (the gpu loader decodes up front)
    "undecoded": (
        "the images earlier sessions could not decode",
        "a file among them that decodes now is trained on",
    ),
}


def recorded_ids(state: dict[str, Any] | None, key: str, images: int, announce: bool = True) -> set[int]:
    """The sample ids of a checkpoint ``state``'s ``key`` record (``RECORDED_IDS``), read as
    untrusted. None, or no record (a new run, an older fastsigclr's checkpoint): none. A record that
    is not a list of ids of the split's ``images``: none, and a line that says so (``announce``)."""
    record = None if state is None else state.get(key)
    if record is None:
        return set()
    if isinstance(record, list) and all(type(i) is int and 0 <= i < images for i in record):
        return set(record)
    what, cost = RECORDED_IDS[key]
    if announce:
        print(
            f"note: the checkpoint's record of {what} is damaged (not a list of ids of the {images} "
            f"images): {cost}",
            file=sys.stderr,
        )
    return set()
