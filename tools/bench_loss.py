#!/usr/bin/env python3
"""Pairwise sigmoid loss microbenchmark; the same as ``fastsigclr bench loss`` (see --help)."""

import sys

from fastsigclr.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "loss", *sys.argv[1:]]))
