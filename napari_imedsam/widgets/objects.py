"""Objects and labels in the Segment widget: which label the next box gets, the current object, undo/redo
of commits and clearing an object. The bookkeeping itself is ``engine.session`` / ``engine.history``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..engine.objects import SegObject
from .label_book import BCV_ORGANS
from .layers import LayerSession, label_color, layer_alive

if TYPE_CHECKING:
    from .segment_widget import SegmentWidget


class ObjectActions:
    def __init__(self, widget: SegmentWidget):
        self.w = widget

    # ---- labels -------------------------------------------------------------------------------------------
    def current_object(self) -> SegObject | None:
        """The object last committed (or one with its label) on the shown slice, else the last one there."""
        w = self.w
        sess = w.session()
        if sess is None:
            return None
        here = sess.store.on_slice(w.current_slice())
        cur = sess.current
        if cur is not None and cur in here:
            return cur
        same = [o for o in here if cur is not None and o.label == cur.label]
        return same[-1] if same else (here[-1] if here else None)

    def take_label(self, sess: LayerSession) -> int:
        label = self.w.book.take(used=sess.store.labels())
        self.sync_ui()
        return label

    def sync_ui(self) -> None:
        w, ui, book = self.w, self.w.ui, self.w.book
        ui.label.blockSignals(True)
        ui.label.setValue(book.current)
        ui.label.blockSignals(False)
        ui.label_name.setText(book.names.get(book.current, ""))
        sess = w.session()
        if sess is not None and layer_alive(w.viewer, sess.boxes) and not sess.boxes.selected_data:
            sess.boxes.current_edge_color = label_color(sess.labels, book.current)  # the next box's colour
        obj = self.current_object()
        ui.current.setText("current object: none" if obj is None else
                           f"current object: label {obj.label} ({book.name_of(obj.label)})")

    def on_label_spin(self, value: int) -> None:
        self.w.book.current = int(value)
        self.w.ui.label_name.setText(self.w.book.names.get(int(value), ""))

    def use_bcv_names(self) -> None:
        self.w.book.use_preset(BCV_ORGANS)
        self.sync_ui()
        self.w.notifier.info("Labels 1-13 named after the BCV organs (1 spleen, 2 right kidney, ... 6 liver, ... "
                             "13 left adrenal gland).")

    def next_object(self) -> None:
        """Start a new object: the next label id not used yet."""
        w = self.w
        sess = w.session()
        used = sess.store.labels() if sess is not None else set()
        if w.book.current in used:
            w.book.current = max(used | {0}) + 1
        if sess is not None:
            sess.current = None
        self.sync_ui()

    # ---- history ----------------------------------------------------------------------------------------
    def history_step(self, redo: bool) -> None:
        w = self.w
        sess = w.session()
        if sess is None or sess.labels is None:
            return
        if w.tools.propagation is not None:
            w.notifier.warning("Wait for the propagation to finish (or cancel it) before undo/redo.")
            return
        change = (sess.history.redo if redo else sess.history.undo)(sess.labels.data)
        if change is None:
            w.notifier.info("Nothing to redo." if redo else "Nothing to undo.")
            return
        sess.store.apply(change.meta, undo=not redo)
        added = change.meta.get("added", [])
        sess.current = added[-1] if redo and added else None
        sess.labels.refresh()
        w.after_commit(sess)

    def clear_object(self) -> None:
        """Remove the current object's label from the shown slice (one undoable step) and its boxes."""
        w = self.w
        sess, obj, z = w.session(), self.current_object(), w.current_slice()
        if sess is None or obj is None or sess.labels is None:
            w.notifier.warning("No current object on this slice to clear.")
            return
        index = (slice(None), slice(None)) if z is None else (z, slice(None), slice(None))
        new = np.array(sess.labels.data[index], copy=True)
        new[new == obj.label] = 0
        removed = sess.store.with_label(obj.label, z)
        sess.history.commit(sess.labels.data, index, new, meta={"removed": removed})
        sess.store.remove(removed)
        uids = {o.uid for o in removed}
        feats = sess.boxes.features if layer_alive(w.viewer, sess.boxes) else None
        if feats is not None and "uid" in feats and uids:
            idx = {i for i, u in enumerate(feats["uid"]) if int(u) in uids}
            if idx:
                sess.boxes.selected_data = idx
                sess.boxes.remove_selected()
        sess.current = None
        sess.labels.refresh()
        w.notifier.info(f"Cleared label {obj.label} ({w.book.name_of(obj.label)}) on this slice (Ctrl+Z undoes).")
        w.after_commit(sess)
