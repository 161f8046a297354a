"""Which object to check next: the committed objects ranked by how unsure the model is of their masks.

The score of an object is the mean MC-dropout variance of the coarse head over its box (at a coarse grid:
a ranking, not a picture). With a trained head that variance is high where the mask is wrong
(``benchmarks/accuracy.py`` reports the ratio), so correcting the least sure object first pays most.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .objects import SegObject
from .segmenter import Segmenter, SliceImage


def object_uncertainty(segmenter: Segmenter, src: SliceImage, obj: SegObject, max_side: int = 48) -> float:
    """Mean MC-dropout variance over ``obj``'s box on its slice ``src``."""
    var, _ = segmenter.uncertainty(src, obj.box, max_side=max_side)
    return float(np.mean(var)) if var.size else 0.0


def rank_by_uncertainty(segmenter: Segmenter, items: Iterable[tuple[SliceImage, SegObject]],
                        cancelled: Callable[[], bool] | None = None) -> list[tuple[float, SegObject]]:
    """``(score, object)`` for each (slice, object), least sure first; objects whose box no longer fits
    their image are left out."""
    out = []
    for src, obj in items:
        if cancelled is not None and cancelled():
            break
        try:
            out.append((object_uncertainty(segmenter, src, obj), obj))
        except ValueError:
            continue
    return sorted(out, key=lambda so: -so[0])


def next_to_review(ranked: Sequence[tuple[float, SegObject]], reviewed: set[int]) -> tuple[SegObject | None, bool]:
    """The least sure object not reviewed yet (by uid); when every object was, the least sure one again.
    Returns the object (None when there is none) and whether the review round started over."""
    if not ranked:
        return None, False
    for _, obj in ranked:
        if obj.uid not in reviewed:
            return obj, False
    return ranked[0][1], True
