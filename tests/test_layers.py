"""The package layout is the architecture: layers import downward only, and no module cycles.

Read from the source with ``ast`` (every import counts, also those inside functions and under
``TYPE_CHECKING``), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Rank of each layer: a module may import its own layer or one of a lower rank. Two layers of
# the same rank (the workflow and the server) never import each other.
LAYERS: dict[str, int] = {
    "modelmora.errors": 0,
    "modelmora.units": 0,
    "modelmora.paths": 0,
    "modelmora.speech": 1,
    "modelmora.models": 2,
    "modelmora.runtime": 3,
    "modelmora.workflow": 4,
    "modelmora.serving": 4,
    "modelmora.testing": 5,
    "modelmora.bench": 6,
    "modelmora.cli": 7,
    "modelmora.__main__": 8,
    "modelmora": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    """The layer a module belongs to: the longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return prefix
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def _imports(path: Path, module: str) -> set[str]:
    """The ``modelmora`` modules that ``path`` imports (resolving relative imports)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "modelmora")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "modelmora":
                continue
            found.add(target)
            # ``from pkg import submodule`` imports the submodule too.
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if _is_module(candidate):
                    found.add(candidate)
    return found


def _is_module(name: str) -> bool:
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / "modelmora").rglob("*.py")):
        module = _module_name(path)
        graph[module] = {m for m in _imports(path, module) if m != module}
    return graph


def test_every_module_sits_in_a_layer() -> None:
    for module in _graph():
        _layer(module)


def test_layers_import_downward_only() -> None:
    upward = []
    for module, targets in _graph().items():
        own = _layer(module)
        for target in targets:
            other = _layer(target)
            if other == own or target == "modelmora":
                continue
            if LAYERS[other] >= LAYERS[own] and own != "modelmora":
                upward.append(f"{module} -> {target} ({own} may not import {other})")
    assert not upward, "upward or sideways imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles() -> None:
    graph = _graph()
    # Package __init__ modules are entered by every import of a submodule; count only the
    # modules themselves so that ``a.b -> a`` is not a cycle by construction.
    edges = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_is_imported_across_modules() -> None:
    crossings = []
    for path in sorted((SRC / "modelmora").rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("modelmora"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        crossings.append(f"{module}: from {node.module} import {alias.name}")
    assert not crossings, "private names imported across modules:\n" + "\n".join(crossings)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from modelmora.serving.config import ServerConfig", {"modelmora.serving.config"}),
        ("from ..runtime import memory", {"modelmora.runtime", "modelmora.runtime.memory"}),
        ("import os", set()),
    ],
)
def test_the_import_reader_resolves_what_it_must(
    tmp_path: Path, source: str, expected: set[str]
) -> None:
    """The checker itself: if it read nothing, the layer tests above could never fail."""
    path = SRC / "modelmora" / "workflow" / "engine.py"
    probe = tmp_path / "probe.py"
    probe.write_text(source + "\n")
    assert _imports(probe, "modelmora.workflow.engine") == expected
    assert path.is_file()
