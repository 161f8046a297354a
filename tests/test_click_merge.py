"""Progressive clicks: each click changes only the region it points at (engine.click_merge), on synthetic
decoder outputs and through the Predictor with the shipped model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_imedsam.engine.click_merge import merge_click
from napari_imedsam.model.box_decoder import BoxFeatures
from src_training.metrics import dice

SIZE = 64  # input pixels over a 16x16 logit grid: 4 input pixels per cell


def feats(logit: np.ndarray, fill: float) -> BoxFeatures:
    lg = torch.from_numpy(logit.astype(np.float32))[None, None]
    return BoxFeatures(torch.full((1, 3, *logit.shape), fill), lg, torch.tensor([[0.0, 0.0, 64.0, 64.0]]))


def blobs(*cells: tuple[int, int, int, int]) -> np.ndarray:
    """Logits +4 inside the given (r0, r1, c0, c1) rectangles of a 16x16 grid, -4 elsewhere."""
    out = np.full((16, 16), -4.0)
    for r0, r1, c0, c1 in cells:
        out[r0:r1, c0:c1] = 4.0
    return out


def test_a_negative_click_removes_only_the_part_it_is_on():
    previous = feats(blobs((2, 6, 2, 6), (10, 14, 10, 14)), 0.0)
    new = feats(blobs(), 1.0)  # the re-decoded mask drops both blobs
    merged = merge_click(previous, new, np.array([4 * 4.5, 4 * 3.5]), False, SIZE)  # on the first blob
    mask = merged.lowres_logit[0, 0].numpy() > 0
    np.testing.assert_array_equal(mask, blobs((10, 14, 10, 14)) > 0)  # the other blob stays
    up = merged.upscaled[0, 0].numpy()
    assert (up[2:6, 2:6] == 1.0).all() and (up[10:14, 10:14] == 0.0).all()  # the INR reads new features there only
    assert torch.equal(merged.boxes, previous.boxes)


def test_a_positive_click_adds_only_its_part_and_never_removes():
    previous = feats(blobs((2, 6, 2, 6)), 0.0)
    new = feats(blobs((2, 6, 6, 9), (10, 14, 10, 14)), 1.0)  # grows at the click, loses the old blob's left half,
    merged = merge_click(previous, new, np.array([4 * 7.5, 4 * 3.5]), True, SIZE)  # leaks into a far blob
    mask = merged.lowres_logit[0, 0].numpy() > 0
    np.testing.assert_array_equal(mask, blobs((2, 6, 2, 9)) > 0)


def test_a_click_the_new_mask_does_not_follow_changes_nothing():
    previous = feats(blobs((2, 6, 2, 6)), 0.0)
    ignored = feats(blobs((2, 6, 2, 6)), 1.0)  # the positive click at (12, 12) is background in the new mask
    assert merge_click(previous, ignored, np.array([4 * 12.5, 4 * 12.5]), True, SIZE) is previous
    outside = merge_click(previous, feats(blobs(), 1.0), np.array([4 * 12.5, 4 * 12.5]), False, SIZE)
    assert outside is previous  # a negative click off the mask has nothing to remove


def test_a_change_next_to_the_click_counts_one_further_away_does_not():
    previous = feats(blobs((2, 6, 2, 6)), 0.0)
    beside = feats(blobs((2, 6, 2, 8)), 1.0)  # grows up to column 7; the click at cell (4, 9)
    merged = merge_click(previous, beside, np.array([4 * 9.5, 4 * 4.5]), True, SIZE)
    assert (merged.lowres_logit[0, 0].numpy() > 0).sum() == 4 * 6  # within 2 cells of the click: taken
    far = merge_click(previous, beside, np.array([4 * 11.5, 4 * 4.5]), True, SIZE)
    assert far is previous  # 4 cells away: not the click's doing


@pytest.mark.slow
def test_clicks_refine_the_shipped_model_without_undoing_it(halo_image):
    """The embedded default model on a core in a halo, boxed tightly: a positive click on the missed halo
    grows the mask and keeps what it had; a negative click on the halo's edge only removes; far from both
    clicks the mask is the box's own, to the pixel; off the mask a negative click changes nothing."""
    from napari_imedsam import Predictor, load_model

    pred = Predictor(load_model("litemedsam"), device="cpu")
    pred.set_image(halo_image())
    yy, xx = np.mgrid[:128, :160]
    truth = np.hypot(yy - 60, xx - 70) <= 34
    box = (35.5, 25.5, 104.5, 94.5)
    before = pred.predict(box) > 0.5
    grown = pred.predict(box, points=[[98.5, 60.5]], point_labels=[1]) > 0.5
    assert grown.sum() > 1.05 * before.sum() and dice(grown, truth) > dice(before, truth)
    assert not (before & ~grown).any()
    both = pred.predict(box, points=[[98.5, 60.5], [70.5, 88.5]], point_labels=[1, 0]) > 0.5
    assert both.sum() < grown.sum() and not (both & ~grown).any()
    np.testing.assert_array_equal(both[:75], grown[:75])  # far above the negative click: untouched
    off = pred.predict(box, points=[[98.5, 60.5], [37.5, 27.5]], point_labels=[1, 0]) > 0.5
    np.testing.assert_array_equal(off, grown)  # a negative click on background: nothing to remove
