"""The package's shape: no import cycle (in-function imports included), no lower layer
importing a higher one, every subpackage listed in a layer and in pyproject.toml, and
docs/architecture.md generated from the code as it is."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import freezetune

ROOT = Path(__file__).resolve().parents[1]
# tools/ is repository tooling, not installed: importable from the repository root, which
# pytest's --import-mode=importlib does not put on sys.path.
sys.path.insert(0, str(ROOT))
from tools.import_graph import LAYERS, import_graph  # noqa: E402

PACKAGE = Path(freezetune.__file__).parent


def test_no_import_cycle() -> None:
    assert import_graph(PACKAGE).cycles() == []


def test_no_lower_layer_imports_a_higher_one() -> None:
    bad = [f"{i.importer}:{i.line} imports {i.imported}" for i in import_graph(PACKAGE).upward()]
    assert bad == []


def test_every_subpackage_has_a_layer_and_is_packaged() -> None:
    subpackages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(n for layer in LAYERS for n in layer) == subpackages
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted(["freezetune", "freezetune.configs", *(f"freezetune.{s}" for s in subpackages)])


def test_every_subpackage_re_exports_its_public_names() -> None:
    import importlib

    for layer in LAYERS:
        for name in layer:
            module = importlib.import_module(f"freezetune.{name}")
            assert module.__doc__, name
            assert module.__all__ and all(hasattr(module, n) for n in module.__all__), name


def test_architecture_doc_is_current() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/architecture.py", "--check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_freezetune_its_config_and_help_load_no_torch() -> None:
    # One fresh interpreter (what a user's `freezetune --help` is): torch's import costs seconds.
    code = (
        "import runpy, sys\n"
        "import freezetune, freezetune.config\n"
        "sys.argv = ['freezetune', '--help']\n"
        "try:\n"
        "    runpy.run_module('freezetune', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm'))\n"
        "print('heavy:', heavy[:5])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: freezetune COMMAND")
    assert done.stdout.rstrip().splitlines()[-1] == "heavy: []"


def test_the_config_layer_imports_no_framework_and_no_users_code() -> None:
    # Not even inside a function: the config is syntax, types, bounds and inheritance; what the model
    # and the data say is asked by freezetune.checks, above freezetune.models and freezetune.data.
    banned = ("torch", "torchvision", "timm", "importlib")
    found = []
    for path in sorted((PACKAGE / "config").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in banned]
    assert found == []


MAX_FUNCTION_LINES = 80  # ruff holds complexity and parameters (pyproject.toml); lines are held here


def long_functions(paths: list[Path]) -> list[str]:
    """``file:line name: N lines`` for every function (nested ones too) longer than the limit."""
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    return long


def test_no_function_is_longer_than_80_lines() -> None:
    paths = [p for folder in (PACKAGE, ROOT / "scripts", ROOT / "tools") for p in sorted(folder.rglob("*.py"))]
    assert len(paths) > 100
    assert long_functions(paths) == []


def test_the_long_function_check_finds_a_nested_one(tmp_path: Path) -> None:
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def outer():\n    def inner():\n{body}        return 0\n    return inner\n")
    assert long_functions([path]) == ["long.py:1 outer: 84 lines", "long.py:2 inner: 82 lines"]
