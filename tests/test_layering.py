"""Imports run one way (DESIGN.md section 3): model/io <- src_training <- engine <- widgets."""

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


@pytest.mark.parametrize("folder, forbidden", [
    ("napari_imedsam/model", ("napari_imedsam.engine", "napari_imedsam.widgets", "src_training", "qtpy", "napari.")),
    ("napari_imedsam/io", ("napari_imedsam.engine", "napari_imedsam.widgets", "src_training", "qtpy")),
    ("src_training", ("napari_imedsam.engine", "napari_imedsam.widgets", "qtpy", "napari.")),
    ("napari_imedsam/engine", ("napari_imedsam.widgets", "qtpy", "PyQt", "PySide")),
])
def test_imports_run_one_way(folder, forbidden):
    bad = [f"{p.relative_to(ROOT)} imports {name}" for p in sorted((ROOT / folder).rglob("*.py"))
           for name in sorted(imported(p)) if name.startswith(forbidden)]
    assert not bad, "\n".join(bad)
