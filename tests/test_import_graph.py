"""The import graph of python/segtme, built from the source (every import statement, also those
inside functions; relative imports resolved): no cycles, nobody imports the package root, and
the core layers point down (models <- inference <- pipeline)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python" / "segtme"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    """The module ``name`` refers to: itself, or its longest prefix that is a module of ours."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from X import name`` counts as X.name when
    that is a module, else X)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)] if node.level > 1 else list(here)
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                for a in node.names:
                    sub = f"{full}.{a.name}"
                    targets.append(sub if sub in mods else full)
            for t in targets:
                r = _resolve(t, mods) if t.split(".")[0] == "segtme" else None
                if r is not None and r != mod:
                    graph[mod].add(r)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    import sys

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_builder_sees_relative_lazy_and_from_imports(tmp_path):
    """The builder is not vacuous: it finds this package's known edges of every kind."""
    g = import_graph()
    assert "segtme.models.registry" in g["segtme.inference.engine"]          # module level, relative
    assert "segtme.runtime" in g["segtme.models.registry"]                    # ``from .. import runtime``
    assert "segtme.inference.engine" in g["segtme.pipeline"]                  # inside a function
    assert "segtme.report" in g["segtme.pipeline"]
    assert len(g) > 80


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_nothing_imports_the_package_root():
    g = import_graph()
    bad = sorted(m for m, deps in g.items() if "segtme" in deps and m != "segtme")
    assert not bad, f"modules importing the package root (import from its home instead): {bad}"


#: layers of the core path and what each must never import (higher layers)
_FORBIDDEN = {
    "segtme.models": ("segtme.inference", "segtme.pipeline", "segtme.server", "segtme.commands", "segtme.batch",
                      "segtme.export", "segtme.tme", "segtme.narrative", "segtme.report", "segtme.train",
                      "segtme.eval"),
    "segtme.inference": ("segtme.pipeline", "segtme.server", "segtme.commands", "segtme.batch", "segtme.tme",
                         "segtme.narrative", "segtme.report", "segtme.train", "segtme.eval", "segtme.paget"),
    "segtme.runtime": ("segtme.",),
    "segtme.stain": ("segtme.",),
    "segtme.hashing": ("segtme.",),
    "segtme.pipeline": ("segtme.server", "segtme.commands", "segtme.batch"),
    # the one resampler is a leaf (numpy/Pillow + errors) under io, data, inference and the server
    "segtme.resample": ("segtme.io", "segtme.models", "segtme.inference", "segtme.pipeline", "segtme.server",
                        "segtme.commands", "segtme.batch", "segtme.export", "segtme.tme", "segtme.data",
                        "segtme.train", "segtme.eval", "segtme.paget", "segtme.mitosis"),
    # sources sit under the pipeline and the inference layer
    "segtme.io": ("segtme.models", "segtme.inference", "segtme.pipeline", "segtme.server", "segtme.commands", "segtme.batch",
                  "segtme.export", "segtme.tme", "segtme.narrative", "segtme.report", "segtme.train", "segtme.eval",
                  "segtme.paget", "segtme.data", "segtme.mitosis"),
    # tme.report / tme.__init__ still serve build_tme_report (moved up to segtme.report) lazily
    # for callers not yet migrated; tme itself never reaches into narrative
    "segtme.tme": ("segtme.narrative", "segtme.pipeline", "segtme.server"),
}


@pytest.mark.parametrize("layer", sorted(_FORBIDDEN))
def test_core_layers_point_down(layer):
    g = import_graph()
    bad = []
    for m, deps in g.items():
        if m != layer and not m.startswith(layer + "."):
            continue
        for d in deps:
            if any(d == f or d.startswith(f if f.endswith(".") else f + ".") or (not f.endswith(".") and d == f)
                   for f in _FORBIDDEN[layer]):
                bad.append(f"{m} -> {d}")
    assert not bad, "imports pointing up:\n" + "\n".join(sorted(bad))
