"""The project's documents stand alone: what the code and README cite lives in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.compile(r"docs/design\.md §(\d+)")


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # a copy without .git: every file
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    keep = {".py", ".md", ".toml", ".sh", ".txt", ".cfg", ".yml", ".yaml", ""}
    return [ROOT / n for n in names if (ROOT / n).suffix in keep and (ROOT / n).is_file()]


def test_no_citation_of_a_design_file_outside_the_repository():
    offenders = []
    for path in _tracked_text_files():
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"\bDESIGN(\.md)?\b", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "cite docs/design.md instead:\n" + "\n".join(offenders)


def test_cited_design_sections_exist():
    headings = {
        int(m.group(1))
        for m in re.finditer(r"^## (\d+)\.", (ROOT / "docs/design.md").read_text(), re.MULTILINE)
    }
    missing = []
    for path in _tracked_text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in SECTION.finditer(line):
                if int(m.group(1)) not in headings:
                    missing.append(f"{path.relative_to(ROOT)}:{n}: §{m.group(1)}")
    assert headings, "docs/design.md has no numbered sections"
    assert not missing, "sections cited but absent from docs/design.md:\n" + "\n".join(missing)
