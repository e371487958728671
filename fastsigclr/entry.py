"""The `fastsigclr` command: ``fastsigclr.cli.main`` behind an interrupt handler that is in place
before torch and the loaders are imported (about 2 s), so a Ctrl-C at any moment prints
``interrupted`` and exits 130 instead of a traceback from inside an import."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from fastsigclr.cli import main as run

        return run()
    except KeyboardInterrupt:  # cli.main handles its commands' own; this is the start-up's
        print("interrupted", file=sys.stderr)
        return 130
