"""No import circle among the modules of uadp and of the bundled plugins.

A circle makes the order modules load in matter: which one runs first depends on who imported
whom, a name may be read from a half-initialised module, and neither side can be understood,
tested or moved alone. Moving one of its imports into a function hides it from Python but not
from the design, so this test counts function-level imports too: a piece that two modules need
belongs in a module below both.

The graph is grimp's (the library import-linter is built on), over ``uadp`` and ``uadp_plugins``
only, so an import of a heavy optional package (onnxruntime, openvino, MLflow) is no edge of it
at all. Two kinds of imports between those modules are left out:

* imports under ``if TYPE_CHECKING:``: they never run, and name types for the type checker only;
* the function-level imports in :data:`KEPT_LAZY`, each kept in its function so that a light
  module does not import a heavy dependency with itself (``import uadp`` in a plugin module must
  not import torch). The test checks that each one still is function-level, so that the list
  cannot excuse an import that moved to the top of its module.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable
from functools import cache
from pathlib import Path

import grimp

import uadp
import uadp_plugins

PACKAGES = {"uadp": Path(uadp.__file__).parent, "uadp_plugins": Path(uadp_plugins.__file__).parent}

# (importer, imported) -> why the import stays inside a function
KEPT_LAZY = {
    ("uadp", "uadp.api"): "uadp.load and uadp.evaluate: `import uadp` (every plugin module's) stays free of torch",
    ("uadp", "uadp.recalibration"): "uadp.calibrate, as uadp.load: `import uadp` stays free of torch",
}


def module_file(module: str) -> Path:
    """The source file of a module of :data:`PACKAGES` (a package's ``__init__.py``)."""
    top, *rest = module.split(".")
    path = PACKAGES[top].joinpath(*rest)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


@cache
def function_level_lines(module: str) -> frozenset[int]:
    """The lines of the import statements inside a function (or method) of ``module``."""
    tree = ast.parse(module_file(module).read_text())
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines.update(sub.lineno for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    return frozenset(lines)


def counted_imports(
    graph: grimp.ImportGraph, is_function_level: Callable[[str, int], bool], kept: dict = KEPT_LAZY
) -> dict[str, set[str]]:
    """importer -> the modules it imports, without the function-level imports that ``kept`` excuses."""
    edges: dict[str, set[str]] = {}
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            details = graph.get_import_details(importer=importer, imported=imported)
            if (importer, imported) in kept:
                details = [d for d in details if not is_function_level(importer, d["line_number"])]
            if details:
                edges.setdefault(importer, set()).add(imported)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle per group of modules that import each other (strongly connected
    components, found by Tarjan's algorithm without recursion), as [a, b, ..., a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1 or node in edges.get(node, ()):
                    groups.append(group)
    return [_shortest_circle(group, edges) for group in groups]


def _shortest_circle(group: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The shortest way from the group's first module back to itself, inside the group."""
    start = min(group)
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(edges.get(node, set()) & group):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if target not in previous:
                previous[target] = node
                queue.append(target)
    raise AssertionError(f"no circle through {start}")  # a strongly connected group always has one


def describe(circle: list[str], graph: grimp.ImportGraph) -> str:
    """``a (line 3: from .b import x) -> b (line 9: ...) -> a``: where each import is written."""
    steps = []
    for importer, imported in zip(circle, circle[1:]):
        found = graph.get_import_details(importer=importer, imported=imported)
        where = "; ".join(f"line {d['line_number']}: {d['line_contents']}" for d in found)
        steps.append(f"{importer} ({where})")
    return " -> ".join([*steps, circle[-1]])


def test_no_import_circle():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    edges = counted_imports(graph, lambda module, line: line in function_level_lines(module))
    found = [describe(circle, graph) for circle in circles(edges)]
    assert not found, "import circles:\n" + "\n".join(found)


def test_kept_lazy_imports_are_function_level():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True, cache_dir=None)
    for (importer, imported), reason in KEPT_LAZY.items():
        lines = [d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)]
        assert lines, f"{importer} no longer imports {imported}: drop it from KEPT_LAZY ({reason})"
        top = [line for line in lines if line not in function_level_lines(importer)]
        assert not top, f"{importer} imports {imported} at module level (line {top[0]}), which KEPT_LAZY excuses"


def test_circles_are_found_and_named():
    """The search itself: a circle hidden in a function is one, the shortest is named, a chain is none."""
    graph = grimp.ImportGraph()
    for importer, imported, line in [
        ("pkg.a", "pkg.b", 1),
        ("pkg.b", "pkg.c", 2),
        ("pkg.c", "pkg.a", 30),  # inside a function
        ("pkg.c", "pkg.d", 3),
        ("pkg.d", "pkg.e", 4),
        ("pkg.e", "pkg.d", 5),
        ("pkg.f", "pkg.a", 6),
    ]:
        graph.add_import(importer=importer, imported=imported, line_number=line, line_contents=f"import {imported}")
    in_function = lambda module, line: line >= 30  # noqa: E731
    edges = counted_imports(graph, in_function, kept={})
    assert sorted(circles(edges)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"], ["pkg.d", "pkg.e", "pkg.d"]]
    text = describe(["pkg.d", "pkg.e", "pkg.d"], graph)
    assert text == "pkg.d (line 4: import pkg.e) -> pkg.e (line 5: import pkg.d) -> pkg.d"
    # an excused import counts only while it stays in its function
    assert circles(counted_imports(graph, in_function, kept={("pkg.c", "pkg.a"): "heavy"})) == [
        ["pkg.d", "pkg.e", "pkg.d"]
    ]
    assert len(circles(counted_imports(graph, in_function, kept={("pkg.e", "pkg.d"): "heavy"}))) == 2
    graph.remove_import(importer="pkg.c", imported="pkg.a")
    graph.remove_import(importer="pkg.e", imported="pkg.d")
    assert circles(counted_imports(graph, in_function, kept={})) == []
