"""Which image the Segment widget works on, and the layers it keeps for each image (``LayerSession``).

``ImageSessions`` fills the image combo box with the viewer's Image layers (by reference: a renamed layer
stays selected), makes a session for a supported image when asked, and forgets the sessions of removed
layers. Signal ``selection_changed()``: another image was selected (the widget sets it up)."""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal

from .layers import LayerSession, layer_alive, same, unsupported_reason, unwrap
from .workers import Notifier


class ImageSessions(QObject):
    selection_changed = Signal()

    def __init__(self, viewer, combo, notifier: Notifier, parent: QObject | None = None):
        super().__init__(parent)
        self.viewer, self.combo, self.notifier = viewer, combo, notifier
        self.sessions: dict[int, LayerSession] = {}
        combo.currentIndexChanged.connect(lambda _: self.selection_changed.emit())

    def image_layers(self) -> list:
        """The viewer's Image layers, except the uncertainty overlays the widget made."""
        from napari.layers import Image

        return [lay for lay in self.viewer.layers if isinstance(lay, Image)
                and not any(same(s.uncertainty, lay) for s in self.sessions.values())]

    def refresh(self, *_args) -> None:
        current = self.image_layer()
        layers = self.image_layers()
        combo = self.combo
        combo.blockSignals(True)
        combo.clear()
        for lay in layers:
            combo.addItem(lay.name, lay)
        if current is not None and current in layers:
            combo.setCurrentIndex(layers.index(current))
        combo.blockSignals(False)
        if layers and (current is None or current not in layers):
            combo.setCurrentIndex(0)
            self.selection_changed.emit()

    def image_layer(self):
        """The selected image layer (None when there is none)."""
        layer = unwrap(self.combo.currentData())
        return layer if layer_alive(self.viewer, layer) else None

    def select(self, layer) -> None:
        index = next(i for i in range(self.combo.count()) if same(self.combo.itemData(i), layer))
        self.combo.setCurrentIndex(index)

    def of(self, layer) -> LayerSession | None:
        """The session of ``layer`` if it has one."""
        layer = unwrap(layer)
        sess = self.sessions.get(id(layer))
        return sess if sess is not None and sess.image is layer else None

    def current(self, create: bool = False) -> LayerSession | None:
        """The selected image's session; with ``create``, made now (None, with a warning, for an image that
        cannot be segmented)."""
        layer = unwrap(self.image_layer())
        if layer is None:
            return None
        sess = self.of(layer)
        if sess is None and create:
            reason = unsupported_reason(layer)
            if reason:
                self.notifier.warning(reason)
                return None
            sess = self.sessions[id(layer)] = LayerSession(layer)
        return sess

    def on_layer_removed(self, event) -> None:
        gone = event.value
        for key, sess in list(self.sessions.items()):
            if same(sess.image, gone):
                del self.sessions[key]
            elif same(sess.labels, gone):
                sess.labels = None
                sess.history.clear()
                sess.store.clear()
        self.refresh()
