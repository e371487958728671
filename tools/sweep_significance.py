#!/usr/bin/env python3
"""Welch's t-tests with Holm's correction for a sweep's results.json (the section that
``fastsigclr sweep`` writes into results.md), printed as markdown:

    python tools/sweep_significance.py docs/quality/results.json
"""

import json
import sys
from pathlib import Path

from fastsigclr import significance

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/sweep_significance.py RESULTS.json")
    runs = json.loads(Path(sys.argv[1]).read_text())["runs"]
    done = [r for r in runs if r.get("status", "done") == "done"]
    print("\n".join(significance.markdown(significance.compare(done))))
