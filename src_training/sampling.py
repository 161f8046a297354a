"""Where the training loss looks: the one query-point sampler (CLI, torchrun and the fine-tune widget).

Uniform points over the whole image starve small objects: a 250-px nucleus in a 512x512 image gets ~4 of
4096 points, and the loss becomes far background that the backbone already gets right. ``PointMix`` puts
the points where the answer is decided:

- ``box``: uniform in the object's box grown by ``margin`` x its size on every side (inside, just outside);
- ``boundary``: within ``band`` image pixels of the mask's edge, at continuous (sub-pixel) positions;
- ``uniform``: over the whole valid image, so far background stays right.

The shares are normalised; ``PointMix.uniform_only()`` is the plain uniform sampler, and ``points=None`` in
the trainer is still the paper's whole label grid. The fine head's top-K uncertain points (UGS) are chosen
by the model among the sampled points. All coordinates are continuous (x, y) in encoder-input pixels inside
the valid (unpadded) region; the mask may be finer than the image (``scale_yx`` maps mask px -> input px).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: Chosen by measurement (benchmarks/finetune_curve.py, DSB nuclei and the CT phantom; see docs/benchmarks.md).
DEFAULT_MIX = dict(box=0.5, boundary=0.3, uniform=0.2, margin=0.25, band=3.0)


@dataclass(frozen=True)
class PointMix:
    """Shares of the three point sources, the box margin (fraction of the box size) and the boundary band
    (half-width in image pixels)."""

    box: float = DEFAULT_MIX["box"]
    boundary: float = DEFAULT_MIX["boundary"]
    uniform: float = DEFAULT_MIX["uniform"]
    margin: float = DEFAULT_MIX["margin"]
    band: float = DEFAULT_MIX["band"]

    def __post_init__(self) -> None:
        shares = (self.box, self.boundary, self.uniform)
        if min(shares) < 0 or sum(shares) <= 0 or not all(np.isfinite(shares)):
            raise ValueError(f"point shares must be >= 0 with a positive sum, got box={self.box}, "
                             f"boundary={self.boundary}, uniform={self.uniform}")
        if self.margin < 0 or self.band <= 0:
            raise ValueError(f"margin must be >= 0 and band > 0, got margin={self.margin}, band={self.band}")

    @classmethod
    def uniform_only(cls) -> PointMix:
        return cls(box=0.0, boundary=0.0, uniform=1.0)

    def counts(self, n: int) -> tuple[int, int, int]:
        """(box, boundary, uniform) point counts summing to ``n``."""
        total = self.box + self.boundary + self.uniform
        n_box = int(round(n * self.box / total))
        n_bnd = min(n - n_box, int(round(n * self.boundary / total)))
        return n_box, n_bnd, n - n_box - n_bnd

    def to_dict(self) -> dict:
        return asdict(self)


def uniform_points(valid_hw: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform continuous points in the valid region, (n, 2) as (x, y) in input pixels."""
    h, w = valid_hw
    return (rng.random((n, 2)) * np.array([w, h])).astype(np.float32)


def box_points(box_xyxy: np.ndarray, margin: float, bounds_wh: tuple[float, float], n: int,
               rng: np.random.Generator) -> np.ndarray:
    """``n`` uniform points in ``box_xyxy`` grown by ``margin`` x its size per side, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    gx, gy = margin * (x1 - x0), margin * (y1 - y0)
    w, h = bounds_wh
    lo = np.array([max(0.0, x0 - gx), max(0.0, y0 - gy)])
    hi = np.array([min(w, x1 + gx), min(h, y1 + gy)])
    hi = np.maximum(hi, lo + 1e-3)
    return (lo + rng.random((n, 2)) * (hi - lo)).astype(np.float32)


def boundary_pixels(mask: np.ndarray, reach: int) -> np.ndarray:
    """(row, col) of the pixels on either side of the mask's edge (inner and outer ring), searched only in
    the mask's bounding box grown by ``reach`` (cheap for small objects in large images)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    r0, r1 = max(0, rows[0] - reach), min(mask.shape[0], rows[-1] + 1 + reach)
    c0, c1 = max(0, cols[0] - reach), min(mask.shape[1], cols[-1] + 1 + reach)
    crop = mask[r0:r1, c0:c1]
    # border_value=1: the image's own border is not an edge of the object
    inner = crop & ~ndimage.binary_erosion(crop, border_value=1)
    outer = ndimage.binary_dilation(crop) & ~crop
    rr, cc = np.nonzero(inner | outer)
    return np.stack([rr + r0, cc + c0], axis=-1)


def band_points(mask: np.ndarray, scale_yx: tuple[float, float], band: float, factor: int, n: int,
                rng: np.random.Generator) -> np.ndarray:
    """``n`` points within ``band`` image pixels of the mask's edge (continuous offsets around edge pixels),
    in input pixels; empty when the mask has no edge (it fills the image)."""
    band_mask = band * factor  # mask pixels
    edge = boundary_pixels(mask, int(np.ceil(band_mask)) + 1)
    if len(edge) == 0 or n == 0:
        return np.empty((0, 2), dtype=np.float32)
    pick = edge[rng.integers(0, len(edge), size=n)]
    centre = pick[:, ::-1].astype(np.float64) + 0.5  # (x, y) pixel centres in mask pixels
    offset = (rng.random((n, 2)) * 2.0 - 1.0) * max(band_mask - 0.5, 0.5)
    xy = centre + offset
    h, w = mask.shape
    xy = np.clip(xy, 1e-3, [w - 1e-3, h - 1e-3])
    return (xy * np.array([scale_yx[1], scale_yx[0]])).astype(np.float32)


def sample_points(mask: np.ndarray, box_input: np.ndarray, valid_hw: tuple[int, int],
                  scale_yx: tuple[float, float], n: int, mix: PointMix, rng: np.random.Generator,
                  factor: int = 1) -> np.ndarray:
    """``n`` query points for one object, (n, 2) (x, y) in input pixels, drawn by ``mix``.

    ``box_input``: the (jittered) prompt box in input pixels; ``factor``: mask pixels per image pixel."""
    n_box, n_bnd, n_uni = mix.counts(n)
    bnd = band_points(mask, scale_yx, mix.band, factor, n_bnd, rng)
    n_box += n_bnd - len(bnd)  # no edge (the mask fills the image): those points go to the box
    h, w = valid_hw
    parts = [box_points(box_input, mix.margin, (float(w), float(h)), n_box, rng), bnd,
             uniform_points(valid_hw, n_uni, rng)]
    return np.concatenate(parts, axis=0).astype(np.float32)
