"""Keyboard shortcuts of the Segment widget, bound on the viewer and on the boxes layer (per instance, so
nothing global changes), and listed in the widget's tooltip."""

from __future__ import annotations

import logging
from collections.abc import Callable

#: (napari key, shown as, widget method, what it does)
SHORTCUTS: tuple[tuple[str, str, str, str], ...] = (
    ("Control-Z", "Ctrl+Z", "undo", "undo the last mask commit (box, clear, propagation)"),
    ("Control-Shift-Z", "Ctrl+Shift+Z", "redo", "redo"),
    ("Shift-N", "Shift+N", "next_object", "start a new object (next free label id)"),
    ("Shift-X", "Shift+X", "clear_object", "clear the current object on this slice"),
    ("Shift-H", "Shift+H", "toggle_hires", "high-resolution (INR) view on/off"),
    ("Shift-U", "Shift+U", "toggle_uncertainty", "uncertainty overlay on/off"),
    ("Shift-T", "Shift+T", "propagate_both", "propagate the current object through the volume"),
    ("Shift-O", "Shift+O", "trace_contours", "trace the objects' outlines into a Shapes layer"),
    ("Shift-W", "Shift+W", "cycle_window", "next CT window preset"),
)


def tooltip() -> str:
    rows = "".join(f"<tr><td><b>{shown}</b></td><td>{what}</td></tr>" for _, shown, _, what in SHORTCUTS)
    return ("<b>Segment (I-MedSAM)</b><br>Draw rectangles on the <i>boxes</i> layer (napari: R); each box is "
            f"one object.<br><table>{rows}</table>")


def markdown_table() -> str:
    lines = ["| Key | Action |", "|---|---|"]
    lines += [f"| {shown} | {what} |" for _, shown, _, what in SHORTCUTS]
    return "\n".join(lines)


def bind(target, owner) -> list[str]:
    """Bind every shortcut on ``target`` (a viewer or a layer instance) to ``owner``'s methods; returns the
    keys bound, for :func:`unbind`. Keys the target already uses (e.g. a layer's own Ctrl+Z) are kept."""
    bound = []
    for key, _, method, _ in SHORTCUTS:
        func: Callable = getattr(owner, method)

        def handler(_target, func=func):
            func()

        try:
            target.bind_key(key, handler, overwrite=False)
        except (ValueError, TypeError):
            continue  # already bound by napari or the user: leave theirs
        bound.append(key)
    return bound


def unbind(target, keys: list[str]) -> None:
    for key in keys:
        try:
            target.bind_key(key, None)
        except (ValueError, TypeError, KeyError) as exc:  # already unbound (e.g. the layer was deleted)
            logging.getLogger(__name__).debug("shortcut %s was not bound any more: %s", key, exc)
