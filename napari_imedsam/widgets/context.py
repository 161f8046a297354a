"""What the Segment widget's helpers (boxes, objects, high-res view, volume tools) may use: a narrow
context instead of the widget itself. The helpers report back with Qt signals that the widget connects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.layers import Labels

from ..engine.objects import SegObject
from ..engine.segmenter import Segmenter, SliceImage
from .label_book import LabelBook
from .layers import (
    LayerSession,
    add_layer_keeping_active,
    arrange_layers,
    base_data,
    find_layer,
    layer_alive,
    load_slice,
    new_labels_layer,
)
from .model_holder import ModelHolder
from .workers import Notifier, WorkerTracker


class SegmentContext:
    """The viewer and camera, the notifier, the shared workers and model, the label book, and the widget's
    current choices: ``session()`` (the selected image's layers), ``current_slice()``,
    ``current_window()`` (the CT window the model sees), ``view_problem()`` (why boxes cannot be read from
    the view, or None) and ``request_model()`` (start loading the model chosen in the widget)."""

    def __init__(self, viewer, camera, notifier: Notifier, workers: WorkerTracker, model: ModelHolder,
                 book: LabelBook, *, session: Callable[[], LayerSession | None],
                 current_slice: Callable[[], int | None], current_window: Callable[[], tuple | None],
                 view_problem: Callable[[], str | None], request_model: Callable[[], None],
                 alive: Callable[[], bool]):
        self.viewer, self.camera, self.notifier, self.workers = viewer, camera, notifier, workers
        self.model, self.book = model, book
        self.session, self.current_slice, self.current_window = session, current_slice, current_window
        self.view_problem, self.request_model, self.alive = view_problem, request_model, alive

    # ---- model and work --------------------------------------------------------------------------------
    @property
    def segmenter(self) -> Segmenter | None:
        return self.model.segmenter

    def ensure_model(self) -> bool:
        """True when a model is ready; else start loading it and say so."""
        if self.model.segmenter is None:
            self.request_model()
            self.notifier.info("Loading the model first; try again when it is ready.")
            return False
        return True

    def start(self, func, *args, **kwargs):
        """A job on the shared workers whose results are dropped once the widget is gone."""
        return self.workers.start(func, *args, alive=self.alive, **kwargs)

    def slice_image(self, layer, z: int | None, window: Any = ...) -> SliceImage:
        """What the model sees of slice ``z``. Call on the GUI thread, or pass ``window`` (read it there)."""
        window = self.current_window() if window is ... else window
        return SliceImage((id(layer), z, window, id(base_data(layer))), lambda: load_slice(layer, z), window)

    def content_key(self, sess: LayerSession, z: int | None) -> tuple:
        """What a rendering depicts; a result whose key is no longer current is dropped."""
        uids = tuple(o.uid for o in sess.store.on_slice(z))
        return id(sess.image), z, self.current_window(), uids, self.model.serial

    # ---- objects and layers ----------------------------------------------------------------------------
    def current_object(self) -> SegObject | None:
        """The object last committed (or one with its label) on the shown slice, else the last one there."""
        sess = self.session()
        if sess is None:
            return None
        here = sess.store.on_slice(self.current_slice())
        cur = sess.current
        if cur is not None and cur in here:
            return cur
        same = [o for o in here if cur is not None and o.label == cur.label]
        return same[-1] if same else (here[-1] if here else None)

    def add_layer(self, sess: LayerSession, add, *args, **kwargs):
        """Add a layer above the image without taking the user's active layer away."""
        return add_layer_keeping_active(self.viewer, sess, add, *args, **kwargs)

    def arrange(self, sess: LayerSession) -> None:
        arrange_layers(self.viewer, sess)

    def alive_layer(self, layer) -> bool:
        return layer_alive(self.viewer, layer)

    def ensure_labels(self, sess: LayerSession):
        """The image's masks layer (created, or adopted if a Labels layer of the image's shape carries its
        masks name, e.g. after the widget was closed and opened again)."""
        if not layer_alive(self.viewer, sess.labels):
            img = sess.image
            shape = tuple(base_data(img).shape[: img.ndim])
            found = find_layer(self.viewer, f"{img.name} masks", Labels, shape)
            sess.labels = found if found is not None else self.add_layer(sess, new_labels_layer, self.viewer, img)
            arrange_layers(self.viewer, sess)
        return sess.labels
