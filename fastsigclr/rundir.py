"""The run directory's life cycle: settle the settings, lock, find what it holds, begin, finish.

A run directory is in one of five states, read from its files:

- empty (or missing): a new run starts there;
- interrupted start: a run's config.json but no checkpoint, no summary and at most one finished
  epoch (the run stopped during its first epoch, or between that epoch's record and its
  checkpoint): nothing can be resumed, so a new run replaces those files (only the files a run
  writes: anything else where they are, a link or a file of the wrong kind, refuses the start);
- not a run: files of a run's names (config.json, checkpoints/, ...) without a run's config.json:
  someone else's, so every start there is refused and nothing is removed;
- checkpoint: ``--resume`` continues it (or reports it complete); a new run is refused;
- finished epochs in metrics.jsonl but no checkpoint, otherwise: refused either way (its weights
  are gone).

``--resume auto`` is for jobs that restart themselves (``torchrun --max-restarts``): the same
command continues the run when it has a checkpoint and starts it when it has none (empty, or an
interrupted start); a finished run reports that it is complete, so nothing is ever overwritten.
``settings`` turns it into ``yes`` or ``no`` from what the directory holds, so the saved config
says which happened and the ranks' check that they run alike covers that decision too.

``settings`` decides the configuration before anything else, on every rank: a new run's resolved
options, or for ``--resume`` the run's config.json with the options typed on the command line as
overrides (only those in ``RESUMABLE``; the others must agree). ``open_run`` then, on rank 0 only,
takes an exclusive ``fcntl.flock`` on ``run.lock`` inside the directory for the whole run (two
trainings on one directory would interleave metrics.jsonl), decides how the run begins and shares
that with every rank. A start that fails before ``RunDir.begin`` removes what it created.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fastsigclr import checkpoint as ckpt
from fastsigclr import distributed
from fastsigclr.config import FastSigCLRError, flag, replace, to_dict
from fastsigclr.runconfig import TrainConfig, check_trainable, read_config, uses_labels, write_config
from fastsigclr.runfiles import (
    CHECKPOINT,
    RUN_FILES,
    config_fault,
    history,
    load_checkpoint,
    read_summary,
    run_state,
    start_files,
)
from fastsigclr.runlock import LOCK, lock_dir, lock_wait
from fastsigclr.runlog import RunLog
from fastsigclr.runweights import check_record

# Options that may differ when resuming: they change neither the model, the data nor the recipe
# of the steps already taken (--deterministic: the order of the sums from the resumed step on).
# Every other option typed with --resume must equal the run's own.
RESUMABLE = frozenset(
    {
        "resume",
        "out",
        "epochs",
        "progress",
        "log_every",
        "knn_every",
        "knn_k",
        "knn_temperature",
        "tensorboard",
        "download",
        "data_dir",
        "ffcv_dir",
        "dist_loss",
        "dist_timeout",
        "compile",
        "deterministic",
        "checkpoint_every",  # when checkpoints are written, not what they hold
        "memory_budget",  # where the gpu loader may keep the images (a resumed run's machine)
    }
)


def changed_options(cfg: TrainConfig) -> set[str]:
    """The options of a config built through the API that differ from their defaults (what the
    command line's typed options are for a config built by ``fastsigclr train``)."""
    defaults = TrainConfig()
    return {name for name, value in to_dict(cfg).items() if getattr(defaults, name) != value}


def _not_a_run(path: Path) -> FastSigCLRError:
    found = ", ".join(name for name in RUN_FILES if os.path.lexists(path / name))
    return FastSigCLRError(
        f"--out {path} holds {found} but is not a fastsigclr run ({config_fault(path)}); choose a new "
        f"or empty --out, or move those files away (nothing was changed)"
    )


def _no_checkpoint(path: Path, holds: str) -> FastSigCLRError:
    if holds == "orphaned epochs":
        return FastSigCLRError(
            f"{path} records finished epochs in metrics.jsonl but has no {CHECKPOINT} to continue "
            f"from; choose another --out, or delete {path} to start over"
        )
    if holds == "not a run":
        return _not_a_run(path)
    if holds == "interrupted start":
        return FastSigCLRError(
            f"nothing to resume in {path}: no {CHECKPOINT} (the run stopped before its first epoch "
            f"ended); run the same command without --resume to start it again"
        )
    return FastSigCLRError(
        f"nothing to resume in {path}: no {CHECKPOINT}; start a run there without --resume"
    )


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _saved_config(path: Path) -> TrainConfig:
    return read_config(path, f"cannot resume {path}", "restore it, or start a new run with another --out")


def resumed_method(out: str | None) -> str | None:
    """The --method the run directory ``out`` records: a resume that does not type --method is
    checked against its loss options (a simclr run's --temperature was refused as sigclr's).
    None: no readable config.json there, or no run's (the resume then says which of them)."""
    try:
        return _saved_config(Path(out).expanduser()).method if out else None
    except FastSigCLRError:
        return None


def _merge(path: Path, cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """The run's saved settings with the typed options as overrides (resumable ones only); an
    unset --use-labels is compared as the method's default (typed on a tcl run, True was refused
    as "was None")."""
    base, typed = _saved_config(path), _typed(cfg, given)
    saved = {**{name: getattr(base, name) for name in typed}, "use_labels": uses_labels(base)}
    conflicts = [
        f"{flag(name)} was {saved[name]!r}, now {value!r}"
        for name, value in sorted(typed.items())
        if name not in RESUMABLE and saved[name] != value
    ]
    if conflicts:
        raise FastSigCLRError(
            f"cannot resume {path} with different settings: {'; '.join(conflicts)}. These change the "
            f"model, data or recipe: leave them out to keep the run's own, or start a new run with "
            f"another --out"
        )
    return replace(base, **typed, resume=cfg.resume, out=cfg.out)


def _typed(cfg: TrainConfig, given: set[str]) -> dict[str, Any]:
    """The options typed on the command line (``given``) and their values, besides --resume, --out."""
    return {name: getattr(cfg, name) for name in given if name not in ("resume", "out")}


def settings(cfg: TrainConfig, given: set[str]) -> TrainConfig:
    """The run's configuration: resolved options for a new run; for ``--resume``, the run's
    config.json with the options in ``given`` (those typed) as overrides. ``--resume auto``
    becomes ``yes`` when ``--out`` holds a checkpoint, else ``no``; a start that stopped before its
    first checkpoint starts again with its config.json's settings when only resumable options are
    typed (``--out R --resume auto`` alone restarted it with every default), else as typed (a
    typed --image-size over the saved, filled config kept the old --store-size). Reads, never writes."""
    path = Path(cfg.out or "")
    if cfg.resume == "auto":
        holds = run_state(path) if path.is_dir() else "empty"
        typed = _typed(cfg, given)
        if holds == "interrupted start" and set(typed) <= RESUMABLE:  # its own settings, typed ones over
            return check_trainable(replace(_saved_config(path), **typed, resume="no", out=cfg.out).resolved())
        cfg = replace(cfg, resume="yes" if holds == "checkpoint" else "no")
    if cfg.resume == "no":
        return check_trainable(cfg.resolved())
    if path.exists() and not path.is_dir():
        raise FastSigCLRError(f"--out {path} is a file, not a run directory; pass the run's directory")
    if not path.is_dir():
        raise FastSigCLRError(f"nothing to resume: {path} does not exist; start a run there without --resume")
    holds = run_state(path)
    if holds != "checkpoint":
        raise _no_checkpoint(path, holds)
    return _merge(path, cfg, given).resolved()


def _make_dir(path: Path) -> list[Path]:
    """Create ``path``; returns the folders this created, deepest first."""
    if path.exists() and not path.is_dir():
        raise FastSigCLRError(f"--out {path} is a file, not a directory; choose a directory path")
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FastSigCLRError(
            f"cannot create the run directory {path} ({err.strerror}); choose a writable --out"
        ) from None
    return created


@dataclass
class RunDir:
    """An open run directory. As a context manager it releases the lock at the end, and when the
    run fails before ``begin`` it removes what it created (the lock file, the folders)."""

    path: Path
    cfg: TrainConfig
    main: bool = True  # rank 0: the only rank that locks and writes
    state: dict[str, Any] | None = None  # the checkpoint this run resumes from
    complete: dict[str, Any] | None = None  # the summary of a run with no epoch left to train
    restart: bool = False  # an interrupted start, whose files ``begin`` replaces
    kept: str | None = None  # how far the checkpoint on disk has trained ("epoch 3 and 12 batches ...")
    again: str | None = None  # how an interrupted run goes on, if not by train --resume (a sweep's command)
    log: RunLog | None = None  # metrics.jsonl (and TensorBoard), from ``begin`` to ``close``
    record: dict[str, Any] = field(default_factory=dict)  # config.json's besides the config, from ``begin``
    _fd: int | None = None
    _created: list[Path] = field(default_factory=list)
    _created_lock: bool = False
    _begun: bool = False

    def _lock(self) -> FastSigCLRError | None:
        """Lock the directory; None, or why a --resume on storage this process cannot write could
        not (read-only storage, an archive: a finished run is still reported complete, which writes
        nothing and needs no lock, as nothing else can write there either)."""
        self._created_lock = not os.path.lexists(self.path / LOCK)
        try:
            self._fd = lock_dir(self.path, lock_wait(self.cfg))
        except FastSigCLRError as err:
            if self.cfg.resume == "no" or os.access(self.path, os.W_OK):
                raise
            return err
        return None

    def _open(self) -> None:
        """Rank 0: create and lock the directory, then decide how the run begins."""
        self._created = _make_dir(self.path)
        cannot_lock = self._lock()
        ckpt.refuse_links(self.path, (*RUN_FILES, CHECKPOINT))  # never read or written through
        for name in (
            ()
            if cannot_lock
            else ckpt.remove_temporaries(self.path) + ckpt.remove_temporaries(self.path / CHECKPOINT.parent)
        ):
            print(f"fastsigclr: removed {name}, left by a writer that was stopped", file=sys.stderr)
        holds = run_state(self.path)
        if self.cfg.resume == "no":
            if holds == "checkpoint":
                raise FastSigCLRError(
                    f"{self.path} already holds a run; pass --resume to continue it (add --epochs N to "
                    f"train past its end) or choose another --out"
                )
            if holds in ("orphaned epochs", "not a run"):
                raise _no_checkpoint(self.path, holds)
            self.restart = holds == "interrupted start"
            if self.restart:
                start_files(self.path)  # refused before anything goes: a file the run did not write
                note = "holds a start that stopped before its first epoch ended: starting it again"
                print(f"fastsigclr: {self.path} {note}", file=sys.stderr)
            return
        if holds != "checkpoint":
            raise cannot_lock or _no_checkpoint(self.path, holds)
        self.state = load_checkpoint(self.path)
        fixed = [f.name for f in fields(TrainConfig) if f.name not in RESUMABLE]
        check_record(self.cfg, self.state, str(self.path / CHECKPOINT), fixed)  # before any data is read
        done, epochs = self.state["epoch"], self.cfg.epochs or 0
        position = self.state.get("position")  # a mid-epoch checkpoint: inside epoch done + 1
        if done > epochs or (position and done == epochs):
            trained = _count(done, "epoch", "epochs") + (
                f" and {_count(position['batch'], 'batch', 'batches')} of epoch {done + 1}"
                if position
                else ""
            )
            least = done + 1 if position else done
            raise FastSigCLRError(
                f"{self.path} has already trained {trained} and --epochs {epochs} is fewer; pass "
                f"--epochs {least} or more"
            )
        summary = read_summary(self.path)
        if done == epochs and summary is not None and summary.get("epochs") == done:
            self.complete = {**summary, "run_dir": str(self.path)}  # where it is now, if it moved
            print(
                f"fastsigclr: {self.path} is already complete ({done} of {epochs} epochs): nothing to "
                f"train. To train it further: --resume --epochs N with N > {done}",
                file=sys.stderr,
            )
        elif cannot_lock is not None:  # a run to train further where nothing can be written
            raise cannot_lock
        else:
            step = self.state["step"]
            where = (
                f"in epoch {done + 1} after batch {position['batch']}" if position else f"after epoch {done}"
            )
            print(f"fastsigclr: resuming {self.path} {where} (step {step})", file=sys.stderr)

    def begin(self, record: dict[str, Any]) -> RunLog:
        """Training starts: an interrupted start's files go, config.json is (re)written, and the
        run's log opens (records past a resumed checkpoint dropped); ``close`` closes it."""
        if self.main:
            if self.state is not None:  # a resumed run keeps where and with what it ran before
                record = {**record, "history": history(self.path)}
            # config.json stays until it is rewritten (atomically): a kill here leaves a run's files.
            for target in start_files(self.path) if self.restart else ():  # only what a run writes
                target.rmdir() if target.is_dir() and not target.is_symlink() else target.unlink()
            write_config(self.path, self.cfg, record)
        self._begun, self.record = True, record
        resume_epoch = self.state["epoch"] if self.state is not None else None
        inside = self.state is not None and self.state.get("position") is not None  # a mid-epoch checkpoint
        self.log = RunLog(
            self.path,
            resume_epoch=resume_epoch,
            resume_step=self.state["step"] if inside else None,
            tensorboard=self.cfg.tensorboard,
            enabled=self.main,
        )
        return self.log

    def _kept_on_disk(self) -> bool:
        """Whether a checkpoint of this run (``kept``) is on disk to continue from."""
        return bool(self.kept) and (self.path / CHECKPOINT).exists()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write the checkpoint; one that cannot be written (a full disk) leaves the previous one."""
        if self.main:
            fix = (
                f"run again with --resume: the previous checkpoint ({self.kept}) is kept"
                if self._kept_on_disk()
                else "run the same command again: no epoch was checkpointed yet, so it starts over"
            )
            # Ctrl-C waits for the write (seconds at most) and then stops the run, as SIGTERM's
            # checkpoint does: a Ctrl-C inside the first write lost the epoch it was saving.
            with ckpt.held_signals((signal.SIGINT,)):
                ckpt.save_atomic(state, self.path / CHECKPOINT, fix)
                self.kept = ckpt.trained(state)["label"]  # before the held Ctrl-C: what it says is kept
            return
        self.kept = ckpt.trained(state)["label"]

    def finish(self, summary: dict[str, Any]) -> None:
        if self.main:
            ckpt.write_text_atomic(self.path / "summary.json", ckpt.json_text(summary, indent=2) + "\n")

    def close(self, failed: bool) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if failed and not self._begun:
            if self._fd is not None and self._created_lock:
                (self.path / LOCK).unlink(missing_ok=True)
            for folder in self._created:  # deepest first; a folder someone else filled stays
                try:
                    folder.rmdir()
                except OSError:
                    break
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)
        # Ctrl-C, or SIGTERM outside a step (preempt.Terminated): how to go on
        if isinstance(exc, KeyboardInterrupt) and self.main and self._begun:
            if self._kept_on_disk():
                how = self.again or f"continue with `fastsigclr train --out {self.path} --resume`"
                note = f"its checkpoint ({self.kept}) is kept; {how}"
            else:
                note = f"no checkpoint was written yet; {self.again or 'the same command starts it again'}"
            print(f"fastsigclr: {self.path} was interrupted: {note}", file=sys.stderr)


def open_run(cfg: TrainConfig, ctx: distributed.Context) -> RunDir:
    """Lock the run directory and decide how the run begins (rank 0), shared with every rank; the
    other ranks load the checkpoint a resumed run continues from. ``cfg`` comes from ``settings``."""
    run = RunDir(Path(cfg.out or ""), cfg, main=ctx.is_main)
    error: FastSigCLRError | None = None
    if ctx.is_main:
        try:
            run._open()
        except FastSigCLRError as err:
            error = err
        except BaseException:
            run.close(failed=True)
            raise
    resuming = run.state is not None and run.complete is None
    plan = distributed.share(ctx, (str(error) if error else None, run.restart, run.complete, resuming))
    message, run.restart, run.complete, resuming = plan
    if message is not None:
        run.close(failed=True)
        raise error or FastSigCLRError(message)
    if resuming and run.state is None:
        run.state = load_checkpoint(run.path)
    run.kept = ckpt.trained(run.state)["label"] if run.state is not None else None
    return run
