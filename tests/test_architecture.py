"""The layer picture of docs/architecture.md, enforced: imports point downward only, no package
cycles, no private names imported across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "advex"

#: top to bottom; a package may import packages of a lower rank (and its own), never a higher one
LAYERS: list[set[str]] = [
    {"cli", "__main__", "serve"},
    {"evaluate"},
    {"defenses", "poison"},
    {"report"},
    {"attacks", "zoo", "training"},
    {"models"},
    {"core"},
    {"threats"},
]
#: leaves: importable from anywhere, importing no layered package
LEAVES = {"data", "_io", "_stats", "distributed"}
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _package(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    return rel.parts[0] if rel.parts else "__init__"


def _imports(path: Path):
    """(imported advex package, imported names, line) for every advex import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(SRC).with_suffix("")
    pkg_parts = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    if rel.name == "__init__":
        pkg_parts = list(rel.parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "advex" and len(parts) > 1:
                    yield parts[1], [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "advex":
                    continue
                target = parts[1:]
            else:
                base = (
                    pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
                )
                if node.level - 1 > len(pkg_parts):
                    continue
                target = base + ((node.module or "").split(".") if node.module else [])
            if target:
                yield target[0], names, node.lineno
            else:  # ``from advex import x`` / ``from .. import x``
                for n in names:
                    yield n, [], node.lineno


def _modules():
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_has_a_layer():
    packages = {_package(p) for p in _modules()} - {"__init__"}
    unknown = packages - set(RANK) - LEAVES
    assert not unknown, f"packages without a layer in docs/architecture.md: {sorted(unknown)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_downward(path):
    here = _package(path)
    if here == "__init__":
        return  # the top-level package re-exports from the layers below it
    bad = []
    for target, _names, line in _imports(path):
        if target == here or target in ("__version__",):
            continue
        if target in LEAVES:
            continue
        if here in LEAVES:
            bad.append(f"line {line}: leaf module {here} imports advex.{target}")
            continue
        if target not in RANK:
            continue
        if RANK[target] < RANK[here]:
            bad.append(
                f"line {line}: {here} (layer {RANK[here]}) imports {target} (layer {RANK[target]})"
            )
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_names_across_modules(path):
    bad = []
    rel = path.relative_to(SRC)
    for target, names, line in _imports(path):
        for n in names:
            if n.startswith("_") and not n.startswith("__"):
                bad.append(f"line {line}: imports private {n} from advex.{target}")
    assert not bad, f"{rel}: " + "; ".join(bad)


def test_the_doc_shows_every_layer_in_order():
    """docs/architecture.md's picture lists the layers of this test, top to bottom."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    picture = doc.split("## Layers", 1)[1].split("```", 2)[1]
    # the tree's entries: the words before the description on each line
    heads = [line.strip().removeprefix("└─").strip().split("  ")[0] for line in picture.split("\n")]
    order = [{w.split()[0] for w in head.split("/") if w.strip()} for head in heads if head]
    for k, layer in enumerate(LAYERS):
        assert layer & order[k], f"layer {k} ({sorted(layer)}) is not row {k} of the picture"
    assert all(leaf in picture for leaf in LEAVES)
