"""What both dock widgets of one viewer share: one model holder, one worker tracker, one notifier, and the
Segment widget (if open). Kept in a registry keyed by the viewer (weakly: it goes with the viewer), so a
widget finds its viewer's services without module-level singletons or looking through the docks.

    services = for_viewer(viewer)
    services.model.start_loading("litemedsam"); services.model.model_changed.connect(...)
    services.workers.start(func, ..., alive=widget_alive)
"""

from __future__ import annotations

import weakref

from .layers import unwrap
from .model_holder import ModelHolder
from .workers import Notifier, WorkerTracker


class ViewerServices:
    """One per viewer: ``notifier`` (the plugin's messages, "I-MedSAM: ..."), ``workers`` (every job of
    both widgets), ``model`` (the model in use and its adapters) and the open Segment widget."""

    def __init__(self):
        self.notifier = Notifier()
        self.workers = WorkerTracker(self.notifier)
        self.model = ModelHolder(self.workers, self.notifier)
        self._segment = None

    @property
    def segment_widget(self):
        """The Segment (I-MedSAM) widget open in this viewer, or None."""
        widget = self._segment() if self._segment is not None else None
        return widget if widget is not None and widget.is_alive() else None

    def set_segment_widget(self, widget) -> None:
        self._segment = None if widget is None else weakref.ref(widget)


_REGISTRY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def for_viewer(viewer) -> ViewerServices:
    """The services of ``viewer`` (napari's proxied viewer or the viewer itself), made on first use."""
    viewer = unwrap(viewer)
    services = _REGISTRY.get(viewer)
    if services is None:
        services = _REGISTRY[viewer] = ViewerServices()
    return services
