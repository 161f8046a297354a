"""Box prompts from masks: xyxy in pixel-edge coordinates, tight or randomly jittered outwards.

Convention: x0 = min column, y0 = min row, x1 = max column + 1, y1 = max row + 1 (the box covers
whole pixels; a one-pixel object at (row 3, col 5) has the box (5, 3, 6, 4)).
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def mask_to_box(mask: np.ndarray, margin: float = 0.0, min_margin: float = 0.0) -> np.ndarray:
    """The xyxy box (float32) of a 2-D mask's foreground: tight by default; with ``margin`` grown by that
    fraction of its size per side (at least ``min_margin`` pixels) and clipped to the image, as 3-D
    propagation prompts the next slice. ValueError for an empty mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    if margin < 0 or min_margin < 0:
        raise ValueError(f"margin and min_margin must be >= 0, got {margin} and {min_margin}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot make a box from an empty mask")
    x0, y0, x1, y1 = float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)
    if margin or min_margin:
        my, mx = max(min_margin, margin * (y1 - y0)), max(min_margin, margin * (x1 - x0))
        h, w = mask.shape
        x0, y0, x1, y1 = max(0.0, x0 - mx), max(0.0, y0 - my), min(float(w), x1 + mx), min(float(h), y1 + my)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def jitter_box(
    box: np.ndarray,
    image_shape: tuple[int, ...],
    max_shift: int,
    rng: np.random.Generator,
    mode: Literal["outward", "both"] = "outward",
) -> np.ndarray:
    """Move each side by a random whole number of pixels in [0, max_shift], then clip to the image.

    ``outward`` (default, as MedSAM and I-MedSAM train) only enlarges the box, so it still contains the
    object; ``both`` may also shrink a side, by less than half the box size so the box never collapses.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if mode not in ("outward", "both"):
        raise ValueError(f"mode must be 'outward' or 'both', got {mode!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    shifts = rng.integers(0, max_shift + 1, size=4).astype(np.float64)
    if mode == "both":
        signs = rng.choice([-1.0, 1.0], size=4)
        max_in = (np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0]) - 1) // 2  # keeps >= 1 px per axis
        shifts = np.where(signs < 0, -np.minimum(shifts, np.maximum(max_in, 0)), shifts)
    h, w = image_shape[:2]
    out = np.array([x0 - shifts[0], y0 - shifts[1], x1 + shifts[2], y1 + shifts[3]])
    out = np.clip(out, 0, [w, h, w, h])
    return out.astype(np.float32)


def box_from_mask(
    mask: np.ndarray,
    jitter: int = 0,
    rng: np.random.Generator | None = None,
    mode: Literal["outward", "both"] = "outward",
) -> np.ndarray:
    """The box prompt for a mask: tight when ``jitter`` is 0 (evaluation), jittered for training.

    Training passes ``jitter`` (the paper uses 20 px) and its own ``np.random.Generator`` so that runs
    are reproducible.
    """
    box = mask_to_box(mask)
    if jitter == 0:
        return box
    if rng is None:
        raise ValueError("a jittered box needs rng (a numpy Generator) so that it is reproducible")
    return jitter_box(box, np.shape(mask), jitter, rng, mode)
