#!/usr/bin/env python3
"""Redraw plots from benchmark results JSON files; the same as ``fastsigclr bench plot FILE...``."""

import sys

from fastsigclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "plot", *sys.argv[1:]]))
