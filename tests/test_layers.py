"""Dependencies point one way (DESIGN.md): manifests ← builder ← training ← evaluation, and no module imports
itself round a loop, whether the loop stays inside a package or crosses packages, and whether an import of the
loop sits at the top of a module or is deferred into a function.

A deferred (function-level) import is fine for what it is usually for: an optional or expensive dependency
(tensorboard, matplotlib, torch on a path that does not need it) or keeping a CLI's start fast. It is not fine
when it only hides a cycle: a deferred import of a project module is refused if that module reaches back to the
importer, i.e. if moving the import to the top would make an import cycle.
"""
from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["manifests", "builder", "training", "evaluation"]
# Training uses builder's physics (reflection set, structure factors), never the generator's internals; on-the-fly
# manifests go through builder's one shard-generation entry point, `builder.shardgen` (DESIGN.md, "Dependencies").
TRAINING_MAY_IMPORT_FROM_BUILDER = {
    "builder.reflections", "builder.sf", "builder.structure", "builder.symmetry", "builder.elements",
    "builder.shardgen",
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module name of a `from X import …` (relative levels resolved against the importer)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST) -> Iterable[tuple[ast.AST, bool]]:
    """Import nodes with whether they are deferred (inside a function); `if TYPE_CHECKING:` blocks are skipped
    (they never run)."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]
    while stack:
        node, deferred = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, inner
            stack.append((child, inner))


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, list[tuple[str, bool, int]]]:
    """{module: [(imported project module, deferred, line)]} for every .py file of the packages under root.

    `from pkg import name` counts as an import of `pkg.name` when that is a module, else of `pkg`."""
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, list[tuple[str, bool, int]]] = {}
    for mod, path in files.items():
        edges = []
        for node, deferred in _walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _resolve(node, mod, path.name == "__init__.py")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            edges += [(t, deferred, node.lineno) for t in targets if t in files and t != mod]
        graph[mod] = edges
    return graph


def _reaches(graph: dict[str, list[tuple[str, bool, int]]], start: str, goal: str) -> list[str] | None:
    """A path start -> … -> goal over all imports (top-level and deferred), or None."""
    seen, stack = {start}, [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt, _, _ in graph.get(node, []):
            if nxt == goal:
                return path + [goal]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def cycles(graph: dict[str, list[tuple[str, bool, int]]], top_level_only: bool) -> list[list[str]]:
    """One loop per module that sits on one (as a path back to itself), over top-level imports or all imports."""
    sub = {m: [e for e in es if not (top_level_only and e[1])] for m, es in graph.items()}
    found, on_loop = [], set()
    for mod in sorted(sub):
        if mod in on_loop:
            continue
        path = _reaches(sub, mod, mod)
        if path:
            found.append(path)
            on_loop.update(path)
    return found


def cycle_hiding_imports(graph: dict[str, list[tuple[str, bool, int]]]) -> list[str]:
    """Deferred imports A -> B of project modules where B reaches A (moving the import up makes a cycle)."""
    bad = []
    for mod, edges in sorted(graph.items()):
        for target, deferred, line in edges:
            if deferred and (back := _reaches(graph, target, mod)):
                bad.append(f"{mod}:{line} defers `import {target}`, which imports it back: {' -> '.join(back)}")
    return bad


@functools.lru_cache(maxsize=1)
def project_graph() -> dict[str, list[tuple[str, bool, int]]]:
    return import_graph(ROOT, LAYERS)


def test_no_arrow_turns_back():
    graph = project_graph()
    for mod, edges in graph.items():
        layer = LAYERS.index(mod.split(".")[0])
        bad = [(t, line) for t, _, line in edges if LAYERS.index(t.split(".")[0]) > layer]
        assert not bad, f"{mod} imports a higher layer: {bad}"


def test_training_uses_only_builder_physics():
    graph = project_graph()
    bad = [(m, t) for m, es in graph.items() if m.startswith("training")
           for t, _, _ in es if t.startswith("builder") and t not in TRAINING_MAY_IMPORT_FROM_BUILDER]
    assert not bad, f"training imports the generator: {bad}"


def test_no_import_cycles_within_or_across_packages():
    graph = project_graph()
    assert not cycles(graph, top_level_only=True), cycles(graph, top_level_only=True)
    assert not cycles(graph, top_level_only=False), cycles(graph, top_level_only=False)


def test_no_deferred_import_hides_a_cycle():
    assert not cycle_hiding_imports(project_graph())


def test_the_checks_find_planted_cycles(tmp_path: Path):
    """The same functions on a tiny package: a top-level cycle, and one hidden by a deferred relative import."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("import pkg.a\n")
    (pkg / "c.py").write_text("from pkg.d import f\n\ndef g():\n    return f()\n")
    (pkg / "d.py").write_text("def f():\n    from .c import g\n    return g\n")
    (pkg / "e.py").write_text("def lazy():\n    from pkg import a  # deferred, but no cycle: allowed\n")
    (pkg / "t.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import u\n")
    (pkg / "u.py").write_text("import pkg.t\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert [sorted(set(c)) for c in cycles(graph, top_level_only=True)] == [["pkg.a", "pkg.b"]]
    assert ["pkg.c", "pkg.d"] in [sorted(set(c)) for c in cycles(graph, top_level_only=False)]
    hidden = cycle_hiding_imports(graph)
    assert len(hidden) == 1 and hidden[0].startswith("pkg.d:2 defers `import pkg.c`")


def test_nothing_reads_shared():
    shared = "/".join(["..", "shared"])  # the reference folder beside the checkout, which users do not have
    for pkg in LAYERS + ["benchmarks", "tests"]:
        for path in (ROOT / pkg).rglob("*.py"):
            assert shared not in path.read_text(), f"{path} reads {shared}, which users do not have"
