"""Ruff (lint and format, 110 columns) over the whole repository, as part of the test command.
Where ruff is not installed (the GPU machine's image) these skip; in CI (CI=true) they fail."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    found = str(exe) if exe.exists() else shutil.which("ruff")
    if not found:
        message = "ruff is not installed; it comes with `pip install -e '.[test]'`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return [found]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff(args):
    out = subprocess.run([*ruff(), *args], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("ci,outcome", [(None, pytest.skip.Exception), ("true", pytest.fail.Exception)])
def test_missing_ruff_skips_except_in_ci(ci, outcome, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    if ci:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="ruff is not installed"):
        ruff()
