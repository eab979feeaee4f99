"""The layering contract: fedray (the CLI) -> tuning -> actors -> engine, engine free of Ray, no
import cycles.

Every import statement of the project's modules counts, those inside functions included (an import
moved into a function to dodge a cycle is still a dependency). What still breaks the contract is
listed below, each with what fixes it; the lists may only shrink: a listed exception that no longer
exists fails the test too, so fixing one means deleting its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "actors", "tuning", "fedray")
# layer -> what it may not import (third-party names included)
FORBIDDEN = {
    "engine": ("actors", "tuning", "fedray", "ray"),
    "actors": ("tuning", "fedray"),
    "tuning": ("fedray",),
}
# module -> the forbidden imports it still makes (none left; a new one is fixed, not listed)
EXCEPTIONS: dict[str, set[str]] = {}
# import cycles still present, as sorted tuples of modules (none left; a new one is fixed, not listed)
CYCLES: set[tuple[str, ...]] = set()


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _trees() -> dict[str, ast.Module]:
    """module -> its parsed source, for every module of the project's packages."""
    return {
        _module(path): ast.parse(path.read_text(), str(path))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _names(node: ast.AST) -> set[str]:
    """The module names one import statement names (`from a.b import c` gives a.b and a.b.c)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return set()


def _imports() -> dict[str, set[str]]:
    """module -> every module name it imports (absolute)."""
    return {m: {n for node in ast.walk(t) for n in _names(node)} for m, t in _trees().items()}


def _top(name: str) -> str:
    return name.split(".")[0]


def test_no_lower_layer_imports_a_higher_one() -> None:
    found: dict[str, set[str]] = {}
    for module, names in _imports().items():
        banned = FORBIDDEN.get(_top(module), ())
        bad = {_top(n) for n in names if _top(n) in banned}
        if bad:
            found[module] = bad
    new = {m: b - EXCEPTIONS.get(m, set()) for m, b in found.items()}
    assert not {m: b for m, b in new.items() if b}, "imports against the layers (fix, don't list)"
    stale = {m: b - found.get(m, set()) for m, b in EXCEPTIONS.items()}
    assert not {m: b for m, b in stale.items() if b}, "fixed: delete these from EXCEPTIONS"


def _cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_new_import_cycles() -> None:
    imports = _imports()
    modules = set(imports)
    # an edge to a module of the project (a package's __init__ and what it re-exports included)
    graph = {m: {n for n in names if n in modules and n != m} for m, names in imports.items()}
    found = _cycles(graph)
    assert found - CYCLES == set(), "new import cycles"
    assert CYCLES - found == set(), "fixed: delete these from CYCLES"


def test_the_contract_sees_imports_inside_functions() -> None:
    """The reader counts a function-level import (the usual way to hide a dependency)."""
    assert "actors.pool" in _imports()["actors.launch"]  # inside make_backend


# module -> why it imports project modules inside functions (anywhere else they belong at the top)
LAZY = {
    "actors.launch": "a run given a backend (--in-process) never loads Ray: the pool and Ray Train parts",
    "fedray.cli": "each command loads what it runs: --help, `models` and usage errors skip torch and Ray",
}


def _function_level_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports inside a function body."""
    out: dict[str, set[str]] = {}
    for module, tree in _trees().items():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                names = {n for node in ast.walk(fn) for n in _names(node) if _top(n) in PACKAGES}
                if names:
                    out.setdefault(module, set()).update(names)
    return out


def test_project_imports_sit_at_the_top() -> None:
    """A function-level import hides a dependency (or a cycle): only the modules in LAZY, which say why."""
    found = _function_level_imports()
    assert set(found) - set(LAZY) == set(), (
        "move these imports to the module's top (or add to LAZY why)"
    )
    assert set(LAZY) - set(found) == set(), "no function-level import left: delete from LAZY"
