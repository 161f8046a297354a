"""The high-resolution view: the current slice's objects rendered by the INR for exactly the visible window
at screen resolution, as a Labels layer placed over the image by its ``scale``/``translate``.

Camera and slice changes are debounced; one render runs at a time (a change during a render queues one
more). A finished render is shown only if what it depicts (image, slice, window, objects, model) is still
current: a render for an older camera position is still placed correctly by its own transform, so it is
shown until the next one arrives, while one for another slice or object set is dropped."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..engine.viewport import region_transform, visible_view
from .context import SegmentContext
from .layers import displayed_geometry, has_plain_transform, image_hw

DEBOUNCE_MS = 150
OUTLINE_PX = 3  # screen pixels: the layer's pixels are screen pixels


def _frame(key: tuple) -> tuple:
    """A content key without its object list: (image, slice, window, model)."""
    return (*key[:3], key[-1])


class HiResView(QObject):
    """Signal ``status(session, text)``: what the last render of that session's image shows."""

    status = Signal(object, str)

    def __init__(self, ctx: SegmentContext, parent: QObject | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.enabled = True
        self.outline = True
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self.render)
        ctx.workers.watch_timer(self.timer)
        self._running = False
        self._again = False
        self.renders = 0  # shown renders (for tests and the status line)
        self.dropped = 0
        self.last_evaluated = 0
        self.last_view = None
        self._shown_key = None
        self._warned_transform = False
        viewer, camera = ctx.viewer, ctx.camera
        self._emitters = [camera.events.center, camera.events.zoom, viewer.dims.events.current_step]
        size_events = getattr(getattr(viewer, "canvas", None), "events", None)
        if size_events is not None and hasattr(size_events, "size"):
            self._emitters.append(size_events.size)
        for emitter in self._emitters:
            emitter.connect(self.request)

    def disconnect_viewer(self) -> None:
        for emitter in self._emitters:
            emitter.disconnect(self.request)

    # ---- requests -------------------------------------------------------------------------------------
    def request(self, *_args) -> None:
        """Schedule a render after the camera has been still for a moment; a view of another slice, window
        or model is hidden at once (a moved camera keeps the old render until the new one arrives)."""
        if not self.enabled:
            return
        sess = self.ctx.session()
        if sess is not None and self._shown_key is not None:
            key = self.ctx.content_key(sess, self.ctx.current_slice())
            if _frame(key) != _frame(self._shown_key):
                self._clear(sess)
        self.timer.start()

    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)
        sess = self.ctx.session()
        if sess is not None and self.ctx.alive_layer(sess.hires):
            sess.hires.visible = self.enabled
        if self.enabled:
            self.request()

    def set_outline(self, on: bool) -> None:
        self.outline = bool(on)
        sess = self.ctx.session()
        if sess is not None and self.ctx.alive_layer(sess.hires):
            sess.hires.contour = OUTLINE_PX if self.outline else 0
            sess.hires.opacity = 1.0 if self.outline else 0.6

    # ---- rendering --------------------------------------------------------------------------------------
    def _canvas_hw(self) -> tuple[int, int]:
        canvas = getattr(self.ctx.viewer, "canvas", None)
        size = getattr(canvas, "size", None)
        if size is None or min(size) < 1:
            return 600, 800
        return int(size[0]), int(size[1])

    def render(self) -> None:
        if not self.enabled or self.ctx.segmenter is None:
            return
        if self._running:
            self._again = True
            return
        sess = self.ctx.session()
        if sess is None or self.ctx.view_problem():
            return
        if not has_plain_transform(sess.image):
            if not self._warned_transform:
                self._warned_transform = True
                self.ctx.notifier.warning(f"'{sess.image.name}' is rotated, sheared or has an affine transform: the "
                                        "high-resolution view supports scale and translate only and is off for it.")
            return
        z = self.ctx.current_slice()
        objects = sess.store.on_slice(z)
        if not objects:
            self._clear(sess)
            return
        scale, translate = displayed_geometry(sess.image)
        cam = self.ctx.camera
        view = visible_view(cam.center, cam.zoom, self._canvas_hw(), scale, translate, image_hw(sess.image))
        if view is None:
            return
        src = self.ctx.slice_image(sess.image, z)
        key = self.ctx.content_key(sess, z)
        seg = self.ctx.segmenter
        self._running = True
        self.ctx.start(seg.render_objects, src, objects, view, desc="", progress=False,
                             on_return=lambda res: self._show(sess, key, view, scale, translate, res),
                             on_error=self._failed, on_finish=self._finished)

    def _failed(self, exc: BaseException) -> None:
        self.ctx.notifier.warning(f"High-resolution view could not be rendered: {type(exc).__name__}: {exc}")

    def _finished(self) -> None:
        self._running = False
        if self._again:
            self._again = False
            self.request()

    def _show(self, sess, key, view, scale, translate, result) -> None:
        labels, evaluated = result
        if sess is not self.ctx.session() or key != self.ctx.content_key(sess, self.ctx.current_slice()):
            self.dropped += 1  # stale: another image, slice, window, object set or model
            return
        layer = self._ensure_layer(sess)
        s, t = region_transform(view.region, view.out_shape, scale, translate)
        layer.data = labels
        layer.scale = s
        layer.translate = t
        layer.visible = self.enabled
        self.renders += 1
        self._shown_key = key
        self.last_evaluated = evaluated
        self.last_view = view
        self.status.emit(sess, f"high-res view: {view.out_shape[1]}x{view.out_shape[0]} px at "
                           f"{view.density:.1f} px per image pixel, {evaluated} INR queries "
                           f"({100.0 * evaluated / max(1, labels.size):.0f} %)")

    def _clear(self, sess) -> None:
        self._shown_key = None
        if self.ctx.alive_layer(sess.hires) and sess.hires.data.any():
            sess.hires.data = np.zeros((1, 1), dtype=np.int32)

    def _ensure_layer(self, sess):
        if self.ctx.alive_layer(sess.hires):
            return sess.hires
        name = f"{sess.image.name} high-res (INR)"
        layer = self.ctx.add_layer(sess, self.ctx.viewer.add_labels, np.zeros((1, 1), dtype=np.int32), name=name,
                                 opacity=1.0, blending="translucent_no_depth")
        layer.contour = OUTLINE_PX if self.outline else 0
        if not self.outline:
            layer.opacity = 0.6
        if sess.labels is not None:
            layer.colormap = sess.labels.colormap
        layer.editable = False
        sess.hires = layer
        self.ctx.arrange(sess)
        return layer
