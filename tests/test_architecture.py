"""The import graph of ``celery_chaos`` (the folder harness/): no cycle between its packages;
report/ only behind entry points.

Every module under harness/ is parsed with ``ast``; every import counts, including those under
``if TYPE_CHECKING:`` and inside functions (a deferred import hides a cycle, it does not break
it). A node of the package graph is ``celery_chaos.<first name>``: a package
(``celery_chaos.faults``, its ``proxy`` included) or a top-level module (``celery_chaos.cli``,
``celery_chaos.results``).
"""

from __future__ import annotations

import ast
from collections import deque
from itertools import pairwise
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"

#: Who may import celery_chaos.report: the commands and the runner that write a run's report.
ENTRY_POINTS = ("celery_chaos.cli", "celery_chaos.pytest_plugin", "celery_chaos.runner")

Edges = dict[str, dict[str, list[str]]]  # node -> imported node -> where ("path:line")


def module_name(path: Path) -> str:
    parts = ["celery_chaos", *path.relative_to(HARNESS).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(HARNESS.rglob("*.py"))}


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """Every harness module ``path`` imports, anywhere in the file, with its line."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in modules else base, node.lineno))
    return [(m, line) for m, line in out if m == "celery_chaos" or m.startswith("celery_chaos.")]


def node_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_graph() -> Edges:
    modules = _modules()
    graph: Edges = {}
    for name, path in modules.items():
        for target, line in imports(path, modules):
            a, b = node_of(name), node_of(target)
            if a != b:
                where = f"{path.relative_to(HARNESS.parent)}:{line} imports {target}"
                found = graph.setdefault(a, {}).setdefault(b, [])
                if where not in found:
                    found.append(where)
    return graph


def _path(graph: Edges, src: str, dst: str) -> list[str] | None:
    """A shortest path from ``src`` to ``dst``, None if there is none."""
    prev: dict[str, str] = {src: src}
    queue = deque([src])
    while queue:
        a = queue.popleft()
        if a == dst:
            path = [a]
            while path[-1] != src:
                path.append(prev[path[-1]])
            return path[::-1]
        for b in sorted(graph.get(a, {})):
            if b not in prev:
                prev[b] = a
                queue.append(b)
    return None


def cycles(graph: Edges) -> list[list[str]]:
    """For every edge on a cycle, a shortest cycle through it (each cycle listed once)."""
    found: list[list[str]] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for a in sorted(graph):
        for b in sorted(graph[a]):
            back = _path(graph, b, a)
            if back is None:
                continue
            cycle = [a, *back]
            edges = frozenset(pairwise(cycle))
            if edges not in seen:
                seen.add(edges)
                found.append(cycle)
    return found


def describe(graph: Edges, found: list[list[str]]) -> str:
    lines = []
    for cycle in found:
        lines.append("cycle: " + " -> ".join(cycle))
        for a, b in pairwise(cycle):
            first, *more = graph[a][b]
            lines.append(f"    {first}" + (f" (+{len(more)} more)" if more else ""))
    return "\n".join(lines)


def test_the_graph_sees_every_kind_of_import() -> None:
    """Deferred, TYPE_CHECKING, relative and ``from package import module`` imports count."""
    graph = package_graph()
    # in a def:
    assert any("harness/cli.py" in w for w in graph["celery_chaos.cli"]["celery_chaos.runner"])
    modules = _modules()
    link = dict(imports(HARNESS / "faults" / "proxy" / "proxies.py", modules))
    assert "celery_chaos.faults.proxy.link" in link  # `from .link import ...`
    assert node_of("celery_chaos.faults.proxy.link") == "celery_chaos.faults"


def test_no_package_cycle() -> None:
    """The package graph is acyclic: dependencies point one way (type-only imports too)."""
    graph = package_graph()
    found = cycles(graph)
    assert not found, "import cycles between harness packages:\n" + describe(graph, found)


def test_no_module_cycle() -> None:
    """No two modules import each other, directly or around a loop, even for types."""
    modules = _modules()
    graph: Edges = {}
    for name, path in modules.items():
        for target, line in imports(path, modules):
            if target in modules and target != name:
                where = f"{path.relative_to(HARNESS.parent)}:{line}"
                graph.setdefault(name, {}).setdefault(target, []).append(where)
    found = cycles(graph)
    assert not found, "import cycles between harness modules:\n" + describe(graph, found)


def test_the_data_flow_order() -> None:
    """history <- checks <- faults <- spec <- runner <- explore: no package imports one to
    its right."""
    order = [f"celery_chaos.{p}"
             for p in ("history", "checks", "faults", "spec", "runner", "explore")]
    graph = package_graph()
    for i, low in enumerate(order):
        for high in order[i + 1:]:
            assert high not in graph.get(low, {}), f"{low} imports {high}: {graph[low][high]}"
    backends = graph.get("celery_chaos.backends", {})
    assert "celery_chaos.faults" not in backends, "backends know no faults"


def test_report_is_imported_only_by_entry_points() -> None:
    """The report reads a run's results; nothing the run is made of depends on it."""
    modules = _modules()
    offenders = [
        f"{path.relative_to(HARNESS.parent)}:{line} imports {target}"
        for name, path in modules.items()
        if node_of(name) != "celery_chaos.report"
        and not any(name == e or name.startswith(e + ".") for e in ENTRY_POINTS)
        for target, line in imports(path, modules)
        if node_of(target) == "celery_chaos.report"
    ]
    assert not offenders, "report/ imported outside the entry points:\n" + "\n".join(offenders)
