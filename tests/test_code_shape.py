"""The shape of the code: no function longer than 60 lines (from its ``def`` to its last line), no
module longer than 400 lines (past either, split it by responsibility), in ``fastsigclr/``,
``kernels/`` and ``tools/``; and the package's modules in floors that import only downwards
(docs/design.md §12).

A ``@triton.jit`` function may have up to 100 lines: a kernel body is one function by design (a
launch runs one), and today's longest is 94 lines (``kernels/ntxent.py`` ``_ntxent_bwd_kernel``).
``KNOWN_LONG`` lists the functions past their limit while ``kernels/`` is being rewritten, each at
most its length today; an entry that is no longer long must be removed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastsigclr"
CHECKED = ("fastsigclr", "kernels", "tools")
MAX_FUNCTION_LINES = 60
MAX_KERNEL_LINES = 100  # a @triton.jit body (see the module docstring)
MAX_FILE_LINES = 400
# path:function -> its length today, the most it may have until it is split (kernels/ rewrite).
KNOWN_LONG: dict[str, int] = {}
# docs/design.md §12: a module imports (at module level) only from its floor or the floors below.
# A package name stands for all its modules.
FLOORS = {
    **dict.fromkeys(
        ("config", "checkpoint", "filetype", "runinfo", "runlog", "optim", "pace", "preempt", "significance"),
        0,
    ),
    **dict.fromkeys(("determinism", "autograd_guard", "__init__"), 0),
    **dict.fromkeys(("kernels", "losses", "models", "data"), 1),
    **dict.fromkeys(("cluster", "distributed", "runconfig", "runweights"), 2),
    **dict.fromkeys(("recipe", "runmodel", "eval", "knn", "rundir", "runfiles", "runlock"), 3),
    **dict.fromkeys(("train", "divergence", "export", "ccem"), 4),
    **dict.fromkeys(("sweep", "sweep_checks", "sweep_report", "bench"), 5),
    **dict.fromkeys(("cli", "cli_args", "entry", "__main__"), 6),
}


def _is_kernel(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(ast.unparse(d) in ("triton.jit", "jit") for d in node.decorator_list)


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of each function or method longer than ``limit`` lines
    (``MAX_KERNEL_LINES`` for a ``@triton.jit`` function)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = f"{prefix}{getattr(child, 'name', '')}"
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                if length > (MAX_KERNEL_LINES if _is_kernel(child) else limit):
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


def _checked() -> list[Path]:
    return sorted(p for folder in CHECKED for p in (ROOT / folder).rglob("*.py"))


def test_the_package_is_found() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    assert {"train.py", "recipe.py", "cli.py"} <= names
    folders = {p.relative_to(ROOT).parts[0] for p in _checked()}
    assert folders == set(CHECKED)


def _long() -> dict[str, tuple[int, int]]:
    """path:function -> (first line, length) of every function past its limit."""
    return {
        f"{path.relative_to(ROOT).as_posix()}:{name}": (line, length)
        for path in _checked()
        for name, line, length in long_functions(path.read_text())
    }


def test_no_function_over_60_lines() -> None:
    long = [
        f"{key.replace(':', f':{line} ', 1)} ({length} lines)"
        for key, (line, length) in _long().items()
        if length > KNOWN_LONG.get(key, 0)
    ]
    assert not long, (
        f"functions over {MAX_FUNCTION_LINES} lines ({MAX_KERNEL_LINES} for a @triton.jit kernel): "
        "split them by responsibility: " + "; ".join(long)
    )


def test_known_long_functions_are_still_long() -> None:
    stale = sorted(set(KNOWN_LONG) - set(_long()))
    assert not stale, f"no longer past their limit: remove them from KNOWN_LONG: {stale}"


def test_no_module_over_400_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)} ({n} lines)"
        for path in _checked()
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


@pytest.mark.parametrize(("body_lines", "expected"), [(98, []), (99, [("k", 2, 101)])])
def test_a_triton_kernel_may_have_100_lines(body_lines: int, expected: list) -> None:
    source = "@triton.jit\ndef k():\n" + "    x = 1\n" * body_lines + "    return 0\n"
    assert long_functions(source) == expected
    assert long_functions(source.replace("@triton.jit\n", "@other\n")) == [("k", 2, body_lines + 2)]


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


def test_the_slow_table_names_tests_that_exist() -> None:
    """Every entry of tests/slow_tests.py's SLOW is a test function of the file it names."""
    import slow_tests

    tests = ROOT / "tests"
    missing = []
    for entry in slow_tests.SLOW:
        file, function = entry.split("[")[0].split("::")
        path = tests / file
        tree = ast.parse(path.read_text()) if path.is_file() else ast.Module(body=[], type_ignores=[])
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if function not in names:
            missing.append(entry)
    assert not missing, f"tests/slow_tests.py names tests that do not exist: {missing}"
