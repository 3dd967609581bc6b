"""freezetune's own import graph, read from the source with ``ast`` (nothing is
imported): every ``import`` and ``from ... import`` of a freezetune module, at module
level, inside functions and under ``TYPE_CHECKING`` alike.

tests/test_architecture.py fails on an import cycle or on a lower layer importing a
higher one; scripts/architecture.py writes docs/architecture.md from the same graph."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LAYERS", "Import", "ImportGraph", "architecture_markdown", "import_graph", "layer_of", "subpackage"]

# Lowest first. A module may import its own subpackage and any *lower* layer; packages
# on one layer (data and models; train and infer) stay independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils",),
    ("config",),
    ("plan",),
    ("measure",),
    ("record",),
    ("data", "models"),
    ("checks",),
    ("train", "infer"),
    ("report",),
    ("apps",),
    ("bench",),
    ("cli",),
)


def layer_of(subpackage: str) -> int | None:
    """The rank of a subpackage in :data:`LAYERS` (None for one not listed)."""
    return next((i for i, names in enumerate(LAYERS) if subpackage in names), None)


@dataclass(frozen=True)
class Import:
    """One import statement of one freezetune module."""

    importer: str  # dotted module name, e.g. freezetune.train.runner
    imported: str  # the freezetune module or package it loads
    line: int
    in_function: bool


@dataclass(frozen=True)
class ImportGraph:
    """Every freezetune module and every import between them."""

    modules: tuple[str, ...]
    imports: tuple[Import, ...]

    def edges(self) -> dict[str, set[str]]:
        """Module -> the freezetune modules it imports."""
        out: dict[str, set[str]] = {m: set() for m in self.modules}
        for imp in self.imports:
            out[imp.importer].add(imp.imported)
        return out

    def cycles(self) -> list[list[str]]:
        """Every import cycle, each as the modules around it (one per strongly connected group)."""
        edges = self.edges()
        return [
            sorted(group)
            for group in _strongly_connected(self.modules, edges)
            if len(group) > 1 or group[0] in edges.get(group[0], ())
        ]

    def upward(self) -> list[Import]:
        """Imports that go from a lower layer to a higher one, or across packages of one layer."""
        bad = []
        for imp in self.imports:
            a, b = subpackage(imp.importer), subpackage(imp.imported)
            if a is None or b is None or a == b:
                continue  # the package root, or within one subpackage
            la, lb = layer_of(a), layer_of(b)
            if la is None or lb is None or lb >= la:
                bad.append(imp)
        return bad

    def package_edges(self) -> dict[str, set[str]]:
        """Subpackage -> the other subpackages its modules import."""
        out: dict[str, set[str]] = {}
        for imp in self.imports:
            a, b = subpackage(imp.importer), subpackage(imp.imported)
            if a is not None:
                out.setdefault(a, set())
                if b is not None and b != a:
                    out[a].add(b)
        return out


def subpackage(module: str) -> str | None:
    """``freezetune.train.runner`` -> ``train``; None for the package root itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] not in ("__main__",) else None


def _strongly_connected(nodes: tuple[str, ...], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of the graph, each a list of its nodes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:  # v is the root of a component: pop it off the stack
            group = [stack.pop()]
            while group[-1] != v:
                group.append(stack.pop())
            on_stack.difference_update(group)
            found.append(group)

    for node in nodes:
        if node not in index:
            visit(node)
    return found


def import_graph(package_dir: Path) -> ImportGraph:
    """Parse every ``.py`` file under ``package_dir`` (the ``freezetune`` folder)."""
    root = package_dir.name
    files = {_module_name(p, package_dir, root): p for p in sorted(package_dir.rglob("*.py"))}
    imports = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for node, in_function in _walk(tree):
            for target in _targets(node, root, files):
                if target != name:
                    imports.append(Import(name, target, node.lineno, in_function))
    return ImportGraph(tuple(files), tuple(imports))


def _module_name(path: Path, package_dir: Path, root: str) -> str:
    rel = path.relative_to(package_dir).with_suffix("")
    parts = [root, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _walk(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    out: list[tuple[ast.AST, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, in_function))
            visit(child, inside)

    visit(tree, False)
    return out


def _targets(node: ast.AST, root: str, files: dict[str, Path]) -> list[str]:
    """The freezetune modules an import statement loads (a submodule named in
    ``from pkg import sub`` counts as that submodule)."""
    if isinstance(node, ast.Import):
        return [_known(a.name, files) for a in node.names if a.name.split(".")[0] == root]
    assert isinstance(node, ast.ImportFrom)
    if node.level or not node.module or node.module.split(".")[0] != root:
        return []
    out = []
    for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        out.append(sub if sub in files else _known(node.module, files))
    return out


def _known(module: str, files: dict[str, Path]) -> str:
    # `import freezetune.train.trainer as m` and the like: the longest prefix that is a module.
    parts = module.split(".")
    while parts and ".".join(parts) not in files:
        parts.pop()
    return ".".join(parts) or module


def architecture_markdown(package_dir: Path) -> str:
    """docs/architecture.md: the layers, the subpackage import graph (Mermaid and a
    table) and each subpackage's own docstring as the paragraph on what it owns."""
    graph = import_graph(package_dir)
    edges = graph.package_edges()
    modules = {
        name: sorted(m.rsplit(".", 1)[-1] for m in graph.modules if subpackage(m) == name and m.count(".") == 2)
        for layer in LAYERS
        for name in layer
    }
    lines = [
        "# Architecture",
        "",
        "<!-- Generated by `python scripts/architecture.py` from the source; edit the package docstrings, not this"
        " file. tests/test_architecture.py fails when it is out of date. -->",
        "",
        "freezetune is split into subpackages by role. Each layer may import the layers below it and never one"
        " above, not even inside a function; `data` and `models` share a layer and stay independent."
        " tests/test_architecture.py checks this, and that there is no import cycle, on every `make test`.",
        "",
        "| layer | subpackage | imports | modules |",
        "|---|---|---|---|",
    ]
    for rank, layer in reversed(list(enumerate(LAYERS))):
        for name in layer:
            deps = (
                ", ".join(f"`{d}`" for d in sorted(edges.get(name, ()), key=lambda d: (-(layer_of(d) or 0), d))) or "-"
            )
            lines.append(f"| {rank} | `{name}` | {deps} | {', '.join(modules[name])} |")
    lines += ["", "```mermaid", "graph TD"]
    for layer in reversed(LAYERS):
        for name in layer:
            # Only the nearest layers: the rest follow by transitivity and would crowd the picture.
            direct = sorted(edges.get(name, ()))
            for dep in direct:
                if not any(dep in edges.get(other, ()) for other in direct if other != dep):
                    lines.append(f"  {name} --> {dep}")
    lines += ["```", "", "(Arrows show each package's nearest imports; the table lists all of them.)", ""]
    for layer in reversed(LAYERS):
        for name in layer:
            doc = ast.get_docstring(ast.parse((package_dir / name / "__init__.py").read_text())) or ""
            lines += [f"## `freezetune.{name}`", "", " ".join(doc.split()), ""]
    return "\n".join(lines)
