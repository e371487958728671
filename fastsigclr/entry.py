"""The `fastsigclr` command: ``fastsigclr.cli.main`` behind an interrupt handler that is in place
before torch and the loaders are imported (about 2 s), so a Ctrl-C at any moment prints
``interrupted`` and exits 130 instead of a traceback from inside an import. SIGTERM outside the
trainer's steps is told the same way (``preempt.terminate_raises``), exiting 143."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from typing import Any


def _import_torch() -> None:
    """Import torch (and numpy, which torch's C code imports) with SIGINT held, then let a Ctrl-C
    that came meanwhile land. torch swallows an exception raised inside numpy's import: a Ctrl-C
    there was lost (the run went on to the end, status 0) or left numpy half-imported
    (RecursionError, "module 'numpy' has no attribute 'ndarray'", an abort from pybind11)."""
    hold = getattr(signal, "pthread_sigmask", None)  # POSIX; elsewhere imported as it comes
    held = hold(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if hold else None
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
    finally:
        if hold:
            hold(signal.SIG_SETMASK, held)  # a pending SIGINT is delivered here: KeyboardInterrupt


def main() -> int:
    from fastsigclr.preempt import terminate_raises  # plain Python: no torch

    try:
        with terminate_raises():
            _import_torch()
            from fastsigclr.cli import main as run

            return run()
    except KeyboardInterrupt as exc:  # cli.main handles its commands' own; this is the start-up's
        return interrupted(exc)


def console() -> int:
    """The console script (and ``python -m fastsigclr``): ``main``, then, the command's work done and
    written, a Ctrl-C or SIGTERM while the interpreter shuts down (torch's exit handlers take about
    0.6 s) ends the process at once with the command's own status. It ended a finished run with
    130 (or −15 after SIGTERM), and sometimes a traceback from an exit handler; and a preempted
    run, which leaves by SystemExit(75) as a one-line error leaves by SystemExit(2), with 143."""
    try:
        status = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        _keep_status(code)
        _leave_distributed(code)
        raise
    _keep_status(status)
    _leave_distributed(status)
    return status


def _leave_distributed(status: int) -> None:
    """End a process that joined a process group (a torchrun rank) once its exit handlers have run,
    without the interpreter's finalization. A DDP model keeps its gloo process group, and with it
    gloo's worker threads, alive past ``destroy_process_group`` (torch 2.13: the threads outlive the
    module, the group and a gc); a worker still releasing a finished collective (all_gather_object's
    tensors, created in Python) as finalization begins takes the GIL, is ended by the interpreter,
    and the unwind through a noexcept frame aborts the process: a finished rank killed by SIGABRT
    ("terminate called without an active exception"), which torchrun reports as the whole run
    failing (about 1 in 100 two-rank runs on a loaded 2-core CPU; its core dump shows exactly this).
    Every file is written and closed by then, and the exit handlers (multiprocessing's, logging's,
    temporary folders') still run."""
    cluster = sys.modules.get("fastsigclr.cluster")
    if cluster is None or not getattr(cluster, "joined", False):
        return
    import atexit

    atexit._run_exitfuncs()
    _flush_streams()
    os._exit(status)


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or None (started with >&-)
            stream.flush()


def _keep_status(status: int) -> None:
    """From now on SIGINT and SIGTERM end the process at once with ``status``."""
    if threading.current_thread() is not threading.main_thread():
        return

    def finished(signum: int, frame: Any) -> None:
        _flush_streams()
        os._exit(status)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, finished)


def interrupted(exc: KeyboardInterrupt | None = None) -> int:
    """The exit status after Ctrl-C, 130, having said "interrupted" (after SIGTERM, ``Terminated``:
    143 and "terminated (SIGTERM)"): once per node under torchrun, where a Ctrl-C in the terminal
    reaches every rank (by LOCAL_RANK 0, as ``config.alike`` errors)."""
    from fastsigclr.config import speaks_for_node  # plain Python: no torch
    from fastsigclr.preempt import Terminated

    terminated = isinstance(exc, Terminated)
    if speaks_for_node():
        print("terminated (SIGTERM)" if terminated else "interrupted", file=sys.stderr)
    return Terminated.exit_status if terminated else 130


# What writing standard output raises when it cannot: its reader left, a full disk or quota, EIO
STDOUT_ERRORS = (errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EIO)


def flush_stdout() -> None:
    """Flush standard output, which is None when the command was started with it closed (``>&-``)."""
    if sys.stdout is not None:
        sys.stdout.flush()


def output_failed(err: OSError) -> int:
    """The exit status when ``err`` came from writing standard output, said in one line: 141
    (128 + SIGPIPE, as a shell reports it) for a reader that left (`info | head`), 74 (EX_IOERR)
    for a full disk or an I/O error; ``err`` raised again, untouched, when it was another file's
    (one with a name, or of another kind). A write that failed leaves nothing to flush, so a newline
    tries stdout again; what it still holds then goes to /dev/null, sparing a second error as the
    interpreter exits."""
    if err.filename is not None or err.errno not in STDOUT_ERRORS or sys.stdout is None:
        raise err
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except OSError as again:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(again, BrokenPipeError):
            return 141
        print(
            f"fastsigclr: error: cannot write to standard output ({again.strerror or again}); the command "
            f"stopped there (the files it writes are whole or absent, never cut); send its output elsewhere",
            file=sys.stderr,
        )
        return 74
    raise err
