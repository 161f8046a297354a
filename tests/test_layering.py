"""Imports run one way (DESIGN.md section 3): model/io/samples <- src_training <- engine, finetune <- widgets;
benchmarks use the public names only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set[str]:
    """Absolute names of the project modules a file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}
    return out


UPPER = ("napari_imedsam.engine", "napari_imedsam.finetune", "napari_imedsam.widgets", "src_training")
QT = ("qtpy", "PyQt", "PySide", "napari.", "magicgui")


@pytest.mark.parametrize("folder, forbidden", [
    ("napari_imedsam/model", (*UPPER, "napari_imedsam.io", "napari_imedsam.samples", *QT)),
    ("napari_imedsam/io", (*UPPER, *QT)),
    ("napari_imedsam/samples", (*UPPER, "napari_imedsam.model", "napari_imedsam.io", *QT)),
    ("src_training", ("napari_imedsam.engine", "napari_imedsam.finetune", "napari_imedsam.widgets", *QT)),
    ("napari_imedsam/engine", ("napari_imedsam.widgets", "napari_imedsam.finetune", *QT)),
    ("napari_imedsam/finetune", ("napari_imedsam.widgets", "napari_imedsam.engine", *QT)),
])
def test_imports_run_one_way(folder, forbidden):
    bad = [f"{p.relative_to(ROOT)} imports {name}" for p in sorted((ROOT / folder).rglob("*.py"))
           for name in sorted(imported(p)) if name.startswith(forbidden)]
    assert not bad, "\n".join(bad)


def private_names(path: Path) -> set[str]:
    """Names starting with ``_`` (not dunders, not the file's own ``self._x``) that a file uses or imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        own = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and not own:
            out.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(PROJECT)):
            out |= {a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")}
    return out


PROJECT = ("napari_imedsam", "src_training", "benchmarks")


def test_benchmarks_use_public_names_only():
    bad = [f"{p.relative_to(ROOT)} uses {name}" for p in sorted((ROOT / "benchmarks").rglob("*.py"))
           for name in sorted(private_names(p))]
    assert not bad, "\n".join(bad)


def test_every_layer_says_what_it_holds():
    folders = ["napari_imedsam/model", "napari_imedsam/io", "napari_imedsam/samples", "napari_imedsam/engine",
               "napari_imedsam/finetune", "napari_imedsam/widgets", "src_training"]
    quiet = [f for f in folders if not (ast.get_docstring(ast.parse((ROOT / f / "__init__.py").read_text())) or
                                        "").strip()]
    assert not quiet, quiet
