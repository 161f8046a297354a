"""Prompts in the image's pixel frame (no Qt): a box, clicks with labels, a previous mask; checked once, with
a cache key, and turned into the model input's frame (as segment-anything's predictor does)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..model.preprocess import Prepared, validate_box

#: The mask prompt outside the image (SAM's padding is background).
MASK_PAD_LOGIT = -20.0


@dataclass(frozen=True)
class Prompt:
    """A checked prompt. ``points`` (N, 2) are (x, y) image pixels, ``labels`` (N,) 1 object / 0 background;
    ``mask`` the previous prediction's logits on the image grid (H, W)."""

    box: tuple[float, float, float, float] | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    mask: np.ndarray | None = None
    mask_digest: str | None = None

    def key(self) -> tuple:
        """What the decoder's output depends on (points rounded to 1e-3 px)."""
        box = None if self.box is None else tuple(round(v, 4) for v in self.box)
        pts = None if self.points is None else tuple(map(tuple, np.round(self.points, 3).tolist()))
        labels = None if self.labels is None else tuple(int(v) for v in self.labels)
        return box, pts, labels, self.mask_digest


def make_prompt(box, points, point_labels, mask_prompt, image_hw: tuple[int, int]) -> Prompt:
    """Check a prompt against the image; a ``ValueError`` says what is wrong (NaN, a click outside the image,
    labels other than 0/1, as many labels as clicks, a mask of another size, no prompt at all)."""
    h, w = image_hw
    clicks = labels = None
    if points is not None and np.size(points) > 0:
        clicks = np.asarray(points)
        if clicks.dtype.kind not in "iuf" or clicks.ndim > 2 or clicks.size % 2 or \
                (clicks.ndim == 2 and clicks.shape[1] != 2):
            raise ValueError(f"points must be (x, y) pairs in image pixels, e.g. [[x, y], ...]; got {points!r:.80}.")
        clicks = clicks.astype(np.float64).reshape(-1, 2)
        if not np.isfinite(clicks).all():
            raise ValueError(f"points hold non-finite coordinates: {clicks.tolist()!r:.120}.")
        outside = (clicks[:, 0] < 0) | (clicks[:, 0] > w) | (clicks[:, 1] < 0) | (clicks[:, 1] > h)
        if outside.any():
            raise ValueError(f"Click {clicks[outside][0].tolist()} lies outside the {w}x{h} image "
                             "(points are (x, y) in image pixels).")
        if point_labels is None:
            raise ValueError("points need point_labels: 1 for the object, 0 for background, one per point.")
        labels = np.asarray(point_labels).reshape(-1)
        if labels.dtype.kind not in "iufb" or len(labels) != len(clicks):
            raise ValueError(f"point_labels must be one 0/1 per point: {len(clicks)} points, got {point_labels!r:.80}.")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point_labels must be 1 (object) or 0 (background), got {labels.tolist()!r:.80}.")
        labels = labels.astype(np.int64)
    elif point_labels is not None and np.size(point_labels) > 0:
        raise ValueError("point_labels were given without points.")
    clipped = None if box is None else validate_box(box, image_hw)
    if clipped is None and clicks is None:
        raise ValueError("No prompt: give a box (x0, y0, x1, y1), or points with point_labels, or both.")
    mask = digest = None
    if mask_prompt is not None:
        mask = np.asarray(mask_prompt)
        if mask.dtype.kind not in "iufb" or mask.shape != (h, w):
            raise ValueError(f"mask_prompt must be the previous logits on the image grid ({h}x{w}); got "
                             f"{getattr(mask, 'shape', None)} {mask.dtype}.")
        mask = mask.astype(np.float32)
        if not np.isfinite(mask).all():
            raise ValueError("mask_prompt holds non-finite values.")
        digest = hashlib.sha256(mask.tobytes()).hexdigest()[:16]
    return Prompt(clipped, clicks, labels, mask, digest)


def mask_input(mask: np.ndarray, prep: Prepared, grid: tuple[int, int], size: int,
               device: torch.device) -> torch.Tensor:
    """The image-grid logits resampled to SAM's mask-input grid (``grid`` over the padded ``size``-pixel
    input, the image at its top-left), background outside the image: (1, 1, *grid)."""
    vh, vw = prep.valid_hw
    gh, gw = grid
    th, tw = max(1, int(round(vh * gh / size))), max(1, int(round(vw * gw / size)))
    src = torch.from_numpy(mask)[None, None]
    small = F.interpolate(src, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
    out = torch.full((1, 1, gh, gw), MASK_PAD_LOGIT)
    out[..., : min(th, gh), : min(tw, gw)] = small[..., :gh, :gw]
    return out.to(device)
