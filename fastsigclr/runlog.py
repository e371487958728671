"""The run's record: metrics.jsonl (one JSON object per line) and TensorBoard when installed."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from fastsigclr.checkpoint import WriteError, json_text, open_nofollow, write_text_atomic
from fastsigclr.config import FastSigCLRError, listed
from fastsigclr.filetype import json_loads

# What a record that cannot be appended (a full disk) asks for: the records past the last
# checkpoint are dropped on resume and written again as the resumed run recomputes them.
LOG_FIX = (
    "run again with --resume auto: it continues from the last checkpoint (or starts over when there is "
    "none) and writes the records after it again"
)


class RunLog:
    """Appends records to ``metrics.jsonl``; on resume, first drops the records past the
    checkpoint (those of the epoch it stopped in, and a line cut short by a kill): the resumed run
    writes them again as it recomputes those steps, so the file reads as if the run had never
    stopped, one record per step. Disabled (ranks other than 0 of a distributed run), it writes
    nothing."""

    def __init__(
        self,
        run_dir: Path,
        *,
        resume_epoch: int | None = None,
        resume_step: int | None = None,
        tensorboard: bool = True,
        enabled: bool = True,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.fd: int | None = None
        self.tb = None
        if not enabled:
            return
        if resume_epoch is not None:
            # A checkpoint inside an epoch (resume_step) keeps that epoch's records up to its step.
            lines = read_lines(self.path) if os.path.lexists(self.path) else []
            self._set_aside_damaged(lines)
            kept = [
                line
                for line in lines
                if isinstance(line, str)
                and (epoch := _epoch_of(line)) is not None
                and (epoch < resume_epoch or (resume_step is not None and _step_of(line) <= resume_step))
            ]
            self._note_missing(kept, resume_epoch)
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        # Lives as long as the run; a metrics.jsonl that is a symlink is refused, never appended to.
        # Unbuffered appends: a record is on disk when write returns, and a failed one can be cut back.
        self.fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except BaseException as err:  # the fd is no one else's to close
                if not isinstance(err, ImportError):
                    self.close()
                    raise
                self.tb = None
                print(
                    "note: TensorBoard logging is off (the tensorboard package is not installed: "
                    "pip install 'fastsigclr[tensorboard]'); metrics.jsonl has every record; "
                    "--no-tensorboard silences this",
                    file=sys.stderr,
                )

    def _set_aside_damaged(self, lines: list[str | bytes]) -> None:
        """Lines before the last that are not JSON records (damaged on disk, or edited; bytes that
        are not UTF-8) are appended to metrics.jsonl.damaged as they were and named on stderr: the
        resume keeps nothing it cannot read in the log, and loses nothing. The last line may be
        cut short by a kill: it is dropped, as the resumed run writes that record again."""
        damaged = [
            (n, line)
            for n, line in enumerate(lines[:-1], 1)
            if isinstance(line, bytes) or (line.strip() and _epoch_of(line) is None)
        ]
        if not damaged:
            return
        side = self.path.with_name(self.path.name + ".damaged")
        # Appended, never through a link: a metrics.jsonl.damaged that is one is refused.
        with os.fdopen(open_nofollow(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as f:
            f.writelines(
                b"%d\t%s\n" % (n, line if isinstance(line, bytes) else line.encode()) for n, line in damaged
            )
        numbers = ", ".join(str(n) for n, _ in damaged)
        print(
            f"fastsigclr: {self.path} line(s) {numbers} are not JSON records: moved to {side} (with their "
            f"line numbers); the other records are kept",
            file=sys.stderr,
        )

    def _note_missing(self, kept: list[str], resume_epoch: int) -> None:
        """Say which epochs the checkpoint has trained that metrics.jsonl holds no record of
        (deleted, or lines cut out): the resume does not recompute them, and went on without a word."""
        records = [json_loads(line) for line in kept]  # each a JSON object (_position took it)
        recorded = {r.get("epoch", 0) for r in records if r.get("kind") == "epoch"}
        missing = [e + 1 for e in range(resume_epoch) if e not in recorded]
        if missing:
            print(
                f"fastsigclr: {self.path} holds no record of epoch(s) {listed(missing, 5)}, which the "
                f"checkpoint has trained: those records are lost (the run goes on from its checkpoint)",
                file=sys.stderr,
            )

    def write(self, record: dict[str, Any], step: int | None = None) -> None:
        if self.fd is None:
            return
        data, start = (json_text(record) + "\n").encode(), os.fstat(self.fd).st_size
        try:
            _append(self.fd, data)
        except OSError as err:  # a full disk: no line cut short is left for the resume to meet
            with contextlib.suppress(OSError):  # the resume drops a last line cut short anyway
                os.ftruncate(self.fd, start)
            raise WriteError(self.path, err, LOG_FIX) from None
        if self.tb is not None and step is not None:
            prefix = record.get("kind", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def __del__(self) -> None:  # a log dropped without close() (a failed start) keeps no fd open
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _append(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may take part of it)."""
    while data:
        data = data[os.write(fd, data) :]


def _position(line: str) -> tuple[int, int] | None:
    """A record's epoch and step; None for a blank line, one cut short by a kill, or one whose
    epoch or step is not a whole number (edited by hand): such a line is not a record."""
    try:
        record = json_loads(line)
        epoch, step = record.get("epoch", 0), record.get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return None
    whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (epoch, step))
    return (epoch, step) if whole else None


def _epoch_of(line: str) -> int | None:
    """A record's epoch; None where ``_position`` finds no record."""
    position = _position(line)
    return None if position is None else position[0]


def _step_of(line: str) -> int:
    """A record's step (a line ``_epoch_of`` accepted)."""
    position = _position(line)
    assert position is not None
    return position[1]


def read_lines(path: Path) -> list[str | bytes]:
    """The lines of a metrics.jsonl, never through a link: each decoded as UTF-8, or its bytes
    where it is not (a damaged disk block, which raised UnicodeDecodeError from the resume and the
    sweep: no record, as a line that is not JSON). One that is not a file is one line."""
    try:
        with os.fdopen(open_nofollow(path), "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise FastSigCLRError(
            f"{path} is a folder, not the run's records: move it out of the run directory and run again "
            f"(the records from the last checkpoint on are written anew)"
        ) from None
    lines: list[str | bytes] = []
    for raw in data.splitlines():
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw)
    return lines


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl (``read_lines``), in order; other lines (one cut short
    by a kill, damaged, edited) are left out; none when there is no such file."""
    records = []
    for line in read_lines(path) if os.path.lexists(path) else ():
        try:
            record = json_loads(line)
        except ValueError:  # JSONDecodeError, and UnicodeDecodeError of bytes
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return read_records(Path(run_dir) / "metrics.jsonl")
