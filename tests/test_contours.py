"""Sub-pixel contours (``engine.contours``), high-resolution export refinement (``engine.refine``) and the
slice-aware ``engine.segmenter`` (tiny model); no viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.engine.contours import object_polygons, object_view, polygon_area, polygons_from_prob
from napari_imedsam.engine.objects import SegObject
from napari_imedsam.engine.refine import refine_slice, upsample_nearest
from napari_imedsam.engine.render import pixel_centres

CY, CX, R = 20.3, 25.6, 7.4  # a disk in the image frame (pixel edges at integers)


def disk_render(region, out_shape):
    """An ideal INR: a soft disk evaluated at the output pixel centres."""
    ys, xs = pixel_centres(region, out_shape)
    d = np.sqrt((ys[:, None] - CY) ** 2 + (xs[None, :] - CX) ** 2)
    return (1.0 / (1.0 + np.exp((d - R) * 8.0))).astype(np.float32)


def test_polygon_of_a_disk_is_sub_pixel_accurate_in_data_coordinates():
    box = (CX - R - 2, CY - R - 2, CX + R + 2, CY + R + 2)
    (poly,) = object_polygons(disk_render, box, (48, 48), factor=4)
    # data coords = image frame - 0.5: the disk's centre in data coordinates
    r = np.hypot(poly[:, 0] - (CY - 0.5), poly[:, 1] - (CX - 0.5))
    assert np.abs(r - R).max() < 0.1
    assert polygon_area(poly) == pytest.approx(np.pi * R**2, rel=0.01)


def test_finer_factor_gives_more_vertices():
    box = (CX - R - 2, CY - R - 2, CX + R + 2, CY + R + 2)
    (p1,) = object_polygons(disk_render, box, (48, 48), factor=1)
    (p4,) = object_polygons(disk_render, box, (48, 48), factor=4)
    assert len(p4) > 3 * len(p1)


def test_polygons_clipped_to_box_and_closed_at_borders():
    prob = np.ones((10, 10), np.float32)  # object fills the region: outline along the region's border
    (poly,) = polygons_from_prob(prob, (0.0, 0.0, 10.0, 10.0))
    assert poly[:, 0].min() == pytest.approx(-0.5, abs=0.51) and poly[:, 0].max() <= 9.5
    box = (CX - 3, CY - 3, CX + 3, CY + 3)  # a box smaller than the disk: the outline is the box
    (poly,) = object_polygons(disk_render, box, (48, 48), factor=2)
    assert poly[:, 1].min() >= CX - 3 - 0.5 - 0.3 and poly[:, 1].max() <= CX + 3 - 0.5 + 0.3


def test_object_view():
    v = object_view((2.2, 3.0, 5.5, 7.9), (10, 10), factor=4, pad=1)
    assert v.region == (2.0, 1.0, 9.0, 7.0) and v.out_shape == (28, 24)
    with pytest.raises(ValueError):
        object_view((0, 0, 1, 1), (10, 10), factor=0)


def _coarse_disk(hw=(48, 48)):
    ys, xs = pixel_centres((0, 0, *hw), hw)
    return (np.hypot(ys[:, None] - CY, xs[None, :] - CX) <= R).astype(np.int32) * 3


def test_refined_export_is_closer_to_the_true_shape_than_nearest():
    coarse = _coarse_disk()
    obj = SegObject(3, (CX - R - 2, CY - R - 2, CX + R + 2, CY + R + 2))
    fine = refine_slice(coarse, [obj], lambda box, region, shape: disk_render(region, shape), factor=4)
    truth = (disk_render((0, 0, 48, 48), (192, 192)) > 0.5) * 3
    nearest = upsample_nearest(coarse, 4)
    assert fine.shape == (192, 192)
    assert (fine != truth).sum() < 0.3 * (nearest != truth).sum()
    assert set(np.unique(fine)) == {0, 3}


def test_refine_respects_hand_edits_and_other_labels():
    coarse = _coarse_disk()
    coarse[14:28, 26:40] = 0  # the user erased the right half by hand
    coarse[5, 5] = 7  # another object elsewhere
    obj = SegObject(3, (CX - R - 2, CY - R - 2, CX + R + 2, CY + R + 2))
    fine = refine_slice(coarse, [obj], lambda box, region, shape: disk_render(region, shape), factor=2)
    # nothing of the object comes back in the erased area, away from the remaining mask's edge
    assert not (fine[2 * 15 : 2 * 28, 2 * 28 : 2 * 40] == 3).any()
    assert (fine[10:12, 10:12] == 7).all()
    assert refine_slice(coarse, [obj], None, factor=1).shape == coarse.shape  # factor 1: a copy


def test_segmenter_with_tiny_model():
    from napari_imedsam import Predictor, load_model
    from napari_imedsam.engine.segmenter import Segmenter, SliceImage
    from napari_imedsam.engine.viewport import View

    rng = np.random.default_rng(0)
    img = rng.random((60, 80)).astype(np.float32)
    seg = Segmenter(Predictor(load_model("tiny"), device="cpu"))
    src = SliceImage("a", lambda: img)
    box = (10.5, 12.0, 40.0, 30.5)
    logits, (r0, r1, c0, c1) = seg.box_logits(src, box)
    assert (r0, r1, c0, c1) == (12, 31, 10, 40) and logits.shape == (19, 30)
    full = seg.full_logits(src, box)
    assert full.shape == (60, 80) and (full[:12] < -10).all() and (full[:, 41:] < -10).all()
    # the label render of a view at pixel resolution agrees with the box mask
    obj = SegObject(5, box)
    lab, evaluated = seg.render_objects(src, [obj], View((0.0, 0.0, 60.0, 80.0), (60, 80)))
    assert evaluated > 0
    np.testing.assert_array_equal(lab[r0:r1, c0:c1] == 5, logits > 0)
    assert not lab[:r0].any()
    with pytest.raises(ValueError, match="zero area"):
        seg.box_logits(src, (5, 5, 5, 9))
    with pytest.raises(ValueError, match="outside"):
        seg.box_logits(src, (100, 100, 120, 130))
    # switching slices re-sets the image only when the key changes
    other = SliceImage("b", lambda: img[::-1].copy())
    seg.box_logits(other, box)
    assert seg._key == "b"
    var, view = seg.uncertainty(src, box, max_side=32)
    assert var.shape == view.out_shape and max(var.shape) <= 32
