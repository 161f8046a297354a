"""Click prompts: points added on an image's *clicks* layer refine the current object (box + all its clicks
on that slice), or start a new object from the click alone when there is no current object (after *new
object*, or before the first box). Each click re-segments in a worker and commits like a box (one undo step).

Clicks belong to an object by their features (``label``, ``slice``, ``positive``); deleting clicks
re-segments their object with the ones left. Positive clicks add a missed part; with *negative clicks* on
(Shift+P) a click marks background to remove."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QObject, Signal

from ..engine.objects import SegObject
from .context import SegmentContext
from .layers import LayerSession, image_hw, to_image_data

POSITIVE_COLOR, NEGATIVE_COLOR = "#00ff66", "#ff3355"


def new_clicks_layer(viewer, image):
    """A Points layer over ``image`` (same transform and dimensions) for click prompts."""
    size = max(3.0, 0.012 * max(image_hw(image)))
    return viewer.add_points(ndim=image.ndim, name=f"{image.name} clicks", scale=image.scale,
                             translate=image.translate, size=size, border_color="white", face_color=POSITIVE_COLOR,
                             features={"label": np.zeros(0, int), "slice": np.zeros(0, int),
                                       "positive": np.zeros(0, bool)})


class ClickController(QObject):
    """Signal ``negative_changed(bool)`` when the click polarity toggles (the widget shows it)."""

    negative_changed = Signal(bool)

    def __init__(self, ctx: SegmentContext, queue: Callable[[LayerSession, SegObject, SegObject | None], None],
                 take_label: Callable[[LayerSession], int], parent=None):
        super().__init__(parent)
        self.ctx, self._queue, self._take_label = ctx, queue, take_label
        self.negative = False
        self._watched: list[tuple] = []
        self._busy = False  # while the controller itself edits the layer's features

    def set_negative(self, on: bool) -> None:
        self.negative = bool(on)
        self.negative_changed.emit(self.negative)

    def toggle_negative(self) -> None:
        self.set_negative(not self.negative)

    def watch(self, sess: LayerSession) -> None:
        sess.seen_clicks = len(sess.clicks.data)

        def callback(event, sess=sess):
            self.on_data(sess, event)

        sess.clicks.events.data.connect(callback)
        self._watched.append((sess.clicks, callback))

    def unwatch_all(self) -> None:
        for layer, callback in self._watched:
            layer.events.data.disconnect(callback)
        self._watched = []

    # ---- events -------------------------------------------------------------------------------------------
    def on_data(self, sess: LayerSession, event) -> None:
        if self._busy:
            return
        action, n = str(getattr(event, "action", "")), len(sess.clicks.data)
        if action == "added":
            new, sess.seen_clicks = range(sess.seen_clicks, n), n
            for i in new:
                self.add(sess, i)
        elif action == "removed":
            sess.seen_clicks = n
            self.resync(sess)

    def _where(self, sess: LayerSession, i: int) -> tuple[float, float, int | None]:
        """(x, y, slice) of click ``i`` in the image's pixel frame (pixel edges at integers)."""
        pt = np.asarray(sess.clicks.data[i], dtype=float)[None]
        img = to_image_data(sess.clicks, sess.image, pt)[0] if sess.clicks.ndim == sess.image.ndim else pt[0]
        z = int(np.round(img[0])) if sess.volume else None
        if sess.volume and sess.clicks.ndim != sess.image.ndim:
            z = self.ctx.current_slice()
        return float(img[-1]) + 0.5, float(img[-2]) + 0.5, z  # data coordinates: pixel centres at integers

    def add(self, sess: LayerSession, i: int) -> None:
        ctx = self.ctx
        x, y, z = self._where(sess, i)
        h, w = image_hw(sess.image)
        if not (0 <= x <= w and 0 <= y <= h) or (z is not None and not 0 <= z < sess.image.data.shape[0]):
            ctx.notifier.warning("The click lies outside the image; ignored.")
            return
        positive = not self.negative
        old = sess.current if sess.current in sess.store.on_slice(z) else None
        if old is None and not positive:
            ctx.notifier.warning("A negative click needs an object to remove from: draw a box or click on the "
                                 "object first.")
            self._set_features(sess, i, 0, z, positive)
            return
        label = old.label if old is not None else self._take_label(sess)
        self._set_features(sess, i, label, z, positive)
        clicks = (*(old.clicks if old is not None else ()), (x, y, int(positive)))
        box = old.box if old is not None else (x - 0.5, y - 0.5, x + 0.5, y + 0.5)
        obj = sess.store.new(label, box, z, clicks, box_prompt=old.box_prompt if old is not None else False)
        self._queue(sess, obj, old)

    def resync(self, sess: LayerSession) -> None:
        """After clicks were deleted: re-segment each object of the shown slice whose clicks changed."""
        for old in [o for o in sess.store.objects if o.clicks]:
            keep = [(x, y, v) for (x, y, v) in old.clicks if self._present(sess, old, x, y)]
            if len(keep) == len(old.clicks):
                continue
            if not keep and not old.box_prompt:
                continue  # nothing left to prompt with: the mask stays until cleared
            obj = sess.store.new(old.label, old.box, old.slice, keep, old.box_prompt)
            self._queue(sess, obj, old)

    def _present(self, sess: LayerSession, obj: SegObject, x: float, y: float) -> bool:
        return any(self._present_at(sess, i, obj, (x, y)) for i in range(len(sess.clicks.data)))

    def _set_features(self, sess: LayerSession, i: int, label: int, z: int | None, positive: bool) -> None:
        layer = sess.clicks
        was_busy, self._busy = self._busy, True
        try:
            feats = layer.features.copy()
            for col, default in (("label", 0), ("slice", 0), ("positive", True)):
                if col not in feats:
                    feats[col] = default
            feats.loc[feats.index[i], ["label", "slice", "positive"]] = [label, z or 0, positive]
            layer.features = feats
            colors = np.array(layer.face_color, copy=True)
            if len(colors) > i:
                from napari.utils.colormaps.standardize_color import transform_color

                colors[i] = transform_color(POSITIVE_COLOR if positive else NEGATIVE_COLOR)[0]
                layer.face_color = colors
        finally:
            self._busy = was_busy

    def match_store(self, sess: LayerSession) -> None:
        """After an undo or redo: the clicks layer shows the clicks of the objects the step left (a click
        undone disappears, a click redone comes back), without re-segmenting anything."""
        layer = sess.clicks
        if layer is None or not self.ctx.alive_layer(layer):
            return
        objects = [o for o in sess.store.objects if o.clicks]
        feats = layer.features
        stale = set()
        for i in range(len(layer.data)):
            label = int(feats["label"].iloc[i]) if "label" in feats else 0
            if label and not any(self._present_at(sess, i, o) for o in objects):
                stale.add(i)
        self._remove_points(sess, stale)
        self._busy = True
        try:
            for obj in objects:
                for x, y, positive in obj.clicks:
                    if not self._present(sess, obj, x, y):
                        layer.add(self._layer_point(sess, obj, x, y)[None])
                        self._set_features(sess, len(layer.data) - 1, obj.label, obj.slice, bool(positive))
        finally:
            self._busy = False
            sess.seen_clicks = len(layer.data)

    def _remove_points(self, sess: LayerSession, idx: set[int]) -> None:
        """Delete points ``idx`` of the clicks layer without re-segmenting their objects."""
        if not idx:
            return
        self._busy = True
        try:
            sess.clicks.selected_data = idx
            sess.clicks.remove_selected()
            sess.seen_clicks = len(sess.clicks.data)
        finally:
            self._busy = False

    def _present_at(self, sess: LayerSession, i: int, obj: SegObject, xy: tuple[float, float] | None = None
                    ) -> bool:
        """Whether point ``i`` is one of ``obj``'s clicks (``xy``: that click only)."""
        feats = sess.clicks.features
        if "label" not in feats or "slice" not in feats:
            return False
        if int(feats["label"].iloc[i]) != obj.label or int(feats["slice"].iloc[i]) != (obj.slice or 0):
            return False
        px, py, _ = self._where(sess, i)
        clicks = [xy] if xy is not None else [(x, y) for x, y, _ in obj.clicks]
        return any(abs(px - x) < 1e-6 and abs(py - y) < 1e-6 for x, y in clicks)

    def _layer_point(self, sess: LayerSession, obj: SegObject, x: float, y: float) -> np.ndarray:
        """A click (image pixels, centres at +0.5) as a point in the clicks layer's data coordinates."""
        img = np.array([y - 0.5, x - 0.5] if obj.slice is None else [obj.slice, y - 0.5, x - 0.5], dtype=float)
        world = np.asarray(sess.image.data_to_world(img), dtype=float)
        layer = sess.clicks
        return np.asarray(layer.world_to_data(world[-layer.ndim:]), dtype=float)

    def remove_object_clicks(self, sess: LayerSession, label: int, z: int | None) -> None:
        """Delete the clicks of ``label`` on slice ``z`` (when the object is cleared)."""
        if sess.clicks is None or not self.ctx.alive_layer(sess.clicks) or not len(sess.clicks.data):
            return
        feats = sess.clicks.features
        self._remove_points(sess, {i for i in range(len(feats)) if int(feats["label"].iloc[i]) == label
                                   and int(feats["slice"].iloc[i]) == (z or 0)})
