"""The import graph runs one way: cli -> run -> stages -> the domain packages -> core.

Walks every module of `picochat` with `ast` (imports at the top and inside functions alike) and
fails on an import cycle between modules, a cycle between packages, or an edge that goes up a
layer. ARCHITECTURE.md explains the layers."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "picochat"

# Layer of each top-level package or module of picochat; a module may import only from lower
# layers, or from its own package, or (layer 1) from another domain package when no cycle results.
LAYERS = {
    "__main__": 5,
    "cli": 4,
    "run": 3,
    "stages": 2,
    **{name: 1 for name in ("config", "layout", "world", "data", "algos", "train", "eval", "feedback",
                            "reward_model", "hf", "report", "serve")},
    "core": 0,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the picochat modules it imports (`from pkg import name` counts pkg.name when
    that is a module, else pkg)."""
    modules = {_module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules():
    assert _cycles(import_graph()) == []


def test_no_import_cycles_between_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for a, targets in import_graph().items():
        for b in targets:
            if top_level(a) != top_level(b):
                packages[top_level(a)].add(top_level(b))
    assert _cycles(packages) == []


def test_every_package_has_a_layer_and_imports_only_downwards():
    graph = import_graph()
    unknown = sorted({top_level(m) for m in graph if top_level(m) and top_level(m) not in LAYERS})
    assert not unknown, f"add these to LAYERS (and ARCHITECTURE.md): {unknown}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if top_level(a) and top_level(b) and top_level(a) != top_level(b)
                    and LAYERS[top_level(a)] < LAYERS[top_level(b)])
    assert upward == []
    core_out = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                      if top_level(a) == "core" and top_level(b) != "core")
    assert core_out == []
