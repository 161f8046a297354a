"""Adaptive rendering (engine/render.py) gives the dense answer while evaluating a fraction of the points."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_imedsam.engine.render import OUTSIDE_LOGIT, _dilate3, render_logits


def test_dilate3_is_a_3x3_binary_dilation():
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (1, 7), (5, 1), (9, 13), (64, 48)):
        mask = rng.random(shape) < 0.05
        mask[0, -1] = True  # a corner: nothing wraps around
        expected = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
        np.testing.assert_array_equal(_dilate3(mask), expected)


def _disks(xy: np.ndarray) -> np.ndarray:
    """Logits of two disks (one 3 px across) in a 40 x 50 image: positive inside, steep (30 logits per pixel)
    so that only the cells the boundary crosses are near 0, as with a confident model."""
    x, y = xy[:, 0], xy[:, 1]
    big = 9.0 - np.hypot(x - 20.3, y - 17.8)
    small = 1.5 - np.hypot(x - 41.0, y - 30.0)
    return (30.0 * np.maximum(big, small)).astype(np.float32)


@pytest.mark.parametrize("region, out_shape", [
    ((0, 0, 40, 50), (40, 50)),  # 1x
    ((0, 0, 40, 50), (160, 200)),  # 4x
    ((-10, -5, 30, 45), (321, 400)),  # 8x-ish, partly outside the image, odd size
])
def test_adaptive_render_has_the_dense_mask(region, out_shape):
    dense, dense_stats = render_logits(_disks, region, out_shape, (40, 50), dense=True)
    calls = []

    def counted(xy):
        calls.append(len(xy))
        return _disks(xy)

    adaptive, stats = render_logits(counted, region, out_shape, (40, 50))
    assert adaptive.dtype == np.float32 and adaptive.shape == out_shape
    assert not np.isnan(adaptive).any()
    np.testing.assert_array_equal(adaptive > 0, dense > 0)  # the mask, small disk included, pixel for pixel
    assert (adaptive[dense == OUTSIDE_LOGIT] == OUTSIDE_LOGIT).all()
    assert sum(calls) == stats.evaluated
    if out_shape[0] > 100:
        assert stats.evaluated < 0.3 * dense_stats.evaluated
