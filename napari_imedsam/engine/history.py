"""Multi-level undo/redo of label commits, storing only the changed bounding box of each commit.

Undo restores a pixel only where it still holds the committed value, and redo re-applies only where the
pixel still holds the pre-commit value: edits made by hand in between (napari's paint brush) survive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Index = tuple[Any, ...]  # a tuple of ints and slices into the label array


@dataclass
class Patch:
    index: Index
    before: np.ndarray
    after: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.before.nbytes + self.after.nbytes


@dataclass
class Change:
    """One undoable step: patches of one or more slices, and what it meant (e.g. objects added)."""

    patches: list[Patch] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    group: Any = None

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.patches)


def _shrink(index: Index, before: np.ndarray, after: np.ndarray) -> Patch | None:
    """Reduce a patch to the bounding box of the pixels that changed (None if nothing changed)."""
    diff = before != after
    if not diff.any():
        return None
    lo = [int(np.nonzero(diff.any(axis=tuple(a for a in range(diff.ndim) if a != k)))[0][0])
          for k in range(diff.ndim)]
    hi = [int(np.nonzero(diff.any(axis=tuple(a for a in range(diff.ndim) if a != k)))[0][-1]) + 1
          for k in range(diff.ndim)]
    sub = tuple(slice(a, b) for a, b in zip(lo, hi))
    # compose the sub-box with the original index (ints drop an axis, slices start somewhere)
    new_index, k = [], 0
    for item in index:
        if isinstance(item, slice):
            start = item.start or 0
            new_index.append(slice(start + sub[k].start, start + sub[k].stop))
            k += 1
        else:
            new_index.append(item)
    return Patch(tuple(new_index), before[sub].copy(), after[sub].copy())


class History:
    """Undo/redo stack of :class:`Change` s applied to one label array.

    ``max_levels`` and ``max_bytes`` bound the memory; the oldest steps are forgotten first."""

    def __init__(self, max_levels: int = 100, max_bytes: int = 512 * 2**20):
        self.max_levels = int(max_levels)
        self.max_bytes = int(max_bytes)
        self._undo: list[Change] = []
        self._redo: list[Change] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def __len__(self) -> int:
        return len(self._undo)

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    def commit(self, labels: np.ndarray, index: Index, new_values: np.ndarray,
               meta: dict[str, Any] | None = None, group: Any = None) -> Change | None:
        """Write ``new_values`` into ``labels[index]`` and record it. With ``group`` equal to the last
        step's group the patch joins that step (one undo for a whole propagation). Returns the step, or
        None when nothing changed and there is no meta to record."""
        index = tuple(index)
        before = np.array(labels[index], copy=True)
        labels[index] = new_values
        patch = _shrink(index, before, np.asarray(labels[index]))
        if group is not None and self._undo and self._undo[-1].group == group:
            change = self._undo[-1]
            if patch is not None:
                change.patches.append(patch)
            for key, value in (meta or {}).items():
                if isinstance(value, list):
                    change.meta.setdefault(key, []).extend(value)
                else:
                    change.meta[key] = value
        else:
            if patch is None and not meta:
                return None
            change = Change([patch] if patch is not None else [], dict(meta or {}), group)
            self._undo.append(change)
        self._redo.clear()
        self._trim()
        return change

    def _trim(self) -> None:
        while len(self._undo) > self.max_levels:
            self._undo.pop(0)
        while len(self._undo) > 1 and sum(c.nbytes for c in self._undo) > self.max_bytes:
            self._undo.pop(0)

    @staticmethod
    def _apply(labels: np.ndarray, change: Change, undo: bool) -> None:
        patches = reversed(change.patches) if undo else change.patches
        for p in patches:
            current = np.array(labels[p.index], copy=True)
            src, dst = (p.after, p.before) if undo else (p.before, p.after)
            keep = current == src  # untouched since: safe to restore
            current[keep] = dst[keep]
            labels[p.index] = current

    def undo(self, labels: np.ndarray) -> Change | None:
        """Revert the last step on ``labels``; returns it (its ``meta`` says what to revert besides)."""
        if not self._undo:
            return None
        change = self._undo.pop()
        self._apply(labels, change, undo=True)
        self._redo.append(change)
        return change

    def redo(self, labels: np.ndarray) -> Change | None:
        if not self._redo:
            return None
        change = self._redo.pop()
        self._apply(labels, change, undo=False)
        self._undo.append(change)
        return change

    def touched_slices(self, change: Change, key: Callable[[Index], Any] | None = None) -> set:
        """The distinct leading indices (e.g. z of a volume) a step wrote, for refreshing views."""
        key = key or (lambda idx: idx[0] if idx and not isinstance(idx[0], slice) else None)
        return {key(p.index) for p in change.patches}


def paste_mask(current: np.ndarray, mask: np.ndarray, label: int, replace_label: bool = False) -> np.ndarray:
    """New values for a patch: ``label`` where ``mask``; with ``replace_label`` the pixels of the same
    label that the new mask no longer covers are cleared (re-segmenting an object replaces it)."""
    out = np.array(current, copy=True)
    if replace_label:
        out[(out == label) & ~mask] = 0
    out[mask] = label
    return out
