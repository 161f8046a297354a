"""Keyboard shortcuts of the Segment widget, bound on the viewer and on the boxes layer (per instance, so
nothing global changes), and listed in the widget's tooltip. The widget maps each key to a callable."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

#: (napari key, shown as, what it does)
SHORTCUTS: tuple[tuple[str, str, str], ...] = (
    ("Control-Z", "Ctrl+Z", "undo the last mask commit (box, click, clear, propagation)"),
    ("Control-Shift-Z", "Ctrl+Shift+Z", "redo"),
    ("Shift-N", "Shift+N", "start a new object (next free label id)"),
    ("Shift-X", "Shift+X", "clear the current object on this slice"),
    ("Shift-H", "Shift+H", "high-resolution (INR) view on/off"),
    ("Shift-U", "Shift+U", "uncertainty overlay on/off"),
    ("Shift-T", "Shift+T", "propagate the current object through the volume"),
    ("Shift-O", "Shift+O", "trace the objects' outlines into a Shapes layer"),
    ("Shift-W", "Shift+W", "next CT window preset"),
    ("Shift-P", "Shift+P", "clicks on the clicks layer: positive (add) / negative (remove)"),
    ("Shift-R", "Shift+R", "review: select the object the model is least sure of (next one on each press)"),
)
KEYS = tuple(key for key, _, _ in SHORTCUTS)


def tooltip() -> str:
    rows = "".join(f"<tr><td><b>{shown}</b></td><td>{what}</td></tr>" for _, shown, what in SHORTCUTS)
    return ("<b>Segment (I-MedSAM)</b><br>Draw rectangles on the <i>boxes</i> layer (napari: R); each box is "
            f"one object.<br><table>{rows}</table>")


def markdown_table() -> str:
    lines = ["| Key | Action |", "|---|---|"]
    lines += [f"| {shown} | {what} |" for _, shown, what in SHORTCUTS]
    return "\n".join(lines)


def bind(target, actions: Mapping[str, Callable[[], None]]) -> list[str]:
    """Bind every shortcut on ``target`` (a viewer or a layer instance) to ``actions[key]``; returns the
    keys bound, for :func:`unbind`. Keys the target already uses (e.g. a layer's own Ctrl+Z) are kept."""
    missing = set(KEYS) - set(actions)
    if missing:
        raise ValueError(f"no action for the shortcut(s) {sorted(missing)}")
    bound = []
    for key in KEYS:
        func = actions[key]

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
