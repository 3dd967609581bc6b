"""``tools.import_graph`` finds cycles and upward imports in a package made up here."""

from __future__ import annotations

import sys
from pathlib import Path

# tools/ is repository tooling, not installed: importable from the repository root, which
# pytest's --import-mode=importlib does not put on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.import_graph import import_graph  # noqa: E402


def package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "freezetune"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_a_clean_package_has_no_cycle_and_no_upward_import(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        {
            "config/__init__.py": "from freezetune.config.load import load_config\n",
            "config/load.py": "import yaml\n",
            "plan/__init__.py": "",
            "plan/rules.py": "from freezetune.config import load_config\nfrom freezetune import config\n",
        },
    )
    graph = import_graph(pkg)
    assert graph.cycles() == []
    assert graph.upward() == []
    assert graph.package_edges() == {"config": set(), "plan": {"config"}}
    assert {(i.importer, i.imported) for i in graph.imports} == {
        ("freezetune.config", "freezetune.config.load"),
        ("freezetune.plan.rules", "freezetune.config"),
    }


def test_an_in_function_cycle_is_found(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        {
            "train/__init__.py": "",
            "train/run.py": "from freezetune.train.trainer import Trainer\n",
            "train/trainer.py": "def f():\n    from freezetune.train.run import run\n",
        },
    )
    graph = import_graph(pkg)
    assert graph.cycles() == [["freezetune.train.run", "freezetune.train.trainer"]]
    inner = [i for i in graph.imports if i.importer == "freezetune.train.trainer"]
    assert [(i.imported, i.line, i.in_function) for i in inner] == [("freezetune.train.run", 2, True)]


def test_a_type_checking_import_of_a_higher_layer_is_upward(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        {
            "config/__init__.py": "",
            "config/load.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from freezetune.train.run import run\n"
            ),
            "train/__init__.py": "",
            "train/run.py": "import freezetune.config.load as load\n",
            "data/__init__.py": "",
            "data/x.py": "from freezetune.models import build\n",
            "models/__init__.py": "",
            "models/build.py": "",
        },
    )
    graph = import_graph(pkg)
    assert [(i.importer, i.imported) for i in graph.upward()] == [
        ("freezetune.config.load", "freezetune.train.run"),  # config is below train
        ("freezetune.data.x", "freezetune.models.build"),  # one layer: data and models stay apart
    ]
    assert graph.cycles() == [["freezetune.config.load", "freezetune.train.run"]]


def test_each_cycle_is_found_once_and_a_chain_into_one_is_not_part_of_it(tmp_path: Path) -> None:
    pkg = package(
        tmp_path,
        {
            "plan/__init__.py": "",
            "plan/a.py": "from freezetune.plan.b import x\n",
            "plan/b.py": "from freezetune.plan.c import x\n",
            "plan/c.py": "from freezetune.plan.a import x\n",
            "plan/d.py": "from freezetune.plan.a import x\n",  # into the cycle, not on it
            "train/__init__.py": "",
            "train/e.py": "from freezetune.train.f import x\n",
            "train/f.py": "def g():\n    from freezetune.train.e import x\n",
        },
    )
    assert sorted(import_graph(pkg).cycles()) == [
        ["freezetune.plan.a", "freezetune.plan.b", "freezetune.plan.c"],
        ["freezetune.train.e", "freezetune.train.f"],
    ]
