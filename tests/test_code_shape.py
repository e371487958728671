"""The shape of the package: no function longer than 60 lines (from its ``def`` to its last line),
no module longer than 400 lines (past either, split it by responsibility), and modules in floors
that import only downwards (docs/design.md §12)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fastsigclr"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
# docs/design.md §12: a module imports (at module level) only from its floor or the floors below.
# A package name stands for all its modules.
FLOORS = {
    **dict.fromkeys(("config", "checkpoint", "runinfo", "runlog", "optim", "pace", "preempt", "__init__"), 0),
    **dict.fromkeys(("kernels", "losses", "models", "data"), 1),
    **dict.fromkeys(("cluster", "distributed", "runconfig"), 2),
    **dict.fromkeys(("recipe", "eval", "rundir"), 3),
    **dict.fromkeys(("train", "export", "ccem"), 4),
    **dict.fromkeys(("sweep", "sweep_report", "bench"), 5),
    **dict.fromkeys(("cli", "__main__"), 6),
}


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of each function or method longer than ``limit`` lines."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = f"{prefix}{getattr(child, 'name', '')}"
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                if length > limit:
                    found.append((name, child.lineno, length))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_found() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    assert {"train.py", "recipe.py", "cli.py"} <= names


def test_no_function_over_60_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name} ({length} lines)"
        for path in _modules()
        for name, line, length in long_functions(path.read_text())
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: split them by responsibility: " + "; ".join(
        long
    )


def test_no_module_over_400_lines() -> None:
    long = [
        f"{path.relative_to(PACKAGE.parent)} ({n} lines)"
        for path in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES
    ]
    assert not long, f"modules over {MAX_FILE_LINES} lines: split them by responsibility: " + "; ".join(long)


@pytest.mark.parametrize(
    ("body_lines", "expected"),
    [(58, []), (59, [("f", 1, 61)]), (0, [])],
)
def test_long_functions_counts_from_def_to_last_line(body_lines: int, expected: list) -> None:
    source = "def f():\n" + "    x = 1\n" * body_lines + "    return 0\n"
    assert long_functions(source) == expected


def test_long_functions_names_methods_and_nested_functions() -> None:
    inner = "        def inner():\n" + "            x = 1\n" * 60
    source = (
        "class A:\n    def m(self):\n"
        + inner
        + "        return inner\n\n    def short(self):\n        pass\n"
    )
    assert long_functions(source) == [("A.m", 2, 63), ("A.m.inner", 3, 61)]


def _floor(module: str) -> int:
    """The floor of ``fastsigclr.a.b`` (or of the path a/b.py): that of ``a``."""
    top = module.removeprefix("fastsigclr").strip(".").split(".")[0] or "__init__"
    assert top in FLOORS, f"fastsigclr.{top} has no floor: add it to FLOORS here and to docs/design.md §12"
    return FLOORS[top]


def _submodule(name: str) -> str:
    """``from fastsigclr import name``: the module ``name``, or the package's own ``__init__``."""
    is_module = (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
    return f"fastsigclr.{name}" if is_module else "fastsigclr"


def upward_imports(path: Path) -> list[str]:
    """The module-level imports of ``path`` (in fastsigclr/) from a floor above its own."""
    module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    mine, found = _floor(module), []
    for node in ast.parse(path.read_text()).body:
        names = []
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("fastsigclr")
        ):
            names = [node.module] if node.module != "fastsigclr" else [_submodule(a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("fastsigclr")]
        found += [
            f"{module} (floor {mine}) imports {n} (floor {_floor(n)})" for n in names if _floor(n) > mine
        ]
    return found


def test_modules_import_only_their_floor_or_below() -> None:
    upward = [line for path in _modules() for line in upward_imports(path)]
    assert not upward, "; ".join(upward)


def test_upward_imports_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fastsigclr"
    (package / "data").mkdir(parents=True)
    (package / "data" / "x.py").write_text(
        "from fastsigclr.train import train\nfrom fastsigclr import config\n"
    )
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    assert upward_imports(package / "data" / "x.py") == [
        "data.x (floor 1) imports fastsigclr.train (floor 4)"
    ]
