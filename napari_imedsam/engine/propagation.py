"""3-D propagation (no Qt): from a mask on one slice, prompt the next slice with the previous mask's box.

``propagate`` is a generator so that a worker can report progress after every slice and be cancelled
between slices. It stops when the mask vanishes, leaks (grows too fast), becomes unstable (SAM's stability
score: the mask changes a lot between logit thresholds -1 and +1, typical of a box over empty tissue),
moves to a different intensity than the object had, or at the slice limit / the volume's end.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from src_training.data.boxes import mask_to_box

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PropagationSettings:
    limit: int | None = None  # at most this many slices per direction
    margin: float = 0.1  # the next box is the mask's box grown by this fraction of its size per side
    min_margin: float = 2.0  # ... and by at least this many pixels
    min_area: int = 4  # pixels; a smaller mask counts as vanished
    max_growth: float = 2.0  # stop when the area grows more than this factor from one slice to the next
    min_stability: float = 0.75  # IoU of the masks at logit > +1 and logit > -1
    max_intensity_shift: float = 0.5  # of the seed's inside/outside contrast, in the model's [0, 1] image


@dataclass
class Step:
    slice: int
    mask: np.ndarray  # bool (H, W)
    box: Box  # the prompt used on this slice
    area: int
    stability: float


def stability(logits: np.ndarray, offset: float = 1.0) -> float:
    """SAM's stability score: |logit > +offset| / |logit > -offset| (1 for a crisp mask)."""
    loose = int((logits > -offset).sum())
    return float((logits > offset).sum()) / loose if loose else 0.0


def _contrast(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean inside the mask, and |inside - ring around it|."""
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    inside = float(image[mask].mean())
    outside = float(image[ring].mean()) if ring.any() else inside
    return inside, abs(inside - outside)


def propagate(
    segment: Callable[[int, Box], np.ndarray],
    start: int,
    seed_mask: np.ndarray,
    n_slices: int,
    direction: int,
    settings: PropagationSettings = PropagationSettings(),
    image: Callable[[int], np.ndarray] | None = None,
) -> Generator[Step, None, str]:
    """Yield a :class:`Step` per accepted slice from ``start + direction`` on; return why it stopped.

    ``segment(z, box)`` gives the logits (H, W) of slice ``z`` for ``box``; ``image(z)`` (optional) the
    slice as the model sees it, in [0, 1], for the intensity check."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 (up) or -1 (down), got {direction}.")
    prev = np.asarray(seed_mask, dtype=bool)
    if int(prev.sum()) < settings.min_area:
        return "the seed mask is empty"
    ref_mean = contrast = None
    if image is not None:
        ref_mean, contrast = _contrast(image(start), prev)
    z, done = start + direction, 0
    while 0 <= z < n_slices:
        if settings.limit is not None and done >= settings.limit:
            return f"reached the limit of {settings.limit} slices"
        box = tuple(float(v) for v in mask_to_box(prev, settings.margin, settings.min_margin))
        logits = np.asarray(segment(z, box))
        mask = logits > 0
        area = int(mask.sum())
        if area < settings.min_area:
            return f"the mask vanished on slice {z}"
        if area > settings.max_growth * int(prev.sum()):
            return f"the mask grew more than {settings.max_growth:g}x on slice {z} (leak)"
        stab = stability(logits)
        if stab < settings.min_stability:
            return f"the mask became uncertain on slice {z} (stability {stab:.2f})"
        if image is not None and contrast is not None and contrast > 0.02:
            mean, _ = _contrast(image(z), mask)
            if abs(mean - ref_mean) > settings.max_intensity_shift * contrast:
                return f"the mask moved to different tissue on slice {z}"
            ref_mean = mean
        yield Step(z, mask, box, area, stab)
        prev, z, done = mask, z + direction, done + 1
    return "reached the end of the volume"
