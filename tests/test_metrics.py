"""Metrics on hand-made masks with known values, and each empty-mask convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from src_training.metrics import (
    aggregate,
    aggregate_by,
    compute_metrics,
    dice,
    hausdorff,
    iou,
    surface,
    surface_dice,
)


def square(shape=(40, 40), top=5, left=5, size=10) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def pixel(shape, row, col) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[row, col] = True
    return m


def brute_force_distances(pred, gt, spacing=(1.0, 1.0)):
    """Directed surface distances by all pairs, independent of the distance transform."""
    p = np.argwhere(surface(pred)) * np.asarray(spacing)
    g = np.argwhere(surface(gt)) * np.asarray(spacing)
    d = cdist(p, g)
    return d.min(axis=1), d.min(axis=0)


def test_dice_iou_of_overlapping_squares():
    gt = square(top=0, left=0)  # 100 px
    pred = square(top=0, left=5)  # 100 px, 50 px shared
    assert dice(pred, gt) == pytest.approx(0.5)
    assert iou(pred, gt) == pytest.approx(1 / 3)
    m = compute_metrics(pred, gt)
    assert m["dice"] == pytest.approx(0.5) and m["iou"] == pytest.approx(1 / 3)


def test_identical_masks():
    m = compute_metrics(square(), square())
    assert m == {"dice": 1.0, "iou": 1.0, "hd": 0.0, "hd95": 0.0, "nsd": 1.0}


@pytest.mark.parametrize("shift", [(0, 3), (4, 0), (3, 4)])
def test_hausdorff_of_shifted_single_pixel_is_the_shift(shift):
    gt = pixel((20, 20), 5, 5)
    pred = pixel((20, 20), 5 + shift[0], 5 + shift[1])
    m = compute_metrics(pred, gt)
    expected = math.hypot(*shift)
    assert m["hd"] == pytest.approx(expected, abs=1e-12)
    assert m["hd95"] == pytest.approx(expected, abs=1e-12)
    assert hausdorff(pred, gt) == pytest.approx(expected, abs=1e-12)


def test_anisotropic_spacing_scales_each_axis():
    gt = pixel((20, 20), 5, 5)
    along_cols = pixel((20, 20), 5, 8)
    along_rows = pixel((20, 20), 8, 5)
    spacing = (2.0, 0.5)  # mm per row, mm per column
    assert compute_metrics(along_cols, gt, spacing=spacing)["hd"] == pytest.approx(1.5)
    assert compute_metrics(along_rows, gt, spacing=spacing)["hd"] == pytest.approx(6.0)
    diagonal = pixel((20, 20), 8, 9)
    assert compute_metrics(diagonal, gt, spacing=spacing)["hd"] == pytest.approx(math.hypot(6.0, 2.0))


def test_hd95_differs_from_hd_with_an_outlier():
    gt = square((60, 60), top=10, left=10, size=20)
    pred = gt.copy()
    pred[50, 50] = True  # one far false-positive pixel
    d_pred, d_gt = brute_force_distances(pred, gt)
    m = compute_metrics(pred, gt)
    assert m["hd"] == pytest.approx(max(d_pred.max(), d_gt.max()))
    assert m["hd"] == pytest.approx(math.hypot(21, 21))  # (50, 50) to the corner (29, 29)
    assert m["hd95"] == pytest.approx(np.percentile(np.concatenate([d_pred, d_gt]), 95))
    assert m["hd95"] < m["hd"]
    assert m["hd95"] == 0.0  # 1 outlier among ~150 surface pixels


def test_distances_match_brute_force_with_spacing():
    rng = np.random.default_rng(0)
    gt = np.zeros((30, 40), bool)
    gt[8:20, 10:31] = True
    pred = np.zeros((30, 40), bool)
    pred[10:25, 5:28] = True
    pred &= rng.random(pred.shape) > 0.1
    spacing = (1.5, 0.7)
    d_pred, d_gt = brute_force_distances(pred, gt, spacing)
    m = compute_metrics(pred, gt, spacing=spacing, nsd_tolerance=1.2)
    pooled = np.concatenate([d_pred, d_gt])
    assert m["hd"] == pytest.approx(pooled.max())
    assert m["hd95"] == pytest.approx(np.percentile(pooled, 95))
    assert m["nsd"] == pytest.approx((pooled <= 1.2).mean())


def test_nsd_one_when_identical_and_drops_when_shifted():
    gt = square()
    assert surface_dice(gt, gt, tolerance=0.0) == 1.0
    shifted = square(left=8)  # 3 px to the right
    tight = surface_dice(shifted, gt, tolerance=1.0)
    assert 0.0 < tight < 1.0
    assert surface_dice(shifted, gt, tolerance=3.0) == 1.0
    assert surface_dice(shifted, gt, tolerance=2.0) > tight
    d_pred, d_gt = brute_force_distances(shifted, gt)
    assert tight == pytest.approx((np.concatenate([d_pred, d_gt]) <= 1.0).mean())


def test_nsd_tolerance_is_in_mm_with_spacing():
    gt = square()
    shifted = square(left=8)  # 3 px = 1.5 mm at 0.5 mm per column
    assert compute_metrics(shifted, gt, spacing=(1.0, 0.5), nsd_tolerance=1.5)["nsd"] == 1.0
    assert compute_metrics(shifted, gt, spacing=(1.0, 0.5), nsd_tolerance=1.0)["nsd"] < 1.0


def test_both_empty_convention():
    empty = np.zeros((10, 10), bool)
    assert compute_metrics(empty, empty) == {"dice": 1.0, "iou": 1.0, "hd": 0.0, "hd95": 0.0, "nsd": 1.0}
    assert hausdorff(empty, empty) == 0.0 and surface_dice(empty, empty) == 1.0


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty_convention(pred_empty):
    empty, full = np.zeros((10, 10), bool), square((10, 10), 2, 2, 4)
    pred, gt = (empty, full) if pred_empty else (full, empty)
    m = compute_metrics(pred, gt, spacing=(1.0, 2.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["nsd"] == 0.0
    assert math.isinf(m["hd"]) and math.isinf(m["hd95"])
    assert math.isinf(hausdorff(pred, gt)) and surface_dice(pred, gt) == 0.0


def test_aggregate_means_finite_values_and_counts_inf():
    empty = np.zeros((20, 20), bool)
    results = [
        compute_metrics(pixel((20, 20), 5, 5), pixel((20, 20), 5, 8)),  # hd 3
        compute_metrics(pixel((20, 20), 5, 5), pixel((20, 20), 5, 5)),  # hd 0
        compute_metrics(empty, pixel((20, 20), 5, 5)),  # missed: hd inf
    ]
    agg = aggregate(results)
    assert agg["n"] == 3
    assert agg["dice"] == pytest.approx(1 / 3)
    assert agg["hd"] == pytest.approx(1.5) and agg["hd_n_inf"] == 1
    assert agg["hd95"] == pytest.approx(1.5) and agg["hd95_n_inf"] == 1
    assert agg["nsd"] == pytest.approx(1 / 3)
    only_inf = aggregate(results[2:])
    assert math.isnan(only_inf["hd"]) and only_inf["hd_n_inf"] == 1
    assert aggregate([]) == {"n": 0}


def test_aggregate_by_group():
    a = compute_metrics(square(), square()) | {"label_id": 6}
    b = compute_metrics(square(), square(left=10)) | {"label_id": 1}
    per = aggregate_by([a, b, a], "label_id")
    assert set(per) == {1, 6}
    assert per[6]["n"] == 2 and per[6]["dice"] == 1.0
    assert per[1]["dice"] == pytest.approx(0.5)
    assert "label_id" not in per[6]


def test_input_validation():
    with pytest.raises(ValueError, match="same shape"):
        compute_metrics(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="threshold"):
        compute_metrics(np.full((4, 4), 0.7), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(square(), square(), spacing=(1.0,))
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(square(), square(), spacing=(1.0, 0.0))
    ones = compute_metrics(square().astype(np.uint8), square())  # 0/1 integers are accepted
    assert ones["dice"] == 1.0


def test_mask_on_image_edge_has_a_surface():
    gt = np.ones((5, 5), bool)  # the whole image: its edge is its surface
    pred = gt.copy()
    pred[:, 4] = False
    m = compute_metrics(pred, gt)
    assert m["hd"] == pytest.approx(1.0)


def test_works_in_3d():
    gt = np.zeros((10, 10, 10), bool)
    gt[5, 5, 5] = True
    pred = np.zeros_like(gt)
    pred[5, 5, 8] = True
    assert compute_metrics(pred, gt, spacing=(1.0, 1.0, 2.0))["hd"] == pytest.approx(6.0)
