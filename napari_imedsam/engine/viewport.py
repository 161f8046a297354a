"""Camera -> image-region math for the high-resolution view, and box/rectangle conversions (no Qt).

Two coordinate frames meet here:

* napari *data* coordinates of an image layer put pixel **centres** at integers: pixel (r, c) spans
  [r - 0.5, r + 0.5] x [c - 0.5, c + 0.5]; world = data * scale + translate (per displayed axis).
* the engine's *image* frame puts pixel **edges** at integers: pixel (r, c) spans [r, r + 1] x [c, c + 1].

So image = data + 0.5. A region (y0, x0, y1, x1) of the image frame rendered at ``out_shape`` is shown by
a layer whose pixel (i, j) has its centre at image y = y0 + (i + 0.5) * (y1 - y0) / h, i.e. data
y0 + (i + 0.5) * dy - 0.5; :func:`region_transform` gives that layer's ``scale`` and ``translate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Region = tuple[float, float, float, float]  # (y0, x0, y1, x1), image frame
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), image frame


@dataclass(frozen=True)
class View:
    """A region of the image frame and the output grid it is rendered on."""

    region: Region
    out_shape: tuple[int, int]

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Image pixels per output pixel along (y, x)."""
        y0, x0, y1, x1 = self.region
        return (y1 - y0) / self.out_shape[0], (x1 - x0) / self.out_shape[1]

    @property
    def density(self) -> float:
        """Output pixels per image pixel (the larger of the two axes)."""
        dy, dx = self.pixel_size
        return 1.0 / min(dy, dx)


def data_to_image(yx: np.ndarray) -> np.ndarray:
    """napari data coordinates (pixel centres at integers) -> image frame (pixel edges at integers)."""
    return np.asarray(yx, dtype=float) + 0.5


def image_to_data(yx: np.ndarray) -> np.ndarray:
    return np.asarray(yx, dtype=float) - 0.5


def rectangle_to_box(vertices_yx: np.ndarray) -> Box:
    """Vertices (N, 2) of a napari rectangle in the image layer's (y, x) data coordinates -> the box
    (x0, y0, x1, y1) in the image frame. The rectangle's outline is where the user drew it, so its corner
    at data (-0.5, -0.5) is the top-left edge of pixel (0, 0): image = data + 0.5."""
    v = data_to_image(np.asarray(vertices_yx, dtype=float)[:, -2:])
    return float(v[:, 1].min()), float(v[:, 0].min()), float(v[:, 1].max()), float(v[:, 0].max())


def box_to_rectangle(box: Sequence[float]) -> np.ndarray:
    """Inverse of :func:`rectangle_to_box`: the 4 (y, x) corners in data coordinates."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return image_to_data(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]))


def clip_box(box: Sequence[float], image_hw: tuple[int, int]) -> Box | None:
    """The box clipped to the image, or None when nothing of it (with area) is left."""
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    h, w = image_hw
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    return cx0, cy0, cx1, cy1


def pixel_bbox(box: Sequence[float], image_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the whole pixels touched by a box (clipped to the image), for slicing."""
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = image_hw
    r0, c0 = max(0, math.floor(y0)), max(0, math.floor(x0))
    r1, c1 = min(h, math.ceil(y1)), min(w, math.ceil(x1))
    return r0, max(r0 + 1, r1), c0, max(c0 + 1, c1)


def centres_in_box(region: Region, out_shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Boolean (h, w): which output pixels of ``region`` at ``out_shape`` have their centre inside
    ``box``. A box prompt says the object lies in the box, so masks are clipped to it."""
    y0, x0, y1, x1 = region
    h, w = out_shape
    ys = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    iy = (ys >= box[1]) & (ys <= box[3])
    ix = (xs >= box[0]) & (xs <= box[2])
    return iy[:, None] & ix[None, :]


def visible_view(center_yx: Sequence[float], zoom: float, canvas_hw: Sequence[int],
                 scale_yx: Sequence[float], translate_yx: Sequence[float], image_hw: tuple[int, int],
                 max_side: int = 2048) -> View | None:
    """The part of the image visible on the canvas, and the screen-resolution grid to render it on.

    ``center_yx`` (world) and ``zoom`` (canvas pixels per world unit) come from the camera, ``canvas_hw``
    from the canvas; ``scale_yx``/``translate_yx`` are the image layer's transform along the displayed
    axes. The region is clipped to the image; None when no image pixel is visible. ``out_shape`` has one
    output pixel per screen pixel, shrunk uniformly to ``max_side`` at most."""
    sy, sx = (float(v) for v in scale_yx)
    ty, tx = (float(v) for v in translate_yx)
    half_h = float(canvas_hw[0]) / (2.0 * zoom)
    half_w = float(canvas_hw[1]) / (2.0 * zoom)
    cy, cx = float(center_yx[-2]), float(center_yx[-1])
    # world -> data -> image frame; a negative scale flips the interval
    ya, yb = sorted(((cy - half_h - ty) / sy + 0.5, (cy + half_h - ty) / sy + 0.5))
    xa, xb = sorted(((cx - half_w - tx) / sx + 0.5, (cx + half_w - tx) / sx + 0.5))
    h, w = image_hw
    y0, y1, x0, x1 = max(ya, 0.0), min(yb, float(h)), max(xa, 0.0), min(xb, float(w))
    if y1 <= y0 or x1 <= x0:
        return None
    dens_y, dens_x = zoom * abs(sy), zoom * abs(sx)  # screen pixels per image pixel
    oh, ow = max(1, math.ceil((y1 - y0) * dens_y - 1e-6)), max(1, math.ceil((x1 - x0) * dens_x - 1e-6))
    shrink = min(1.0, max_side / max(oh, ow))
    if shrink < 1.0:
        oh, ow = max(1, math.ceil(oh * shrink)), max(1, math.ceil(ow * shrink))
    # keep output pixels exactly 1/density image pixels: extend the region to a whole number of them
    y1 = y0 + oh / (dens_y * shrink)
    x1 = x0 + ow / (dens_x * shrink)
    return View((y0, x0, y1, x1), (oh, ow))


def sub_view(view: View, box: Sequence[float]) -> tuple[View, tuple[int, int, int, int]] | None:
    """The rows/columns of ``view``'s grid that cover ``box``: (View of that window, (i0, i1, j0, j1)).
    Rendering each object only inside its box keeps the high-resolution view cheap."""
    y0, x0, _, _ = view.region
    dy, dx = view.pixel_size
    h, w = view.out_shape
    i0, i1 = max(0, math.floor((box[1] - y0) / dy)), min(h, math.ceil((box[3] - y0) / dy))
    j0, j1 = max(0, math.floor((box[0] - x0) / dx)), min(w, math.ceil((box[2] - x0) / dx))
    if i1 <= i0 or j1 <= j0:
        return None
    region = (y0 + i0 * dy, x0 + j0 * dx, y0 + i1 * dy, x0 + j1 * dx)
    return View(region, (i1 - i0, j1 - j0)), (i0, i1, j0, j1)


def region_transform(region: Region, out_shape: tuple[int, int], scale_yx: Sequence[float],
                     translate_yx: Sequence[float]) -> tuple[tuple[float, float], tuple[float, float]]:
    """``scale`` and ``translate`` (y, x) of a layer holding ``region`` rendered at ``out_shape`` so that
    it overlays the image layer (``scale_yx``, ``translate_yx``) exactly."""
    y0, x0, y1, x1 = region
    dy, dx = (y1 - y0) / out_shape[0], (x1 - x0) / out_shape[1]
    sy, sx = (float(v) for v in scale_yx)
    ty, tx = (float(v) for v in translate_yx)
    scale = (dy * sy, dx * sx)
    translate = (ty + (y0 + 0.5 * dy - 0.5) * sy, tx + (x0 + 0.5 * dx - 0.5) * sx)
    return scale, translate
