"""Undo/redo of label commits (``engine.history``), object/label bookkeeping (``engine.session``) and CT
window presets (``engine.windows``); no viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.engine import windows
from napari_imedsam.engine.history import History, paste_mask
from napari_imedsam.engine.objects import ObjectStore
from napari_imedsam.widgets.label_book import BCV_ORGANS, LabelBook


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_commit_undo_redo_multi_level():
    labels = np.zeros((40, 40), np.int32)
    h = History()
    m1, m2 = _disk((20, 20), 10, 10, 5), _disk((20, 20), 12, 12, 4)
    h.commit(labels, (slice(0, 20), slice(0, 20)), paste_mask(labels[:20, :20], m1, 1))
    h.commit(labels, (slice(10, 30), slice(10, 30)), paste_mask(labels[10:30, 10:30], m2, 2))
    after_two = labels.copy()
    assert (labels == 1).sum() == m1.sum() and (labels == 2).sum() > 0
    h.undo(labels)
    assert (labels == 2).sum() == 0 and (labels == 1).sum() == m1.sum()
    h.undo(labels)
    assert not labels.any()
    assert h.undo(labels) is None
    h.redo(labels)
    h.redo(labels)
    np.testing.assert_array_equal(labels, after_two)
    assert not h.can_redo


def test_patch_is_shrunk_to_changed_bbox():
    labels = np.zeros((100, 100), np.uint8)
    h = History()
    mask = np.zeros((100, 100), bool)
    mask[40:45, 50:52] = True
    change = h.commit(labels, (slice(None), slice(None)), paste_mask(labels, mask, 3))
    (patch,) = change.patches
    assert patch.before.shape == (5, 2)
    assert patch.index == (slice(40, 45), slice(50, 52))


def test_volume_slice_index_and_grouping():
    vol = np.zeros((5, 10, 10), np.int32)
    h = History()
    for z in (1, 2, 3):
        m = np.zeros((10, 10), bool)
        m[2:5, 2:5] = True
        h.commit(vol, (z, slice(None), slice(None)), paste_mask(vol[z], m, 7), meta={"added": [z]}, group="prop")
    assert len(h) == 1  # one undo step for the whole propagation
    change = h._undo[-1]
    assert change.meta["added"] == [1, 2, 3]
    assert h.touched_slices(change) == {1, 2, 3}
    h.undo(vol)
    assert not vol.any()


def test_undo_keeps_hand_edits_made_after_the_commit():
    labels = np.zeros((10, 10), np.int32)
    h = History()
    m = np.zeros((10, 10), bool)
    m[2:6, 2:6] = True
    h.commit(labels, (slice(None), slice(None)), paste_mask(labels, m, 1))
    labels[3, 3] = 9  # painted by hand over the committed object
    labels[8, 8] = 9  # painted elsewhere
    h.undo(labels)
    assert labels[3, 3] == 9 and labels[8, 8] == 9
    assert (labels == 1).sum() == 0


def test_no_change_is_not_recorded_and_redo_cleared_by_commit():
    labels = np.zeros((10, 10), np.int32)
    h = History()
    assert h.commit(labels, (slice(None), slice(None)), labels.copy()) is None
    m = np.zeros((10, 10), bool)
    m[1, 1] = True
    h.commit(labels, (slice(None), slice(None)), paste_mask(labels, m, 1))
    h.undo(labels)
    assert h.can_redo
    h.commit(labels, (slice(None), slice(None)), paste_mask(labels, m, 2))
    assert not h.can_redo


def test_levels_and_memory_are_bounded():
    labels = np.zeros((10, 10), np.int32)
    h = History(max_levels=3)
    for k in range(1, 6):
        h.commit(labels, (slice(None), slice(None)), np.full((10, 10), k))
    assert len(h) == 3
    h2 = History(max_bytes=1000)
    for k in range(1, 6):
        h2.commit(labels, (slice(None), slice(None)), np.full((10, 10), 10 + k))
    assert len(h2) == 1


def test_paste_mask_replace_label():
    cur = np.array([[1, 1, 0], [2, 0, 0]])
    m = np.array([[False, True, True], [False, False, False]])
    np.testing.assert_array_equal(paste_mask(cur, m, 1), [[1, 1, 1], [2, 0, 0]])
    np.testing.assert_array_equal(paste_mask(cur, m, 1, replace_label=True), [[0, 1, 1], [2, 0, 0]])


def test_label_book_auto_increment_and_names():
    book = LabelBook()
    assert book.take() == 1 and book.take() == 2
    assert book.take(used={4}) == 3 and book.current == 5  # skips used ids
    book.auto_increment = False
    assert book.take() == 5 and book.take() == 5
    book.use_preset(BCV_ORGANS)
    assert len(BCV_ORGANS) == 13 and book.name_of(6) == "liver" and book.name_of(20) == "object 20"
    book.set_name(20, " tumour ")
    assert book.name_of(20) == "tumour"


def test_object_store_apply_meta():
    store = ObjectStore()
    a = store.new(1, (0, 0, 5, 5), None)
    b = store.new(2, (1, 1, 4, 4), 3)
    assert a.uid != b.uid
    store.apply({"added": [a, b]}, undo=False)
    assert store.on_slice(3) == [b] and store.labels() == {1, 2}
    store.apply({"removed": [a]}, undo=False)
    assert store.objects == [b]
    store.apply({"removed": [a]}, undo=True)
    assert set(store.objects) == {a, b}
    assert store.with_label(2, 3) == [b] and store.with_label(2, None) == []


def test_window_presets():
    assert windows.window_for("abdomen") == (-125.0, 275.0)
    assert windows.window_for("none") is None
    assert windows.window_for("custom", (-100, 100)) == (-100.0, 100.0)
    with pytest.raises(ValueError, match="high > low"):
        windows.window_for("custom", (100, 100))
    with pytest.raises(ValueError, match="Unknown window"):
        windows.window_for("liver")
    ct = np.full((4, 32, 32), -1000.0)
    ct[:, 8:24, 8:24] = 40.0
    assert windows.default_preset(ct) == "abdomen"
    assert windows.default_preset(np.random.default_rng(0).random((32, 32))) == "none"
    assert windows.default_preset(np.zeros((8, 8)), {"is_hu": True}) == "abdomen"
    assert "abdomen [-125, 275] HU" in windows.describe("abdomen", (-125.0, 275.0))
