"""Rendering math: the query points of an output grid over a (possibly fractional) region of the image,
and adaptive evaluation that queries the INR only where the mask boundary can be."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

OUTSIDE_LOGIT = -30.0  # value outside the image: probability ~0


@dataclass
class RenderStats:
    evaluated: int  # points rendered (each costs at least a sample of the backbone's logit)
    pixels: int
    levels: int
    inr_points: int = 0  # of those, where the INR heads ran (the answer was not settled by the bound)
    fine_points: int = 0  # ... and where the fine head replaced the coarse one

    @property
    def fraction(self) -> float:
        return self.evaluated / max(1, self.pixels)


def pixel_centres(region: tuple[float, float, float, float], out_shape: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Image-pixel y and x of the centre of every output pixel when ``region`` (y0, x0, y1, x1) is
    rendered at ``out_shape`` (h, w)."""
    y0, x0, y1, x1 = (float(v) for v in region)
    h, w = out_shape
    ys = y0 + (np.arange(h) + 0.5) * (y1 - y0) / h
    xs = x0 + (np.arange(w) + 0.5) * (x1 - x0) / w
    return ys, xs


def _lattice(n: int, step: int) -> np.ndarray:
    return np.unique(np.r_[np.arange(0, n, step), n - 1])


def _interp_axis(values: np.ndarray, lattice: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation along ``axis`` from lattice positions to the positions ``pos``."""
    i0 = np.clip(np.searchsorted(lattice, pos, side="right") - 1, 0, max(0, len(lattice) - 2))
    i1 = np.minimum(i0 + 1, len(lattice) - 1)
    span = np.maximum(lattice[i1] - lattice[i0], 1)
    t = np.clip((pos - lattice[i0]) / span, 0.0, 1.0).astype(np.float32)
    a, b = np.take(values, i0, axis=axis), np.take(values, i1, axis=axis)
    shape = [1, 1]
    shape[axis] = len(pos)
    t = t.reshape(shape)
    return a * (1 - t) + b * t


def _interp2(lat: np.ndarray, ly: np.ndarray, lx: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    return _interp_axis(_interp_axis(lat, ly, py, 0), lx, px, 1)


def _dilate3(mask: np.ndarray) -> np.ndarray:
    """``mask`` grown by one cell in all 8 directions (a 3x3 binary dilation, done as two 1-D passes)."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def _cell_of(lattice: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Index of the lattice cell (between lattice[i] and lattice[i + 1]) holding each position."""
    return np.clip(np.searchsorted(lattice, pos, side="right") - 1, 0, max(0, len(lattice) - 2))


def render_logits(
    evaluate: Callable[[np.ndarray], np.ndarray],
    region: tuple[float, float, float, float],
    out_shape: tuple[int, int],
    image_hw: tuple[int, int],
    dense: bool = False,
    margin: float = 1.0,
    max_step: int = 8,
) -> tuple[np.ndarray, RenderStats]:
    """Logits of the output grid. ``evaluate(xy)`` maps (N, 2) image-pixel (x, y) points to (N,) logits.

    Adaptive (default): evaluate a lattice every ``g`` output pixels (g ~ 2 image pixels, at most
    ``max_step``), interpolate, and halve ``g`` only inside cells whose corners straddle the decision
    boundary or lie within ``margin`` of it (plus one cell around them), down to every pixel. Elsewhere the
    interpolated logit keeps the sign of its corners, so the mask equals the dense one except for
    structures thinner than a cell. The margin shrinks with cells smaller than an image pixel
    (high zoom). Points outside the image are not evaluated (logit ``OUTSIDE_LOGIT``).
    """
    h, w = int(out_shape[0]), int(out_shape[1])
    ys, xs = pixel_centres(region, (h, w))
    inside = ((ys >= 0) & (ys < image_hw[0]))[:, None] & ((xs >= 0) & (xs < image_hw[1]))[None, :]
    val = np.full((h, w), np.nan, dtype=np.float32)
    if not inside.all():
        val[~inside] = OUTSIDE_LOGIT
    evaluated = 0

    def run(mask: np.ndarray) -> None:
        nonlocal evaluated
        rr, cc = np.nonzero(mask)
        if rr.size:
            val[rr, cc] = evaluate(np.stack([xs[cc], ys[rr]], axis=-1))
            evaluated += rr.size

    if dense:
        run(inside)
        return val, RenderStats(evaluated, h * w, 1)

    y0, x0, y1, x1 = (float(v) for v in region)
    out_per_image_px = max(h / max(y1 - y0, 1e-9), w / max(x1 - x0, 1e-9))
    step = 1
    while step * 2 <= min(max_step, 2.0 * out_per_image_px):
        step *= 2
    # Work on the lattice of each level only (never a full-size array until the last level, step 1):
    # ``act`` says which lattice points lie in a cell to refine, ``est`` the previous level's estimate there.
    ly, lx = _lattice(h, step), _lattice(w, step)
    act = np.ones((len(ly), len(lx)), dtype=bool)
    est = None
    levels = 0
    while True:
        levels += 1
        full = step == 1  # the last level's lattice is every pixel: work in ``val`` itself, no gathered copy
        lat = val if full else val[np.ix_(ly, lx)]
        missing = np.isnan(lat)
        rr, cc = np.nonzero(act & missing)
        if rr.size:
            got = evaluate(np.stack([xs[lx[cc]], ys[ly[rr]]], axis=-1))
            lat[rr, cc] = got
            if not full:
                val[ly[rr], lx[cc]] = got
            missing[rr, cc] = False
            evaluated += rr.size
        if est is not None:
            np.copyto(lat, est, where=missing)
        if full:
            return lat, RenderStats(evaluated, h * w, levels)
        lo = np.minimum(np.minimum(lat[:-1, :-1], lat[1:, :-1]), np.minimum(lat[:-1, 1:], lat[1:, 1:]))
        hi = np.maximum(np.maximum(lat[:-1, :-1], lat[1:, :-1]), np.maximum(lat[:-1, 1:], lat[1:, 1:]))
        # a cell far below an image pixel cannot hide a whole structure: shrink the margin with it
        m = margin * min(1.0, step / out_per_image_px)
        flagged = (lo < m) & (hi > -m)
        if flagged.size:
            flagged = _dilate3(flagged)
        step //= 2
        ny, nx = _lattice(h, step), _lattice(w, step)
        est = _interp2(lat, ly, lx, ny, nx)
        rows, cols = _cell_of(ly, ny), _cell_of(lx, nx)
        if flagged.size:
            # a point belongs to its cell and, on a lattice line, to the cell before it (and, at a lattice
            # corner, the diagonal one): rows first, then columns, so that full-size arrays are made once
            on_y, on_x = np.isin(ny, ly[1:-1]), np.isin(nx, lx[1:-1])
            by_row = flagged[rows]
            if on_y.any():
                by_row |= flagged[np.maximum(rows - 1, 0)] & on_y[:, None]
            act = np.take(by_row, cols, axis=1)  # np.take: 2x faster than fancy indexing along columns
            if on_x.any():
                act |= np.take(by_row, np.maximum(cols - 1, 0), axis=1) & on_x[None, :]
        else:
            act = np.ones((len(ny), len(nx)), dtype=bool)
        ly, lx = ny, nx
