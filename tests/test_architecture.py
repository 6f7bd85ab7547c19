"""The layers of tunekit only point down (docs/architecture.md), and no modules import each other in a circle.

Every ``import`` is counted: at module level, inside functions and under ``TYPE_CHECKING``
(a type-only import still ties the lower layer to the higher one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: dict[int, tuple[str, ...]] = {
    0: ("tunekit.errors", "tunekit.version", "tunekit.results", "tunekit.parts", "tunekit.hookspecs",
        "tunekit.registry", "tunekit.config_merge", "tunekit.run_directory"),
    1: ("tunekit.config", "tunekit.config_files", "tunekit.plugins"),
    2: ("tunekit.data", "tunekit.models", "tunekit.training", "tunekit.evaluation", "tunekit.generation", "tunekit.preflight",
        "tunekit.merging", "tunekit.builtin", "tunekit.model_card", "tunekit.tasks", "tunekit.formats",
        "tunekit.export", "tunekit.quiet"),
    3: ("tunekit.tuner",),
    4: ("tunekit.comparison", "tunekit.cli", "tunekit.demo", "tunekit.reference", "tunekit.testing", "tunekit"),
}
NAMES = {0: "values and protocols", 1: "config and plugins", 2: "data, models, training, parts", 3: "the facade",
         4: "comparison, CLI, demo, testing"}


def layer_of(module: str) -> int:
    """The layer of a module: the one whose prefix matches it longest."""
    best, length = None, -1
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = layer, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS and to docs/architecture.md"
    return best


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((SRC / "tunekit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The tunekit modules ``module`` imports (``from tunekit import x`` counts as the package unless x is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tunekit")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "tunekit":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    found.discard(module)
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_layer():
    for module in modules():
        layer_of(module)


def test_layers_only_import_downwards():
    upward = [
        f"{a} (layer {layer_of(a)}, {NAMES[layer_of(a)]}) imports {b} (layer {layer_of(b)}, {NAMES[layer_of(b)]})"
        for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    edges = graph()
    # A package's __init__ re-exporting its own modules is not a circle worth breaking.
    for module, targets in edges.items():
        edges[module] = {t for t in targets if not (t.startswith(module + ".") and modules()[module].name == "__init__.py")}
    assert cycles(edges) == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test itself can fail: an upward import (even a type-only one, inside a function) is found."""
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tunekit.tuner import Tuner\ndef f():\n    from tunekit import compare\n"
    fake = tmp_path / "parts.py"
    fake.write_text(source)
    found = imports_of("tunekit.parts", fake, {"tunekit.tuner", "tunekit", "tunekit.parts"})
    assert found == {"tunekit.tuner", "tunekit"}
    assert all(layer_of(m) > layer_of("tunekit.parts") for m in found)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["tunekit.parts", "tunekit.hookspecs", "tunekit.results", "tunekit.errors"])
def test_the_bottom_layer_imports_only_the_bottom_layer(module):
    assert {layer_of(m) for m in graph()[module]} <= {0}


def test_the_architecture_page_lists_every_layer_and_module_prefix():
    """docs/architecture.md's diagram stays true: every prefix of every layer is named on its layer's lines."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    diagram = text.split("```text", 1)[1].split("```", 1)[0]
    layers: dict[int, str] = {}
    current = None
    for line in diagram.splitlines():
        head = line[:3].strip()
        if head.isdigit():
            current = int(head)
            layers[current] = ""
        if current is not None and line.strip() != "|":
            layers[current] += " " + line
    assert sorted(layers) == sorted(LAYERS)
    for layer, prefixes in LAYERS.items():
        for prefix in prefixes:
            shown = [p for p in layers[layer].split() if p == prefix]
            assert shown, f"docs/architecture.md: layer {layer} should list {prefix}"
