"""No module of ``vkd_jax`` imports one that imports it back.

Walks every module's source (top-level *and* function-level imports, since a lazy import
still makes the modules depend on each other) and fails on any cycle, naming it.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "vkd_jax"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str, modules) -> str | None:
    """The longest prefix of a dotted name that is a module of the package."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: pathlib.Path, modules) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            # `from a import b` depends on module a.b when b is one, otherwise on a (its
            # name b). A package's own __init__ running first is not counted: a package
            # that imports its submodules, which import their siblings, is not a cycle.
            names = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            target = _resolve(name, modules)
            if target and target != module:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    # A module's import of `a.b.c` also runs `a/__init__` and `a/b/__init__`; those edges
    # are not listed: a package __init__ importing its own submodules is not a cycle.
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a cycle
    path through the component."""
    index, low, stack, on_stack, sccs = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                sccs.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, scc) for scc in sccs]


def _cycle_in(graph, component) -> list[str]:
    """One concrete cycle a -> b -> ... -> a inside a strongly connected component."""
    members = set(component)
    start = component[0]
    # Breadth-first search back to `start` within the component.
    parents = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def test_finds_a_planted_cycle():
    # The checker itself: a cycle through three modules and a self-contained chain.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    (cycle,) = find_cycles(graph)
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_parses_every_import_form(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "x.py").write_text(
        "from . import y\nfrom .y import thing\nfrom vkd_jax import top\n"
        "def f():\n    import vkd_jax.sub.z\n    from ..top import name\n"
    )
    for name in ("sub/y.py", "sub/z.py", "top.py"):
        (pkg / name).write_text("")
    modules = {
        f"{PACKAGE}.sub.x": None,
        f"{PACKAGE}.sub.y": None,
        f"{PACKAGE}.sub.z": None,
        f"{PACKAGE}.top": None,
        f"{PACKAGE}.sub": None,
        PACKAGE: None,
    }
    found = imports_of(f"{PACKAGE}.sub.x", pkg / "sub" / "x.py", modules)
    assert found == {f"{PACKAGE}.sub.y", f"{PACKAGE}.sub.z", f"{PACKAGE}.top"}


def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 30, "the walk found too few modules"
    cycles = find_cycles(graph)
    if cycles:
        pytest.fail(
            f"{len(cycles)} import cycle(s) in {PACKAGE}:\n"
            + "\n".join(" -> ".join(cycle) for cycle in cycles)
        )
