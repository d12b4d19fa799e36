"""Dependencies point one way (DESIGN.md): manifests ← builder ← training ← evaluation."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["manifests", "builder", "training", "evaluation"]
# training uses builder's physics (reflection set, structure factors), never the generator
BUILDER_PHYSICS = {"builder.reflections", "builder.sf", "builder.structure", "builder.symmetry", "builder.elements"}


def imports_of(package: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(path.name, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((path.name, node.module))
    return found


def test_no_arrow_turns_back():
    for i, pkg in enumerate(LAYERS):
        higher = set(LAYERS[i + 1:])
        bad = [(f, m) for f, m in imports_of(pkg) if m.split(".")[0] in higher]
        assert not bad, f"{pkg} imports a higher layer: {bad}"


def test_training_uses_only_builder_physics():
    bad = [(f, m) for f, m in imports_of("training") if m.split(".")[0] == "builder" and m not in BUILDER_PHYSICS]
    assert not bad, f"training imports the generator: {bad}"


def test_nothing_reads_shared():
    shared = "/".join(["..", "shared"])  # the reference folder beside the checkout, which users do not have
    for pkg in LAYERS + ["benchmarks", "tests"]:
        for path in (ROOT / pkg).rglob("*.py"):
            assert shared not in path.read_text(), f"{path} reads {shared}, which users do not have"
