"""The "Segment (I-MedSAM)" dock widget: box prompts -> masks, a high-resolution INR view, uncertainty,
contours, 3-D propagation and export. Thin: the math lives in ``napari_imedsam.engine``.

Public API (used by the fine-tune widget, the demo script and tests)::

    w = SegmentWidget(viewer)
    w.load_model_now("litemedsam")          # synchronous; the GUI loads in a worker
    w.predictor, w.current_model(), w.apply_model(model, "new adapters"), w.model_changed (Qt signal)
    w.image_layer(), w.current_window(), w.wait_idle(timeout), w.is_idle()
    w.undo(), w.redo(), w.clear_object(), w.propagate("both"), w.trace_contours(4), w.export_masks(path, 2)
"""

from __future__ import annotations

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QWidget

from ..engine import model_loading, windows
from ..engine.objects import SegObject
from ..engine.predictor import Predictor
from ..engine.segmenter import Segmenter, SliceImage
from . import panels, shortcuts
from .boxes import BoxController
from .hires_view import HiResView
from .label_book import LabelBook
from .layers import (
    LayerSession,
    add_layer_keeping_active,
    arrange_layers,
    base_data,
    find_layer,
    layer_alive,
    load_slice,
    new_boxes_layer,
    new_labels_layer,
    same,
    slice_of_world,
    unsupported_reason,
    unwrap,
)
from .objects import ObjectActions
from .volume_tools import VolumeTools
from .workers import Notifier, WorkerTracker


class SegmentWidget(QWidget):
    model_changed = Signal()

    def __init__(self, napari_viewer):
        super().__init__()
        # napari hands plugin widgets a PublicOnlyProxy of the viewer; work on the viewer itself (only its
        # public API is used) so that layers keep one identity
        self.viewer = unwrap(napari_viewer)
        scene = getattr(napari_viewer, "scene", None)
        self.camera = scene.camera if scene is not None else napari_viewer.camera
        self.predictor: Predictor | None = None
        self.segmenter: Segmenter | None = None
        self.notifier = Notifier()
        self._alive = True
        self.workers = WorkerTracker(self.notifier, alive=lambda: self._alive, parent=self)
        self.book = LabelBook()
        self._sessions: dict[int, LayerSession] = {}
        self._model_serial = 0
        self._load_serial = 0
        self._loading = None
        self._device = "auto"
        self.ui = panels.build(self)
        self.setToolTip(shortcuts.tooltip())
        self.boxes = BoxController(self)
        self.objects = ObjectActions(self)
        self.hires = HiResView(self)
        self.tools = VolumeTools(self)
        self._setup_timer = QTimer(self)
        self._setup_timer.setSingleShot(True)
        self._setup_timer.timeout.connect(self._on_image_changed)
        self.workers.timers.append(self._setup_timer)
        self._connect()
        self._viewer_keys = shortcuts.bind(self.viewer, self)
        self.destroyed.connect(lambda *_: self.shutdown())
        self._refresh_images()

    # ---- wiring --------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        ui, v = self.ui, self.viewer
        v.layers.events.inserted.connect(self._refresh_images)
        v.layers.events.removed.connect(self._on_layer_removed)
        v.dims.events.current_step.connect(self._on_slice_changed)
        ui.image.currentIndexChanged.connect(lambda _: self._setup_timer.start(0))
        ui.load.clicked.connect(lambda: self.start_loading(force=True))
        ui.checkpoint_browse.clicked.connect(
            lambda: self._browse(ui.checkpoint, "Checkpoint (*.pth *.pt *.safetensors)"))
        ui.adapters_browse.clicked.connect(lambda: self._browse(ui.adapters, "Adapters (*.safetensors)"))
        ui.window.currentTextChanged.connect(self._on_window_changed)
        ui.window_lo.valueChanged.connect(self._on_window_changed)
        ui.window_hi.valueChanged.connect(self._on_window_changed)
        ui.label.valueChanged.connect(self.objects.on_label_spin)
        ui.auto_increment.toggled.connect(lambda on: setattr(self.book, "auto_increment", on))
        ui.label_name.editingFinished.connect(lambda: self.book.set_name(ui.label.value(), ui.label_name.text()))
        ui.bcv.clicked.connect(self.objects.use_bcv_names)
        ui.undo.clicked.connect(self.undo)
        ui.redo.clicked.connect(self.redo)
        ui.clear.clicked.connect(self.clear_object)
        ui.hires.toggled.connect(self.hires.set_enabled)
        ui.outline.toggled.connect(self.hires.set_outline)
        ui.uncertainty.toggled.connect(lambda _: self.tools.update_uncertainty())
        ui.contours.clicked.connect(self.trace_contours)
        ui.prop_up.clicked.connect(lambda: self.propagate("up"))
        ui.prop_down.clicked.connect(lambda: self.propagate("down"))
        ui.prop_both.clicked.connect(lambda: self.propagate("both"))
        ui.cancel.clicked.connect(self.tools.cancel)
        ui.export.clicked.connect(self._export_dialog)

    def _browse(self, line, pattern: str) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a file", "", pattern)
        if path:
            line.setText(path)

    def shutdown(self) -> None:
        """Detach from the viewer (events, shortcuts, workers); called when the widget closes or is deleted."""
        if not self._alive:
            return
        self._alive = False
        v = self.viewer
        for emitter, handler in ((v.layers.events.inserted, self._refresh_images),
                                 (v.layers.events.removed, self._on_layer_removed),
                                 (v.dims.events.current_step, self._on_slice_changed)):
            emitter.disconnect(handler)
        self.hires.disconnect_viewer()
        self.boxes.unwatch_all()
        shortcuts.unbind(v, self._viewer_keys)
        self.workers.quit_all()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self.shutdown()
        super().closeEvent(event)

    # ---- images and sessions ---------------------------------------------------------------------------------
    def _image_layers(self) -> list:
        return [lay for lay in self.viewer.layers if lay.__class__.__name__ == "Image"
                and not any(same(s.uncertainty, lay) for s in self._sessions.values())]

    def _refresh_images(self, *_args) -> None:
        current = self.image_layer()
        layers = self._image_layers()
        combo = self.ui.image
        combo.blockSignals(True)
        combo.clear()
        for lay in layers:
            combo.addItem(lay.name, lay)
        if current is not None and current in layers:
            combo.setCurrentIndex(layers.index(current))
        combo.blockSignals(False)
        if layers and (current is None or current not in layers):
            combo.setCurrentIndex(0)
            self._setup_timer.start(0)

    def image_layer(self):
        """The image layer being segmented (None when there is none)."""
        layer = unwrap(self.ui.image.currentData())
        return layer if layer_alive(self.viewer, layer) else None

    def select_image(self, layer) -> None:
        """Select ``layer`` and set up its boxes and masks layers now."""
        index = next(i for i in range(self.ui.image.count()) if same(self.ui.image.itemData(i), layer))
        self.ui.image.setCurrentIndex(index)
        self._on_image_changed()

    def session(self, create: bool = False) -> LayerSession | None:
        layer = unwrap(self.image_layer())
        if layer is None:
            return None
        sess = self._sessions.get(id(layer))
        if (sess is None or sess.image is not layer) and create:
            reason = unsupported_reason(layer)
            if reason:
                self.notifier.warning(reason)
                return None
            sess = self._sessions[id(layer)] = LayerSession(layer)
        return sess if sess is not None and sess.image is layer else None

    def _on_image_changed(self) -> None:
        self._setup_timer.stop()
        layer = self.image_layer()
        if layer is None:
            return
        sess = self.session(create=True)
        if sess is None:
            return
        preset = windows.default_preset(base_data(layer), layer.metadata)
        self.ui.window.setCurrentText(preset)
        self._on_window_changed()
        self.ensure_labels(sess)
        boxes = self.ensure_boxes(sess)
        self.viewer.layers.selection.active = boxes
        boxes.mode = "add_rectangle"
        self.hires.request()

    def _on_layer_removed(self, event) -> None:
        gone = event.value
        for key, sess in list(self._sessions.items()):
            if same(sess.image, gone):
                del self._sessions[key]
            elif same(sess.labels, gone):
                sess.labels = None
                sess.history.clear()
                sess.store.clear()
        self._refresh_images()

    def add_layer(self, sess: LayerSession, add, *args, **kwargs):
        """Add a layer above the image without taking the user's active layer away."""
        return add_layer_keeping_active(self.viewer, sess, add, *args, **kwargs)

    def arrange_layers(self, sess: LayerSession) -> None:
        arrange_layers(self.viewer, sess)

    def ensure_boxes(self, sess: LayerSession):
        """The image's boxes layer (created, or adopted by name), watched for new rectangles."""
        if not layer_alive(self.viewer, sess.boxes):
            found = find_layer(self.viewer, f"{sess.image.name} boxes", "Shapes")
            sess.boxes = found if found is not None else new_boxes_layer(self.viewer, sess.image)
            self.boxes.watch(sess)
            arrange_layers(self.viewer, sess)
        return sess.boxes

    def ensure_labels(self, sess: LayerSession):
        """The image's masks layer (created, or adopted by name if it has the image's shape)."""
        if not layer_alive(self.viewer, sess.labels):
            img = sess.image
            shape = tuple(base_data(img).shape[: img.ndim])
            found = find_layer(self.viewer, f"{img.name} masks", "Labels", shape)
            sess.labels = found if found is not None else self.add_layer(sess, new_labels_layer, self.viewer, img)
            arrange_layers(self.viewer, sess)
        return sess.labels

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

    def slice_image(self, layer, z: int | None, window=...) -> SliceImage:
        """What the model sees of slice ``z``. Call on the GUI thread, or pass ``window`` (read it there)."""
        window = self.current_window() if window is ... else window
        return SliceImage((id(layer), z, window, id(base_data(layer))), lambda: load_slice(layer, z), window)

    def view_problem(self) -> str | None:
        """Why boxes cannot be read from the current view (3-D display, transposed axes), or None."""
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            return "switch the viewer to 2-D (the 2D/3D button) to draw boxes and see the high-resolution view."
        if tuple(dims.displayed) != (dims.ndim - 2, dims.ndim - 1):
            return ("the displayed axes are transposed or rolled; boxes need the image's last two axes on screen "
                    "(View > Reset the axes order, or roll them back with Ctrl+E).")
        return None

    def content_key(self, sess: LayerSession, z: int | None) -> tuple:
        """What a rendering depicts; a result whose key is no longer current is dropped."""
        uids = tuple(o.uid for o in sess.store.on_slice(z))
        return id(sess.image), z, self.current_window(), uids, self._model_serial

    # ---- objects (see objects.py) ---------------------------------------------------------------------------
    def current_object(self) -> SegObject | None:
        return self.objects.current_object()

    def take_label(self, sess: LayerSession) -> int:
        return self.objects.take_label(sess)

    def next_object(self) -> None:
        self.objects.next_object()
    # ---- model --------------------------------------------------------------------------------------------
    def _model_params(self) -> tuple:
        ui = self.ui
        return (ui.backbone.currentText(), ui.checkpoint.text().strip() or None,
                ui.adapters.text().strip() or None, ui.device.currentText())

    def start_loading(self, force: bool = False) -> None:
        """Load the model chosen in the widget in a worker (the first box also triggers this)."""
        if self._loading is not None or (self.segmenter is not None and not force):
            return
        self._load_serial += 1
        serial, params = self._load_serial, self._model_params()
        self.ui.model_status.setText(f"loading {params[0]} …")

        def done():
            self._loading = None

        self._loading = self.workers.start(
            model_loading.load, *params, desc=f"Loading {params[0]}",
            on_return=lambda loaded: serial == self._load_serial and self._install(loaded),
            on_error=self._load_failed, on_finish=done)

    def _load_failed(self, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, model_loading.ModelLoadError) else f"{type(exc).__name__}: {exc}"
        self.notifier.error(f"Model not loaded. {msg}")
        self.ui.model_status.setText("model not loaded (see the notification)")
        self.boxes.drop_pending("no model could be loaded.")

    def load_model_now(self, backbone: str = "litemedsam", checkpoint=None, adapters=None,
                       device: str = "auto"):
        """Load synchronously (scripts, tests). ``adapters``: file, None for the embedded default head, or
        False for the plain backbone. Errors are notified and raised as ``ModelLoadError``."""
        self._load_serial += 1  # a GUI load still running will not override this one
        try:
            loaded = model_loading.load(backbone, checkpoint, adapters, device)
        except model_loading.ModelLoadError as exc:
            self.notifier.error(f"Model not loaded. {exc}")
            raise
        self._install(loaded)
        return loaded.model

    def _install(self, loaded: model_loading.LoadedModel) -> None:
        for note in loaded.notes:
            self.notifier.warning(note)
        self.predictor = Predictor(loaded.model, device=loaded.device)
        self.segmenter = Segmenter(self.predictor)
        self._device = str(self.predictor.device)
        self.ui.backbone.blockSignals(True)
        self.ui.backbone.setCurrentText(loaded.model.backbone_name)
        self.ui.backbone.blockSignals(False)
        self._model_updated(f"{loaded.description} on {self._device}")
        self.boxes.flush()

    def apply_model(self, model, description: str = "") -> None:
        """Use ``model`` (e.g. fine-tuned adapters) from now on: caches are invalidated and the views are
        re-rendered. Call from the GUI thread."""
        if self.segmenter is None:
            self.predictor = Predictor(model, device=self._device)
            self.segmenter = Segmenter(self.predictor)
        else:
            self.segmenter.set_model(model)
            self.segmenter.invalidate()
        self._model_updated(description or f"{model.backbone_name} (updated) on {self.predictor.device}")
        self.boxes.flush()

    def _model_updated(self, description: str) -> None:
        self._model_serial += 1
        self.ui.model_status.setText(f"model: {description}")
        self.notifier.info(f"Model ready: {description}.")
        self.model_changed.emit()
        self.hires.request()
        self.tools.update_uncertainty()

    def current_model(self):
        return None if self.predictor is None else self.predictor.model

    def ensure_model(self) -> bool:
        if self.segmenter is None:
            self.start_loading()
            self.notifier.info("Loading the model first; try again when it is ready.")
            return False
        return True

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
        self.objects.sync_ui()
        self.tools.hide_stale_uncertainty()
        if self.ui.uncertainty.isChecked():
            self.tools.unc_timer.start()

    def after_commit(self, sess: LayerSession) -> None:
        self.objects.sync_ui()
        self.hires.request()
        self.tools.update_uncertainty()

    def show_status(self, text: str) -> None:
        self.ui.status.setText(text)

    # ---- actions (buttons and shortcuts) ------------------------------------------------------------------
    def resegment(self, image_layer=None, keep_labels=()) -> int:
        """Re-segment the objects of the slice on screen with the current model, except ``keep_labels``
        (the fine-tune widget passes the labels the user corrected); returns how many were started."""
        sess = self.session() if image_layer is None else self._sessions.get(id(unwrap(image_layer)))
        if sess is None:
            return 0
        z = self.current_slice() if sess.volume else None
        return self.boxes.resegment(sess, z, set(keep_labels))

    def undo(self) -> None:
        self.objects.history_step(redo=False)

    def redo(self) -> None:
        self.objects.history_step(redo=True)

    def clear_object(self) -> None:
        self.objects.clear_object()


    def toggle_hires(self) -> None:
        self.ui.hires.setChecked(not self.ui.hires.isChecked())

    def toggle_uncertainty(self) -> None:
        self.ui.uncertainty.setChecked(not self.ui.uncertainty.isChecked())

    def cycle_window(self) -> None:
        names = [n for n in windows.CHOICES if n != windows.CUSTOM]
        cur = self.ui.window.currentText()
        self.ui.window.setCurrentText(names[(names.index(cur) + 1) % len(names)] if cur in names else names[0])

    def propagate(self, direction: str = "both", limit: int | None = None) -> None:
        dirs = {"up": (1,), "down": (-1,), "both": (1, -1)}[direction]
        self.tools.propagate(dirs, limit if limit is not None else self.ui.prop_limit.value())

    def propagate_both(self) -> None:
        self.propagate("both")

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
        """Process events until every worker and pending render is done; False on timeout."""
        return self.workers.wait_idle(timeout)
