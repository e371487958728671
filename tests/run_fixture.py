"""A finished tiny run (CIFAR-10, ResNet-18 width 8, 64 images, one epoch) that tests copy and
damage, and the check of a command's one-line error."""

import shutil
from pathlib import Path

import pytest

from fastsigclr.cli import main


def tiny_args(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        *(
            f"train --dataset cifar10 --data-dir {data_dir} --device cpu --width 8 --proj-dims 64,32 "
            f"--limit-train 64 --limit-test 50 --batch-size 32 --epochs 1 --log-every 1 --knn-every 0 "
            f"--no-progress --no-tensorboard --out {out}"
        ).split(),
        *extra,
    ]


@pytest.fixture(scope="module")
def finished_run(cifar10_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(tiny_args(cifar10_dir, out)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def fails_with(args: list[str], capsys) -> str:
    """The error line of a command that must fail with exit status 2 (notes may come before it)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("fastsigclr: error: ") and "error" not in "".join(err.splitlines()[:-1]), err
    return last
