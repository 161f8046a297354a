"""High-resolution label export (no Qt): upsample a label slice ``factor`` times, re-deciding the pixels
along each object's boundary with its INR rendering instead of copying blocks.

Where an object's box is known, the INR decides every fine pixel within one image pixel of the committed
object's boundary; inside and outside that band the committed labels (including hand edits) are kept, so a
mask that was erased or painted by hand is respected. Everything else is nearest-neighbour upsampled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy import ndimage

from .contours import object_view
from .objects import SegObject
from .viewport import Region, centres_in_box

# (object, region, out_shape) -> the object's probabilities over region at out_shape
ObjectRenderer = Callable[[SegObject, Region, tuple[int, int]], np.ndarray]


def upsample_nearest(labels: np.ndarray, factor: int) -> np.ndarray:
    """Repeat every pixel of the last two axes ``factor`` times."""
    if factor == 1:
        return np.array(labels, copy=True)
    return np.repeat(np.repeat(labels, factor, axis=-2), factor, axis=-1)


def refine_slice(coarse: np.ndarray, objects: Iterable[SegObject], render: ObjectRenderer, factor: int) -> np.ndarray:
    """``coarse`` (H, W) labels -> (H * factor, W * factor) labels with INR-rendered object boundaries."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}.")
    fine = upsample_nearest(coarse, factor)
    if factor == 1:
        return fine
    hw = coarse.shape
    for obj in objects:
        view = object_view(obj.box, hw, factor, pad=1)
        r0, c0, r1, c1 = (int(v) for v in view.region)
        sub = coarse[r0:r1, c0:c1]
        mine = sub == obj.label
        if not mine.any():
            continue  # cleared by hand since: nothing to refine
        edge = ndimage.binary_dilation(mine) & ~ndimage.binary_erosion(mine, border_value=1)
        band = upsample_nearest(edge & ((sub == obj.label) | (sub == 0)), factor)
        prob = np.asarray(render(obj, view.region, view.out_shape))
        inr = (prob > 0.5) & centres_in_box(view.region, view.out_shape, obj.box)
        patch = fine[r0 * factor : r1 * factor, c0 * factor : c1 * factor]
        patch[band & inr] = obj.label
        patch[band & ~inr & (patch == obj.label)] = 0
    return fine
