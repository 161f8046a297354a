"""Slice-aware segmentation on one :class:`Predictor` (no Qt), safe to call from several worker threads.

A ``Predictor`` holds one image at a time. Workers for different slices (a box on slice 5, a
high-resolution render of slice 6, a propagation) must not interleave ``set_image`` and ``predict``;
``Segmenter`` holds a lock around each pair and re-sets the image only when the slice key changes (the
predictor's embedding cache makes returning to a slice cheap). Masks of a box prompt are clipped to the box.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

import numpy as np

from ..model.preprocess import image_to_unit, validate_box
from .objects import SegObject
from .predictor import Predictor
from .render import OUTSIDE_LOGIT
from .viewport import Region, View, centres_in_box, pixel_bbox, sub_view


@dataclass(frozen=True)
class SliceImage:
    """One 2-D image (grey or RGB) the model can see: a cache ``key`` (layer, slice, window, version), a
    loader (lazy, so that big or dask-backed data are read in the worker) and the CT window."""

    key: Hashable
    load: Callable[[], np.ndarray]
    window: tuple[float, float] | None = None


class Segmenter:
    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self._lock = threading.RLock()
        self._key: Hashable | None = None
        self._hw: tuple[int, int] | None = None

    # ---- model and image --------------------------------------------------------------------------------
    def set_model(self, model) -> None:
        """Swap the model; embeddings are recomputed on next use."""
        with self._lock:
            self.predictor.model = model
            self._key = None

    def invalidate(self) -> None:
        with self._lock:
            self.predictor.invalidate()
            self._key = None

    def use(self, src: SliceImage) -> tuple[int, int]:
        """Make ``src`` the predictor's image (runs the encoder unless cached); returns its (H, W)."""
        with self._lock:
            if src.key != self._key or self._hw is None:
                image = np.asarray(src.load())
                self.predictor.set_image(image, window=src.window)
                self._key, self._hw = src.key, tuple(image.shape[:2])
            return self._hw

    def model_image(self, src: SliceImage) -> np.ndarray:
        """The slice as the model sees it (window applied), grey, in [0, 1]."""
        return image_to_unit(np.asarray(src.load()), src.window).mean(axis=-1)

    # ---- single boxes -----------------------------------------------------------------------------------
    def box_logits(self, src: SliceImage, box) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Logits over the pixels of ``box`` (clipped to the image) and their (r0, r1, c0, c1).

        Raises ValueError (from the engine) for a zero-area box or one wholly outside the image."""
        with self._lock:
            hw = self.use(src)
            clipped = validate_box(box, hw)
            r0, r1, c0, c1 = pixel_bbox(clipped, hw)
            region = (float(r0), float(c0), float(r1), float(c1))
            shape = (r1 - r0, c1 - c0)
            logits = self.predictor.predict(clipped, out_shape=shape, region=region, return_logits=True)
        logits = np.where(centres_in_box(region, shape, clipped), logits, OUTSIDE_LOGIT)
        return logits.astype(np.float32), (r0, r1, c0, c1)

    def object_logits(self, src: SliceImage, obj: SegObject
                      ) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[float, float, float, float]]:
        """Like ``box_logits`` for an object with clicks: the logits over its extent (the box grown to hold
        the clicks; with clicks alone, the mask's extent), the pixel bbox, and that extent."""
        if not obj.clicks:
            logits, bbox = self.box_logits(src, obj.box)
            return logits, bbox, obj.box
        prompt = obj.prompt()
        with self._lock:
            hw = self.use(src)
            xy = np.array(prompt["points"], dtype=float)
            if prompt["box"] is not None:
                x0, y0, x1, y1 = validate_box(prompt["box"], hw)
            else:  # clicks alone: where the whole image's mask is
                full = self.predictor.predict(**prompt, return_logits=True)
                ys, xs = np.nonzero(full > 0)
                x0, y0 = min([*xs, *(xy[:, 0] - 0.5)]), min([*ys, *(xy[:, 1] - 0.5)])
                x1, y1 = max([*(xs + 1), *(xy[:, 0] + 0.5)]), max([*(ys + 1), *(xy[:, 1] + 0.5)])
            x0, y0 = max(0.0, min(x0, xy[:, 0].min() - 1)), max(0.0, min(y0, xy[:, 1].min() - 1))
            x1 = min(float(hw[1]), max(x1, xy[:, 0].max() + 1))
            y1 = min(float(hw[0]), max(y1, xy[:, 1].max() + 1))
            extent = (float(x0), float(y0), float(x1), float(y1))
            r0, r1, c0, c1 = pixel_bbox(extent, hw)
            region = (float(r0), float(c0), float(r1), float(c1))
            shape = (r1 - r0, c1 - c0)
            logits = self.predictor.predict(**prompt, out_shape=shape, region=region, return_logits=True)
        logits = np.where(centres_in_box(region, shape, extent), logits, OUTSIDE_LOGIT)
        return logits.astype(np.float32), (r0, r1, c0, c1), extent

    def full_logits(self, src: SliceImage, box) -> np.ndarray:
        """Logits (H, W) of the whole slice for ``box`` (outside the box: very negative)."""
        patch, (r0, r1, c0, c1) = self.box_logits(src, box)
        out = np.full(self._hw, OUTSIDE_LOGIT, dtype=np.float32)
        out[r0:r1, c0:c1] = patch
        return out

    def render_prob(self, src: SliceImage, box, region: Region, out_shape: tuple[int, int],
                    obj: SegObject | None = None) -> np.ndarray:
        """Probabilities of ``box``'s object (or of ``obj``, with its clicks, ``box`` its extent) over any
        region at any size, clipped to the box."""
        with self._lock:
            hw = self.use(src)
            clipped = validate_box(box, hw)
            prompt = obj.prompt() if obj is not None and obj.clicks else {"box": clipped}
            prob = self.predictor.predict(**prompt, out_shape=out_shape, region=region)
        return np.where(centres_in_box(region, out_shape, clipped), prob, 0.0).astype(np.float32)

    # ---- views --------------------------------------------------------------------------------------------
    def render_objects(self, src: SliceImage, objects: Iterable[SegObject], view: View,
                       threshold: float = 0.5, cancelled: Callable[[], bool] | None = None
                       ) -> tuple[np.ndarray, int]:
        """Label image of ``view.out_shape``: every object rendered by the INR inside its box (later
        objects on top). Returns the labels and the number of INR points evaluated."""
        out = np.zeros(view.out_shape, dtype=np.int32)
        evaluated = 0
        for obj in objects:
            if cancelled is not None and cancelled():
                break
            part = sub_view(view, obj.box)
            if part is None:
                continue
            sub, (i0, i1, j0, j1) = part
            try:
                prob = self.render_prob(src, obj.box, sub.region, sub.out_shape, obj)
            except ValueError:
                continue  # the box no longer fits this image
            stats = self.predictor.last_stats
            evaluated += stats.evaluated if stats is not None else 0
            window = out[i0:i1, j0:j1]
            window[prob > threshold] = obj.label
        return out, evaluated

    def uncertainty(self, src: SliceImage, box, max_side: int = 256) -> tuple[np.ndarray, View]:
        """MC-dropout variance over the object's box (plus a margin), at most ``max_side`` pixels a side."""
        with self._lock:
            hw = self.use(src)
            x0, y0, x1, y1 = validate_box(box, hw)
            my, mx = 0.1 * (y1 - y0) + 1, 0.1 * (x1 - x0) + 1
            region = (max(0.0, y0 - my), max(0.0, x0 - mx), min(float(hw[0]), y1 + my), min(float(hw[1]), x1 + mx))
            rh, rw = region[2] - region[0], region[3] - region[1]
            f = min(1.0, max_side / max(rh, rw))
            shape = (max(1, round(rh * f)), max(1, round(rw * f)))
            var = self.predictor.uncertainty((x0, y0, x1, y1), out_shape=shape, region=region)
        return var, View(region, shape)
