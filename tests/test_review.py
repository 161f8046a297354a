"""Next uncertain object: objects ranked by the model's MC-dropout variance, visited least sure first."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.engine.objects import ObjectStore
from napari_imedsam.engine.review import next_to_review, rank_by_uncertainty
from napari_imedsam.engine.segmenter import SliceImage


class FakeSegmenter:
    """Variance fields by object box: a known ranking, and a box that no longer fits its image."""

    def __init__(self, level_of_box):
        self.level_of_box = level_of_box

    def uncertainty(self, src, box, max_side=256):
        level = self.level_of_box[tuple(box)]
        if level is None:
            raise ValueError("box outside the image")
        return np.full((4, 4), level, np.float32), None


def test_objects_are_ranked_least_sure_first_and_visited_in_turn():
    store = ObjectStore()
    a, b, c, gone = (store.new(i, (i, i, i + 5, i + 5), None) for i in (1, 2, 3, 4))
    seg = FakeSegmenter({a.box: 0.01, b.box: 0.2, c.box: 0.05, gone.box: None})
    src = SliceImage("k", lambda: np.zeros((32, 32)))
    ranked = rank_by_uncertainty(seg, [(src, o) for o in (a, b, c, gone)])
    assert [o for _, o in ranked] == [b, c, a]  # the box that no longer fits is left out
    assert ranked[0][0] == pytest.approx(0.2)
    seen: set[int] = set()
    order = []
    for _ in range(4):
        obj, restarted = next_to_review(ranked, seen)
        if restarted:
            seen.clear()
        seen.add(obj.uid)
        order.append((obj, restarted))
    assert order == [(b, False), (c, False), (a, False), (b, True)]
    assert next_to_review([], set()) == (None, False)


@pytest.mark.gui
def test_next_uncertain_object_goes_to_the_least_sure_object_and_its_slice(make_napari_viewer, segment_widget,
                                                                          monkeypatch):
    import napari_imedsam.engine.review as review

    viewer = make_napari_viewer()
    vol = np.zeros((10, 64, 64), np.float32)
    for z in (2, 5, 8):
        vol[z, 20:40, 20:40] = 1.0
    viewer.add_image(vol, name="vol")
    w = segment_widget(viewer)
    sess = w.session()
    for z in (2, 5, 8):
        viewer.dims.set_current_step(0, z)
        sess.boxes.add_rectangles([[[z, 18.5, 18.5], [z, 18.5, 41.5], [z, 41.5, 41.5], [z, 41.5, 18.5]]])
        assert w.wait_idle(60)
    assert sorted(o.slice for o in sess.store.objects) == [2, 5, 8]
    # the model's variance decides; pin it per slice so the order is known (slice 5 least sure, then 2, then 8)
    level = {2: 0.02, 5: 0.09, 8: 0.001}
    monkeypatch.setattr(review, "object_uncertainty", lambda seg, src, obj, max_side=48: level[obj.slice])
    visited = []
    for _ in range(4):
        w.next_uncertain()
        assert w.wait_idle(60)
        visited.append((sess.current.slice, w.current_slice()))
    assert visited == [(5, 5), (2, 2), (8, 8), (5, 5)]  # selected, and the viewer went to its slice
    assert w.ui.uncertainty.isChecked()  # its uncertainty is shown
    assert "rank 1 of 3" in sess.status and "new round" in sess.status
    assert "label" in w.ui.current.text()


@pytest.mark.gui
def test_next_uncertain_object_without_objects_says_what_to_do(make_napari_viewer, segment_widget):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    w = segment_widget(viewer)
    w.next_uncertain()
    assert any("draw boxes first" in str(m) for m in w.notifier.log)
