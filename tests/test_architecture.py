"""The package graph stays drawable: no import cycles between wsa_cli's subpackages, and the
library (everything but ``wsa_cli.cli``) never imports the CLI framework.

The graph is read from the source (every ``import`` statement, at module level or inside a
function), one node per subpackage or top-level module of ``wsa_cli``.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import wsa_cli

ROOT = Path(wsa_cli.__file__).parent


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import of this file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["wsa_cli", *path.relative_to(ROOT).with_suffix("").parts[:-1]]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            out.append((module, node.lineno))
    return out


def package_graph() -> dict[str, dict[str, str]]:
    """``unit -> {imported unit: 'file:line' of one such import}`` inside wsa_cli."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        for module, line in _imports(path):
            parts = module.split(".")
            if parts[0] != "wsa_cli" or len(parts) < 2:
                continue
            target = parts[1]
            if target != unit and unit != "__init__":
                graph[unit].setdefault(target, f"{path.relative_to(ROOT.parent)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """One cycle as a list of units (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_finder_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b": "x"}, "b": {"c": "y"}, "c": {"a": "z"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "x"}, "b": {}}) is None


def test_no_import_cycles_between_subpackages() -> None:
    graph = package_graph()
    cycle = find_cycle(graph)
    if cycle is not None:
        where = "; ".join(f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False))
        raise AssertionError(f"import cycle: {where}")


def test_library_never_imports_the_cli_framework() -> None:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if _unit(path) in ("cli", "__main__"):
            continue
        for module, line in _imports(path):
            if module.split(".")[0] in ("typer", "click", "rich") or module.startswith("wsa_cli.cli"):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {module}")
    assert not bad, "; ".join(bad)
