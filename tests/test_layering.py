"""The package layering: vimw's packages import each other without a cycle.

Every ``import`` in ``src/vimw`` counts, those inside functions too (a lazy import is
still a dependency), except those under ``if TYPE_CHECKING:``. Imports are folded to
the package level (``vimw.training.loop`` -> ``vimw.training``; a top-level file such as
``vimw/recipes.py`` is its own node), and the graph of packages must have no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "vimw"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str | None:
    """The package-level node of a dotted vimw module name (None outside vimw)."""
    parts = module.split(".")
    if parts[0] != "vimw":
        return None
    return ".".join(parts[:2])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported vimw module, line) for every run-time import in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "vimw":  # ``from vimw import errors``: the names are modules
                found.extend((f"vimw.{alias.name}", node.lineno) for alias in node.names)
            else:
                found.append((module, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@lru_cache(maxsize=1)
def package_graph() -> dict[str, dict[str, list[str]]]:
    """node -> {imported node: ["file:line", ...]} over every file of ``src/vimw`` (read once)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(ROOT.rglob("*.py")):
        source = _node(_module_name(path))
        graph[source]  # every package is a node, even one that imports nothing
        for module, line in _imports(path):
            target = _node(module)
            if target is not None and target != source and target != "vimw":
                graph[source][target].append(f"{path.relative_to(SRC)}:{line}")
    return {source: dict(targets) for source, targets in graph.items()}


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return found


def _describe(graph, component: list[str]) -> str:
    lines = [" <-> ".join(component)]
    for source in component:
        for target in component:
            if target in graph[source]:
                lines.append(f"  {source} -> {target}: {', '.join(graph[source][target][:3])}")
    return "\n".join(lines)


def test_the_walker_sees_lazy_imports_and_skips_type_checking_ones(tmp_path):
    path = ROOT / "modules" / "registry.py"  # imports vimw.modules.* only under TYPE_CHECKING
    assert all(not m.startswith("vimw.modules.") for m, _ in _imports(path))
    graph = package_graph()
    assert "vimw.workflows" in graph["vimw.cli"]  # the CLI imports workflows inside its run functions
    assert "vimw.modules" in graph["vimw.workflows"]


def test_no_import_cycle_between_packages():
    graph = package_graph()
    found = cycles(graph)
    assert not found, "import cycles between packages:\n" + "\n".join(_describe(graph, c) for c in found)


def test_cycle_detection_finds_a_planted_cycle():
    graph = {"a": {"b": ["x"]}, "b": {"c": ["y"]}, "c": {"a": ["z"]}, "d": {"a": ["w"]}}
    assert cycles(graph) == [["a", "b", "c"]]


# The package map, lowest layer first: a package imports only packages of lower layers.
# A change that needs another arrow changes this table on purpose (and the README's map).
LAYERS = (
    ("errors", "version", "_lazy", "sites"),
    ("_extras", "io"),
    ("modules", "backbones", "data"),
    ("evaluation", "zoo"),
    ("training",),
    ("aggregation", "interop"),
    ("methods", "transfer"),
    ("workflows", "report", "deploy"),
    ("recipes", "serve"),
    ("cli",),
)


def test_packages_import_only_lower_layers():
    layer = {f"vimw.{name}": i for i, names in enumerate(LAYERS) for name in names}
    graph = package_graph()
    unplaced = sorted(set(graph) - set(layer) - {"vimw"})
    assert not unplaced, f"packages missing from LAYERS: {unplaced}"
    upward = [f"{source} -> {target} ({', '.join(where[:2])})"
              for source, targets in graph.items() if source != "vimw"
              for target, where in targets.items() if layer[target] >= layer[source]]
    assert not upward, "imports that do not go to a lower layer:\n  " + "\n  ".join(sorted(upward))


def test_modules_and_backbones_meet_only_through_the_site_contract():
    graph = package_graph()
    assert "vimw.backbones" not in graph["vimw.modules"], graph["vimw.modules"].get("vimw.backbones")
    assert "vimw.modules" not in graph["vimw.backbones"], graph["vimw.backbones"].get("vimw.modules")
    assert "vimw.sites" in graph["vimw.modules"] and "vimw.sites" in graph["vimw.backbones"]


# -- circles between files inside one package ---------------------------------------------------
def _file_node(module: str) -> str | None:
    """The file a dotted vimw module name is (``vimw.transfer`` -> its ``__init__``), if it exists."""
    parts = module.split(".")
    if parts[0] != "vimw":
        return None
    path = SRC.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return module
    if (path / "__init__.py").is_file():
        return module + ".__init__"
    return None


def _file_imports(path: Path) -> list[tuple[str, int]]:
    """(imported vimw file, line) for every run-time import in one file.

    ``from vimw.pkg import name`` imports the file ``vimw/pkg/name.py`` when it exists (a
    submodule), else the package's ``__init__``.
    """
    submodules: dict[tuple[str, int], list[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level and node.module.startswith("vimw."):
            names = [f"{node.module}.{a.name}" for a in node.names]
            if all(SRC.joinpath(*name.split(".")).with_suffix(".py").is_file() for name in names):
                submodules[(node.module, node.lineno)] = names
    found = []
    for module, line in _imports(path):
        for name in submodules.get((module, line), [module]):
            target = _file_node(name)
            if target is not None:
                found.append((target, line))
    return found


@lru_cache(maxsize=1)
def file_graph() -> dict[str, dict[str, list[str]]]:
    """file -> {file of the same package it imports: ["file:line", ...]} (lazy imports included)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(ROOT.rglob("*.py")):
        source = _module_name(path) + (".__init__" if path.name == "__init__.py" else "")
        graph[source]
        for target, line in _file_imports(path):
            if target != source and _node(target) == _node(source) != "vimw":
                graph[source][target].append(f"{path.relative_to(SRC)}:{line}")
    return {source: dict(targets) for source, targets in graph.items()}


def test_no_import_circle_between_files_of_one_package():
    graph = file_graph()
    found = cycles(graph)
    assert not found, "import circles between files of one package:\n" + "\n".join(_describe(graph, c) for c in found)


def test_no_cli_function_is_over_40_lines():
    # The CLI parses and prints; work longer than this belongs in a workflow.
    long = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 40:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
