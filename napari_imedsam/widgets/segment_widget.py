"""The "Segment (I-MedSAM)" dock widget: box prompts -> masks, a high-resolution INR view, uncertainty,
contours, 3-D propagation and export. Thin: the math lives in ``napari_imedsam.engine``; the model, the
workers and the notifier are the viewer's (``services.py``), shared with the Fine-tune widget.

Public API (used by the fine-tune widget, the demo script and tests)::

    w = SegmentWidget(viewer)               # starts loading the chosen model when it is first shown
    w.load_model_now("litemedsam")          # synchronous; the GUI loads in a worker
    w.predictor, w.current_model(), w.apply_model(model, "new adapters"), w.model_changed (Qt signal)
    w.image_layer(), w.current_slice(), w.current_window(), w.wait_idle(timeout), w.is_idle()
    w.undo(), w.redo(), w.clear_object(), w.propagate("both"), w.trace_contours(4), w.export_masks(path, 2)
    w.next_uncertain()                      # select the object the model is least sure of
"""

from __future__ import annotations

import numpy as np
from napari.layers import Points, Shapes
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QWidget

from ..engine import windows
from . import panels, shortcuts
from .boxes import BoxController, BoxJob
from .clicks import ClickController, new_clicks_layer
from .context import SegmentContext
from .hires_view import HiResView
from .image_sessions import ImageSessions
from .label_book import LabelBook
from .layers import (
    LayerSession,
    arrange_layers,
    base_data,
    find_layer,
    label_color,
    layer_alive,
    new_boxes_layer,
    slice_of_world,
    unwrap,
)
from .objects import ObjectActions
from .services import for_viewer
from .volume_tools import VolumeTools


class SegmentWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        # napari hands plugin widgets a PublicOnlyProxy of the viewer; work on the viewer itself (only its
        # public API is used) so that layers keep one identity
        self.viewer = unwrap(napari_viewer)
        scene = getattr(napari_viewer, "scene", None)
        self.camera = scene.camera if scene is not None else napari_viewer.camera
        self.services = for_viewer(self.viewer)
        self.holder, self.notifier, self.workers = self.services.model, self.services.notifier, self.services.workers
        self._alive = True
        self.book = LabelBook()
        self.ui = panels.build(self)
        self.images = ImageSessions(self.viewer, self.ui.image, self.notifier, self)
        self.setToolTip(shortcuts.tooltip())
        self.ctx = SegmentContext(self.viewer, self.camera, self.notifier, self.workers, self.holder, self.book,
                                  session=self.session, current_slice=self.current_slice,
                                  current_window=self.current_window, view_problem=self.view_problem,
                                  request_model=self.start_loading, alive=self.is_alive)
        self.objects = ObjectActions(self.ctx, self)
        self.shortcut_actions = {
            "Control-Z": self.undo, "Control-Shift-Z": self.redo, "Shift-N": self.objects.next_object,
            "Shift-X": self.clear_object, "Shift-H": self.toggle_hires, "Shift-U": self.ui.uncertainty.toggle,
            "Shift-T": lambda: self.propagate("both"), "Shift-O": self.trace_contours, "Shift-W": self.cycle_window,
            "Shift-P": lambda: self.clicks.toggle_negative(), "Shift-R": self.next_uncertain,
        }
        self.boxes = BoxController(self.ctx, self.shortcut_actions, self)
        self.clicks = ClickController(self.ctx, lambda s, obj, old: self.boxes.queue(BoxJob(s, obj, old)),
                                      self.boxes.take_label, self)
        self.hires = HiResView(self.ctx, self)
        self.tools = VolumeTools(self.ctx, self)
        self._timers = [QTimer(self), QTimer(self)]
        self._setup_timer, self._preload_timer = self._timers
        for timer, slot in zip(self._timers, (self._on_image_changed, self._preload)):
            timer.setSingleShot(True)
            timer.timeout.connect(slot)
            self.workers.watch_timer(timer)
        self._shown_once = False
        self._connect()
        self._viewer_keys = shortcuts.bind(self.viewer, self.shortcut_actions)
        self.services.set_segment_widget(self)
        self.destroyed.connect(lambda *_: self.shutdown())
        self.ui.model_status.setText(self.holder.status)
        self.images.refresh()

    # ---- wiring --------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        ui, v, h = self.ui, self.viewer, self.holder
        v.layers.events.inserted.connect(self.images.refresh)
        v.layers.events.removed.connect(self.images.on_layer_removed)
        v.dims.events.current_step.connect(self._on_slice_changed)
        self._holder_slots = ((h.model_changed, self._on_model_changed), (h.status_changed, ui.model_status.setText),
                              (h.load_failed, self._on_load_failed))
        for signal, slot in self._holder_slots:
            signal.connect(slot)
        for helper in (self.boxes, self.objects):
            helper.committed.connect(self._after_commit)
        for helper in (self.boxes, self.hires, self.tools):
            helper.status.connect(self._show_status)
        self.boxes.label_taken.connect(self._sync_labels)
        self.objects.labels_changed.connect(self._sync_labels)
        self.tools.progress.connect(self._on_propagation_progress)
        self.tools.propagated.connect(self.hires.request)
        self.images.selection_changed.connect(lambda: self._setup_timer.start(0))
        ui.load.clicked.connect(lambda: self.start_loading(force=True))
        ui.checkpoint_browse.clicked.connect(
            lambda: self._browse(ui.checkpoint, "Checkpoint (*.pth *.pt *.safetensors)"))
        ui.adapters_browse.clicked.connect(lambda: self._browse(ui.adapters, "Adapters (*.safetensors)"))
        ui.window.currentTextChanged.connect(self._on_window_changed)
        ui.window_lo.valueChanged.connect(self._on_window_changed)
        ui.window_hi.valueChanged.connect(self._on_window_changed)
        ui.label.valueChanged.connect(self._on_label_spin)
        ui.auto_increment.toggled.connect(lambda on: setattr(self.book, "auto_increment", on))
        ui.label_name.editingFinished.connect(lambda: self.book.set_name(ui.label.value(), ui.label_name.text()))
        ui.bcv.clicked.connect(self.objects.use_bcv_names)
        ui.undo.clicked.connect(self.undo)
        ui.redo.clicked.connect(self.redo)
        ui.clear.clicked.connect(self.clear_object)
        ui.negative.toggled.connect(self.clicks.set_negative)
        self.clicks.negative_changed.connect(ui.negative.setChecked)
        ui.hires.toggled.connect(self.hires.set_enabled)
        ui.outline.toggled.connect(self.hires.set_outline)
        ui.uncertainty.toggled.connect(self._on_uncertainty_toggled)
        ui.next_uncertain.clicked.connect(self.next_uncertain)
        self.tools.selected.connect(self._show_object)
        ui.contours.clicked.connect(lambda: self.trace_contours())
        ui.prop_up.clicked.connect(lambda: self.propagate("up"))
        ui.prop_down.clicked.connect(lambda: self.propagate("down"))
        ui.prop_both.clicked.connect(lambda: self.propagate("both"))
        ui.cancel.clicked.connect(self.tools.cancel)
        ui.interpolate.clicked.connect(self.tools.interpolate)
        ui.export.clicked.connect(self._export_dialog)

    def _browse(self, line, pattern: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", "", pattern)
        if path:
            line.setText(path)

    def is_alive(self) -> bool:
        return self._alive

    def shutdown(self) -> None:
        """Detach from the viewer (events, shortcuts, shared model, this widget's workers); called when the
        widget closes or is deleted. The viewer keeps the model for the next Segment widget."""
        if not self._alive:
            return
        self._alive = False
        v = self.viewer
        for emitter, handler in ((v.layers.events.inserted, self.images.refresh),
                                 (v.layers.events.removed, self.images.on_layer_removed),
                                 (v.dims.events.current_step, self._on_slice_changed)):
            emitter.disconnect(handler)
        for signal, slot in self._holder_slots:
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):  # already gone with the widget
                pass
        self.hires.disconnect_viewer()
        self.boxes.unwatch_all()
        self.clicks.unwatch_all()
        shortcuts.unbind(v, self._viewer_keys)
        self.workers.quit_all(alive=self.is_alive)
        self.workers.forget_timers([*self._timers, self.hires.timer, self.tools.unc_timer])
        if self.services.segment_widget is None:
            self.services.set_segment_widget(None)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        """The first time the widget is shown, start loading the model chosen in it (in a worker), so the
        first box does not wait for it. Deferred by one event-loop turn: a script that docks the widget
        can still pick another backbone first."""
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            self._preload_timer.start(0)

    def _preload(self) -> None:
        if self._alive and self.holder.segmenter is None:
            self.start_loading()

    # ---- images and sessions (see image_sessions.py) -----------------------------------------------------------
    def image_layer(self):
        """The image layer being segmented (None when there is none)."""
        return self.images.image_layer()

    def select_image(self, layer) -> None:
        """Select ``layer`` and set up its boxes and masks layers now."""
        self.images.select(layer)
        self._on_image_changed()

    def session(self, create: bool = False) -> LayerSession | None:
        return self.images.current(create)

    def _on_image_changed(self) -> None:
        self._setup_timer.stop()
        sess = self.session(create=True)
        self.ui.status.setText("" if sess is None else sess.status)  # the status line follows the image
        if sess is None:
            return
        layer = sess.image
        preset = windows.default_preset(base_data(layer), layer.metadata)
        self.ui.window.setCurrentText(preset)
        self._on_window_changed()
        self.ensure_labels(sess)
        self.ensure_clicks(sess)
        boxes = self.ensure_boxes(sess)
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        self._sync_labels()
        self.hires.request()

    def ensure_boxes(self, sess: LayerSession):
        """The image's boxes layer (created, or adopted by name), watched for new rectangles."""
        return self._ensure_prompt_layer(sess, "boxes", Shapes, new_boxes_layer, self.boxes)

    def ensure_clicks(self, sess: LayerSession):
        """The image's clicks layer (created, or adopted by name), watched for new points."""
        return self._ensure_prompt_layer(sess, "clicks", Points, new_clicks_layer, self.clicks)

    def _ensure_prompt_layer(self, sess: LayerSession, kind: str, layer_type, make, controller):
        if not layer_alive(self.viewer, getattr(sess, kind)):
            found = find_layer(self.viewer, f"{sess.image.name} {kind}", layer_type)
            setattr(sess, kind, found if found is not None else make(self.viewer, sess.image))
            controller.watch(sess)
            arrange_layers(self.viewer, sess)
        return getattr(sess, kind)

    def ensure_labels(self, sess: LayerSession):
        """The image's masks layer (created, or adopted by name if it has the image's shape)."""
        return self.ctx.ensure_labels(sess)

    def current_slice(self) -> int | None:
        layer = self.image_layer()
        return None if layer is None else slice_of_world(layer, self.viewer.dims.point)

    def current_window(self) -> tuple[float, float] | None:
        """The CT window (low, high) the model sees, or None (min-max scaling)."""
        try:
            return windows.window_for(self.ui.window.currentText(),
                                      (self.ui.window_lo.value(), self.ui.window_hi.value()))
        except ValueError:
            return None

    def view_problem(self) -> str | None:
        """Why boxes cannot be read from the current view (3-D display, transposed axes), or None."""
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            return "switch the viewer to 2-D (the 2D/3D button) to draw boxes and see the high-resolution view."
        if tuple(dims.displayed) != (dims.ndim - 2, dims.ndim - 1):
            return ("the displayed axes are transposed or rolled; boxes need the image's last two axes on screen "
                    "(View > Reset the axes order, or roll them back with Ctrl+E).")
        return None

    # ---- model (the viewer's ModelHolder) ----------------------------------------------------------------------
    @property
    def predictor(self):
        return self.holder.predictor

    @property
    def segmenter(self):
        return self.holder.segmenter

    @property
    def model_changed(self):
        """The shared holder's signal: a new model (or new adapters) is in use."""
        return self.holder.model_changed

    def current_model(self):
        return self.holder.model

    def start_loading(self, force: bool = False) -> None:
        """Load the model chosen in the widget in a worker (opening the widget and the first box do this)."""
        ui = self.ui
        self.holder.start_loading(ui.backbone.currentText(), ui.checkpoint.text().strip() or None,
                                  ui.adapters.text().strip() or None, ui.device.currentText(), force=force)

    def load_model_now(self, backbone: str = "litemedsam", checkpoint=None, adapters=None,
                       device: str = "auto"):
        """Load synchronously (scripts, tests). ``adapters``: file, None for the embedded default head, or
        False for the plain backbone. Errors are notified and raised as ``ModelLoadError``."""
        return self.holder.load_now(backbone, checkpoint, adapters, device)

    def apply_model(self, model, description: str = "") -> None:
        """Use ``model`` (e.g. fine-tuned adapters) from now on: caches are invalidated and the views are
        re-rendered. Call from the GUI thread."""
        self.holder.apply(model, description)

    def _on_model_changed(self) -> None:
        self.ui.backbone.blockSignals(True)
        self.ui.backbone.setCurrentText(self.holder.model.backbone_name)
        self.ui.backbone.blockSignals(False)
        self.hires.request()
        self.tools.update_uncertainty()
        self.boxes.flush()

    def _on_load_failed(self, _reason: str) -> None:
        self.boxes.drop_pending("no model could be loaded.")

    # ---- reactions ------------------------------------------------------------------------------------------
    def _on_window_changed(self, *_args) -> None:
        ui = self.ui
        custom = ui.window.currentText() == windows.CUSTOM
        ui.window_lo.setEnabled(custom)
        ui.window_hi.setEnabled(custom)
        ui.window_status.setText(windows.describe(ui.window.currentText(), self.current_window()))
        self.hires.request()
        self.tools.update_uncertainty()

    def _on_slice_changed(self, *_args) -> None:
        self._sync_labels()
        self.tools.hide_stale_uncertainty()
        if self.ui.uncertainty.isChecked():
            self.tools.unc_timer.start()

    def next_uncertain(self) -> None:
        """Select the object the model is least sure of (the next one on each call) and show its uncertainty."""
        self.tools.next_uncertain()

    def _show_object(self, sess, obj) -> None:
        """Bring ``obj`` into view: its slice, the camera on its box, its uncertainty overlay."""
        x0, y0, x1, y1 = obj.box
        centre = [(y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5]
        data = [obj.slice, *centre] if obj.slice is not None else centre
        world = np.asarray(sess.image.data_to_world(np.asarray(data, dtype=float)), dtype=float)
        if obj.slice is not None:
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, world[-3])
        self.camera.center = tuple(world[-2:])
        self._sync_labels()
        if self.ui.uncertainty.isChecked():
            self.tools.update_uncertainty()
        else:
            self.ui.uncertainty.setChecked(True)

    def _on_uncertainty_toggled(self, on: bool) -> None:
        self.tools.uncertainty_on = bool(on)
        self.tools.update_uncertainty()

    def _on_propagation_progress(self, done: int, total: int) -> None:
        ui = self.ui
        if total:
            ui.progress.setRange(0, total)
            ui.progress.setValue(done)
        ui.progress.setVisible(bool(total))
        ui.cancel.setEnabled(bool(total))

    def _on_label_spin(self, value: int) -> None:
        self.book.current = int(value)
        self.ui.label_name.setText(self.book.names.get(int(value), ""))

    def _sync_labels(self) -> None:
        """Show the next label, its name and the current object; colour the next box like its label."""
        ui, book = self.ui, self.book
        ui.label.blockSignals(True)
        ui.label.setValue(book.current)
        ui.label.blockSignals(False)
        ui.label_name.setText(book.names.get(book.current, ""))
        sess = self.session()
        if sess is not None and layer_alive(self.viewer, sess.boxes) and not sess.boxes.selected_data:
            sess.boxes.current_edge_color = label_color(sess.labels, book.current)  # the next box's colour
        obj = self.ctx.current_object()
        ui.current.setText("current object: none" if obj is None else
                           f"current object: label {obj.label} ({book.name_of(obj.label)})")

    def _after_commit(self, _sess: LayerSession) -> None:
        self._sync_labels()
        self.hires.request()
        self.tools.update_uncertainty()

    def _show_status(self, sess: LayerSession, text: str) -> None:
        note = self.tools.review_note(sess)
        if note is not None and not text.startswith(note):
            text = f"{note}; {text}"
        sess.status = text
        if sess is self.session():
            self.ui.status.setText(text)

    # ---- actions (buttons and shortcuts) ------------------------------------------------------------------
    def resegment(self, image_layer=None, keep_labels=()) -> int:
        """Re-segment the objects of the slice on screen with the current model, except ``keep_labels``
        (the fine-tune widget passes the labels the user corrected); returns how many were started."""
        sess = self.session() if image_layer is None else self.images.of(image_layer)
        if sess is None:
            return 0
        z = self.current_slice() if sess.volume else None
        return self.boxes.resegment(sess, z, set(keep_labels))

    def _history_step(self, redo: bool) -> None:
        if self.tools.propagation is not None:
            self.notifier.warning("Wait for the propagation to finish (or cancel it) before undo/redo.")
            return
        self.objects.history_step(redo)
        sess = self.session()
        if sess is not None and sess.clicks is not None:
            self.clicks.match_store(sess)  # an undone click leaves the clicks layer too

    def undo(self) -> None:
        self._history_step(redo=False)

    def redo(self) -> None:
        self._history_step(redo=True)

    def clear_object(self) -> None:
        sess, obj = self.session(), self.ctx.current_object()
        self.objects.clear_object()
        if sess is not None and obj is not None:
            self.clicks.remove_object_clicks(sess, obj.label, obj.slice)

    def toggle_hires(self) -> None:
        self.ui.hires.setChecked(not self.ui.hires.isChecked())

    def cycle_window(self) -> None:
        names = [n for n in windows.CHOICES if n != windows.CUSTOM]
        cur = self.ui.window.currentText()
        self.ui.window.setCurrentText(names[(names.index(cur) + 1) % len(names)] if cur in names else names[0])

    def propagate(self, direction: str = "both", limit: int | None = None) -> None:
        dirs = {"up": (1,), "down": (-1,), "both": (1, -1)}[direction]
        start, end = (s.value() if s.value() >= 0 else None for s in (self.ui.prop_start, self.ui.prop_end))
        self.tools.propagate(dirs, limit if limit is not None else self.ui.prop_limit.value(), start_slice=start,
                             end_slice=end)

    def trace_contours(self, factor: int | None = None) -> None:
        factor = factor or int(self.ui.contour_factor.currentText().rstrip("x"))
        self.tools.trace_contours(int(factor))

    def export_masks(self, path, factor: int = 1) -> None:
        """Export the masks (worker): .tif/.tiff, or .nii/.nii.gz for images read from NIfTI/DICOM."""
        self.tools.export(path, int(factor))

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export masks", "", "TIFF (*.tif);;NIfTI (*.nii.gz)")
        if path:
            self.export_masks(path, int(self.ui.export_factor.currentText().rstrip("x")))

    # ---- waiting (tests, scripts) --------------------------------------------------------------------------
    def is_idle(self) -> bool:
        return self.workers.is_idle()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Process events until every worker and pending render of the viewer is done; False on timeout."""
        return self.workers.wait_idle(timeout)
