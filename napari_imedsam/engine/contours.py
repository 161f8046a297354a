"""Object outlines as polygons with sub-pixel vertices, traced on an INR rendering (no Qt).

The probability map of a region is rendered ``factor`` times finer than the image and traced with
``skimage.measure.find_contours`` at 0.5; vertices come back in the image layer's napari data coordinates
(pixel centres at integers), ready for a Shapes layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from skimage.measure import find_contours

from .viewport import Region, View, centres_in_box, pixel_bbox

Renderer = Callable[[Region, tuple[int, int]], np.ndarray]  # (region, out_shape) -> probabilities


def polygons_from_prob(prob: np.ndarray, region: Region, level: float = 0.5,
                       min_vertices: int = 4) -> list[np.ndarray]:
    """Closed polygons (N, 2) in (y, x) data coordinates of the ``level`` set of ``prob`` rendered over
    ``region`` (image frame). The map is padded with zeros so that every outline is closed."""
    h, w = prob.shape
    y0, x0, y1, x1 = region
    dy, dx = (y1 - y0) / h, (x1 - x0) / w
    padded = np.pad(np.asarray(prob, dtype=np.float32), 1, constant_values=0.0)
    out = []
    for c in find_contours(padded, level):
        if len(c) < min_vertices:
            continue
        rows, cols = c[:, 0] - 1, c[:, 1] - 1  # undo the padding
        # output index i has its centre at image y0 + (i + 0.5) dy, i.e. data y0 + (i + 0.5) dy - 0.5
        ys = y0 + (rows + 0.5) * dy - 0.5
        xs = x0 + (cols + 0.5) * dx - 0.5
        poly = np.stack([ys, xs], axis=1)
        if np.allclose(poly[0], poly[-1]):
            poly = poly[:-1]  # napari closes polygons itself
        if len(poly) >= min_vertices - 1:
            out.append(poly)
    return out


def object_view(box: Sequence[float], image_hw: tuple[int, int], factor: int, pad: int = 1) -> View:
    """The region around an object's box (whole pixels, ``pad`` pixels of margin) at ``factor`` x."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}.")
    r0, r1, c0, c1 = pixel_bbox(box, image_hw)
    r0, c0 = max(0, r0 - pad), max(0, c0 - pad)
    r1, c1 = min(image_hw[0], r1 + pad), min(image_hw[1], c1 + pad)
    return View((float(r0), float(c0), float(r1), float(c1)), ((r1 - r0) * factor, (c1 - c0) * factor))


def object_polygons(render: Renderer, box: Sequence[float], image_hw: tuple[int, int], factor: int = 4,
                    level: float = 0.5) -> list[np.ndarray]:
    """Trace one object: render its box region ``factor`` x finer, clip to the box, find contours."""
    view = object_view(box, image_hw, factor)
    prob = np.asarray(render(view.region, view.out_shape), dtype=np.float32)
    prob = np.where(centres_in_box(view.region, view.out_shape, box), prob, 0.0)
    return polygons_from_prob(prob, view.region, level)


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a closed (y, x) polygon, in pixels."""
    y, x = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
