"""Box prompts: rectangles drawn on the boxes layer become segmentation jobs, committed to the masks layer.

A job remembers its image layer, slice and label when the box is drawn; its result is written to exactly
that slice of that image's masks layer (or dropped if the layer is gone), whatever the viewer shows by the
time the worker finishes. Moving or resizing a box re-segments its object."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..engine.history import paste_mask
from ..engine.objects import SegObject
from ..engine.viewport import clip_box, pixel_bbox, rectangle_to_box
from . import shortcuts
from .context import SegmentContext
from .layers import LayerSession, image_hw, label_color, to_image_data

MIN_SIDE = 0.5  # image pixels: a smaller side is a click, not a box


@dataclass
class BoxJob:
    sess: LayerSession
    obj: SegObject  # label, clipped box, slice, uid (also stored in the shape's features)
    replaces: SegObject | None = None
    protect: frozenset[int] = frozenset()  # labels whose pixels this mask must not paint over


class BoxController(QObject):
    """Signals: ``committed(session)`` after a mask was written, ``status(session, text)`` for the status
    line, ``label_taken()`` when a new box took the next label id."""

    committed = Signal(object)
    status = Signal(object, str)
    label_taken = Signal()

    def __init__(self, ctx: SegmentContext, actions: Mapping[str, Callable[[], None]], parent=None):
        super().__init__(parent)
        self.ctx = ctx
        self.actions = actions  # shortcuts bound on every boxes layer (napari key -> callable)
        self.pending: list[BoxJob] = []  # waiting for the model to load
        self.done = 0  # masks committed (tests, scripts)
        self._watched: list[tuple] = []  # (layer, callback, keys bound on it)

    def watch(self, sess: LayerSession) -> None:
        """Segment every rectangle added to (or moved on) this session's boxes layer; bind the shortcuts."""
        sess.seen_boxes = len(sess.boxes.data)

        def callback(event, sess=sess):
            self.on_data(sess, event)

        sess.boxes.events.data.connect(callback)
        self._watched.append((sess.boxes, callback, shortcuts.bind(sess.boxes, self.actions)))

    def unwatch_all(self) -> None:
        for layer, callback, keys in self._watched:
            layer.events.data.disconnect(callback)
            shortcuts.unbind(layer, keys)
        self._watched = []

    # ---- events --------------------------------------------------------------------------------------------
    def on_data(self, sess: LayerSession, event) -> None:
        action = str(getattr(event, "action", ""))
        n = len(sess.boxes.data)
        if action == "added":
            new = range(sess.seen_boxes, n)
            sess.seen_boxes = n
            for i in new:
                self.submit(sess, i)
        elif action == "removed":
            sess.seen_boxes = n
        elif action == "changed":
            for i in getattr(event, "data_indices", ()) or ():
                if 0 <= i < n:
                    self.submit(sess, i, changed=True)

    def _feature(self, sess: LayerSession, i: int, name: str) -> int:
        feats = sess.boxes.features
        if name not in feats or i >= len(feats):
            return 0
        value = feats[name].iloc[i]
        return 0 if value is None or (isinstance(value, float) and np.isnan(value)) else int(value)

    def _set_features(self, sess: LayerSession, i: int, label: int, uid: int) -> None:
        feats = sess.boxes.features.copy()
        for col in ("label", "uid"):
            if col not in feats:
                feats[col] = 0
        feats.loc[feats.index[i], ["label", "uid"]] = [label, uid]
        sess.boxes.features = feats
        colors = np.array(sess.boxes.edge_color, copy=True)
        if len(colors) > i:
            colors[i] = label_color(sess.labels, label)
            sess.boxes.edge_color = colors

    def _discard_shape(self, sess: LayerSession, i: int) -> None:
        """Remove an ignored rectangle after the current event has been handled."""
        layer = sess.boxes

        def remove() -> None:
            if self.ctx.alive_layer(layer) and i < len(layer.data):
                layer.selected_data = {i}
                layer.remove_selected()

        QTimer.singleShot(0, remove)

    # ---- jobs -------------------------------------------------------------------------------------------------
    def submit(self, sess: LayerSession, i: int, changed: bool = False) -> None:
        ctx = self.ctx
        boxes = sess.boxes
        problem = ctx.view_problem()
        if problem:
            ctx.notifier.warning(f"Box not segmented: {problem}")
            return
        if boxes.shape_type[i] != "rectangle":
            if not changed:
                ctx.notifier.warning(f"Only rectangles are box prompts; the {boxes.shape_type[i]} was ignored "
                                   "(press R on the boxes layer for rectangle mode).")
            return
        verts = np.asarray(boxes.data[i], dtype=float)
        if boxes.ndim == sess.image.ndim:
            img_verts = to_image_data(boxes, sess.image, verts)
            z = int(np.round(img_verts[0, 0])) if sess.volume else None
        else:  # a 2-D boxes layer over a volume: the slice shown
            img_verts, z = verts, ctx.current_slice()
        box = rectangle_to_box(img_verts[:, -2:])
        hw = image_hw(sess.image)
        old_uid = self._feature(sess, i, "uid") if changed else 0
        replaces = next((o for o in sess.store.objects if o.uid == old_uid), None) if old_uid else None
        if changed and replaces is None:
            return
        if min(box[2] - box[0], box[3] - box[1]) < MIN_SIDE:
            ctx.notifier.info(f"Box {tuple(round(v, 1) for v in box)} has (almost) zero area: drag to draw a box. "
                            "Ignored.")
            if not changed:
                self._discard_shape(sess, i)
            return
        if z is not None and not 0 <= z < sess.image.data.shape[0]:
            ctx.notifier.warning(f"The box lies on slice {z}, outside the volume; ignored.")
            return
        clipped = clip_box(box, hw)
        if clipped is None:
            ctx.notifier.warning(f"Box {tuple(round(v, 1) for v in box)} lies outside the {hw[1]}x{hw[0]} image; "
                               "ignored.")
            if not changed:
                self._discard_shape(sess, i)
            return
        if replaces is not None and replaces.slice == z and np.allclose(clipped, replaces.box):
            return  # the layer reported a change, but this box did not move
        if not np.allclose(clipped, box):
            ctx.notifier.info(f"Box clipped to the image: {tuple(round(v, 1) for v in clipped)}.")
        label = replaces.label if replaces is not None else self.take_label(sess)
        obj = sess.store.new(label, clipped, z)
        self._set_features(sess, i, label, obj.uid)
        self.queue(BoxJob(sess, obj, replaces))

    def take_label(self, sess: LayerSession) -> int:
        label = self.ctx.book.take(used=sess.store.labels())
        self.label_taken.emit()
        return label

    def queue(self, job: BoxJob) -> None:
        """Run ``job`` now, or once the model has loaded."""
        if self.ctx.segmenter is None:
            self.pending.append(job)
            self.ctx.request_model()
            return
        self.run(job)

    def resegment(self, sess: LayerSession, z: int | None, keep_labels: set[int]) -> int:
        """Segment again, with the current model, every object on slice ``z`` whose label is not in
        ``keep_labels`` (e.g. the objects the user corrected); each one replaces its old mask and none
        paints over the pixels of ``keep_labels``."""
        objs = [o for o in sess.store.on_slice(z) if o.label not in keep_labels]
        for old in objs:
            self.queue(BoxJob(sess, sess.store.new(old.label, old.box, old.slice), replaces=old,
                              protect=frozenset(keep_labels)))
        return len(objs)

    def run(self, job: BoxJob) -> None:
        ctx = self.ctx
        src = ctx.slice_image(job.sess.image, job.obj.slice)
        ctx.start(ctx.segmenter.object_logits, src, job.obj,
                        desc=f"Segmenting {ctx.book.name_of(job.obj.label)}",
                        on_return=lambda res: self.commit(job, res),
                        on_error=lambda exc: self.failed(job, exc))

    def flush(self) -> None:
        jobs, self.pending = self.pending, []
        for job in jobs:
            self.run(job)

    def drop_pending(self, reason: str) -> None:
        if self.pending:
            self.ctx.notifier.warning(f"{len(self.pending)} box(es) were not segmented: {reason}")
        self.pending = []

    def failed(self, job: BoxJob, exc: BaseException) -> None:
        if isinstance(exc, ValueError):
            self.ctx.notifier.warning(f"{'Click' if job.obj.clicks else 'Box'} not segmented: {exc}")
        else:
            self.ctx.notifier.error(f"Segmenting the box failed: {type(exc).__name__}: {exc}")

    def commit(self, job: BoxJob, result) -> None:
        """Write the mask of a finished job into its own image's masks layer, at its own slice."""
        ctx, sess, obj = self.ctx, job.sess, job.obj
        if not ctx.alive_layer(sess.image):
            ctx.notifier.warning(f"The image of this box was removed while it was segmented; result of label "
                               f"{obj.label} dropped.")
            return
        logits, (r0, r1, c0, c1), extent = result
        if tuple(extent) != obj.box:  # clicks grew the object's extent: remember it (views, exports, clearing)
            obj = replace(obj, box=tuple(float(v) for v in extent))
        mask = logits > 0
        labels = ctx.ensure_labels(sess)
        removed = [job.replaces] if job.replaces is not None and job.replaces in sess.store.objects else []
        if removed:  # the patch must also cover where the old box's mask was
            q0, q1, p0, p1 = pixel_bbox(removed[0].box, image_hw(sess.image))
            u0, u1, v0, v1 = min(r0, q0), max(r1, q1), min(c0, p0), max(c1, p1)
            full = np.zeros((u1 - u0, v1 - v0), bool)
            full[r0 - u0 : r1 - u0, c0 - v0 : c1 - v0] = mask
            mask, (r0, r1, c0, c1) = full, (u0, u1, v0, v1)
        index = (slice(r0, r1), slice(c0, c1))
        if obj.slice is not None:
            index = (obj.slice, *index)
        current = np.asarray(labels.data[index])
        if job.protect:  # the user's corrected objects keep their pixels
            mask = mask & ~np.isin(current, list(job.protect))
        new = paste_mask(current, mask, obj.label, replace_label=bool(removed))
        clicked = bool(removed) and len(obj.clicks) > len(removed[0].clicks)
        if clicked and np.array_equal(new, current):
            ctx.notifier.info(f"The click changed nothing: the model's mask of label {obj.label} did not follow it "
                              "there (a click changes only the part it points at). Click deeper inside the missed "
                              "or leaked part, redraw the box, or paint the correction.")
        sess.history.commit(labels.data, index, new, meta={"added": [obj], "removed": removed})
        sess.store.apply({"added": [obj], "removed": removed}, undo=False)
        sess.current = obj
        self.done += 1
        labels.refresh()
        where = "" if obj.slice is None else f" on slice {obj.slice}"
        if not mask.any():
            ctx.notifier.warning(f"The model found no object in the box of label {obj.label}{where}; try a tighter "
                               "box or another window.")
        self.status.emit(sess, f"label {obj.label} ({ctx.book.name_of(obj.label)}){where}: {int(mask.sum())} px")
        self.committed.emit(sess)
