"""Objects and labels in the Segment widget: starting a new object, naming labels, undo/redo of commits
and clearing an object. The bookkeeping itself is ``engine.objects`` / ``engine.history``.

Signals: ``committed(session)`` after the masks changed, ``labels_changed()`` when the next label id or
the label names changed (the widget shows them)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QObject, Signal

from .context import SegmentContext
from .label_book import BCV_ORGANS


class ObjectActions(QObject):
    committed = Signal(object)
    labels_changed = Signal()

    def __init__(self, ctx: SegmentContext, parent=None):
        super().__init__(parent)
        self.ctx = ctx

    # ---- labels -------------------------------------------------------------------------------------------
    def use_bcv_names(self) -> None:
        self.ctx.book.use_preset(BCV_ORGANS)
        self.labels_changed.emit()
        self.ctx.notifier.info("Labels 1-13 named after the BCV organs (1 spleen, 2 right kidney, ... 6 liver, "
                               "... 13 left adrenal gland).")

    def next_object(self) -> None:
        """Start a new object: the next label id not used yet."""
        book, sess = self.ctx.book, self.ctx.session()
        used = sess.store.labels() if sess is not None else set()
        if book.current in used:
            book.current = max(used | {0}) + 1
        if sess is not None:
            sess.current = None
        self.labels_changed.emit()

    # ---- history ----------------------------------------------------------------------------------------
    def history_step(self, redo: bool) -> None:
        ctx = self.ctx
        sess = ctx.session()
        if sess is None or sess.labels is None:
            return
        change = (sess.history.redo if redo else sess.history.undo)(sess.labels.data)
        if change is None:
            ctx.notifier.info("Nothing to redo." if redo else "Nothing to undo.")
            return
        sess.store.apply(change.meta, undo=not redo)
        # the object the step leaves on screen is current: after undoing a click, the next click refines the
        # object as it was before it (not a new object)
        back = change.meta.get("added" if redo else "removed", [])
        sess.current = back[-1] if back else None
        sess.labels.refresh()
        self.committed.emit(sess)

    def clear_object(self) -> None:
        """Remove the current object's label from the shown slice (one undoable step) and its boxes."""
        ctx = self.ctx
        sess, obj, z = ctx.session(), ctx.current_object(), ctx.current_slice()
        if sess is None or obj is None or sess.labels is None:
            ctx.notifier.warning("No current object on this slice to clear.")
            return
        index = (slice(None), slice(None)) if z is None else (z, slice(None), slice(None))
        new = np.array(sess.labels.data[index], copy=True)
        new[new == obj.label] = 0
        removed = sess.store.with_label(obj.label, z)
        sess.history.commit(sess.labels.data, index, new, meta={"removed": removed})
        sess.store.remove(removed)
        uids = {o.uid for o in removed}
        feats = sess.boxes.features if ctx.alive_layer(sess.boxes) else None
        if feats is not None and "uid" in feats and uids:
            idx = {i for i, u in enumerate(feats["uid"]) if int(u) in uids}
            if idx:
                sess.boxes.selected_data = idx
                sess.boxes.remove_selected()
        sess.current = None
        sess.labels.refresh()
        ctx.notifier.info(f"Cleared label {obj.label} ({ctx.book.name_of(obj.label)}) on this slice (Ctrl+Z "
                          "undoes).")
        self.committed.emit(sess)
