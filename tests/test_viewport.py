"""Camera -> region math and box conversions of ``engine.viewport`` (no viewer)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.engine.render import pixel_centres
from napari_imedsam.engine.viewport import (
    View,
    box_to_rectangle,
    centres_in_box,
    clip_box,
    pixel_bbox,
    rectangle_to_box,
    region_transform,
    sub_view,
    visible_view,
)


def test_rectangle_over_pixels_gives_edge_box():
    # a rectangle drawn exactly around pixels rows 2..4, cols 3..6 (data coords: centres at integers)
    rect = np.array([[1.5, 2.5], [1.5, 6.5], [4.5, 6.5], [4.5, 2.5]])
    assert rectangle_to_box(rect) == (3.0, 2.0, 7.0, 5.0)
    assert pixel_bbox(rectangle_to_box(rect), (10, 10)) == (2, 5, 3, 7)
    np.testing.assert_allclose(box_to_rectangle(rectangle_to_box(rect)), rect)


def test_rectangle_with_leading_slice_axis_uses_last_two_columns():
    rect = np.array([[5.0, 1.5, 2.5], [5.0, 1.5, 6.5], [5.0, 4.5, 6.5], [5.0, 4.5, 2.5]])
    assert rectangle_to_box(rect) == (3.0, 2.0, 7.0, 5.0)


def test_clip_box():
    assert clip_box((-5, -5, 4, 3), (10, 10)) == (0.0, 0.0, 4.0, 3.0)
    assert clip_box((12, 0, 20, 5), (10, 10)) is None
    assert clip_box((8, 3, 2, 1), (10, 10)) == (2.0, 1.0, 8.0, 3.0)  # corners in any order


def test_centres_in_box():
    m = centres_in_box((0, 0, 4, 4), (4, 4), (1, 1, 3, 2))
    expected = np.zeros((4, 4), bool)
    expected[1, 1:3] = True
    np.testing.assert_array_equal(m, expected)


def test_visible_view_whole_image_at_zoom_one():
    # 100x200 image, unit scale, camera centred on the image, canvas as large as the image
    v = visible_view((49.5, 99.5), 1.0, (100, 200), (1, 1), (0, 0), (100, 200))
    assert v.region == pytest.approx((0, 0, 100, 200))
    assert v.out_shape == (100, 200)


def test_visible_view_zoomed_in_with_scale_and_translate():
    # image pixels are 2 world units; translate 10; zoom 8 screen px / world unit -> 16 screen px per pixel
    scale, translate = (2.0, 2.0), (10.0, 10.0)
    centre_data = np.array([20.0, 30.0])  # data coords (pixel centres at integers)
    centre_world = centre_data * 2 + 10
    v = visible_view(tuple(centre_world), 8.0, (160, 320), scale, translate, (100, 100))
    # visible: 160/16 = 10 image px tall, 20 wide, centred on image (20.5, 30.5)
    assert v.region == pytest.approx((15.5, 20.5, 25.5, 40.5))
    assert v.out_shape == (160, 320)
    assert v.density == pytest.approx(16)


def test_visible_view_clips_to_the_image_and_caps_size():
    v = visible_view((0, 0), 4.0, (400, 400), (1, 1), (0, 0), (1000, 1000))
    assert v.region[:2] == (0.0, 0.0)
    assert v.out_shape == (202, 202)  # half the canvas shows the image, +0.5 px of the first pixel
    assert visible_view((-500, -500), 4.0, (400, 400), (1, 1), (0, 0), (100, 100)) is None
    big = visible_view((500, 500), 8.0, (4000, 4000), (1, 1), (0, 0), (1000, 1000), max_side=1000)
    assert max(big.out_shape) <= 1000
    dy, dx = big.pixel_size
    assert dy == pytest.approx(dx)


def test_region_transform_puts_output_pixels_over_the_image():
    """The layer transform maps output pixel centres to the world positions of the image points that
    the renderer sampled (engine.render.pixel_centres)."""
    scale, translate = (0.7, 1.3), (5.0, -2.0)
    region, shape = (10.25, 20.5, 14.25, 26.5), (16, 24)
    s, t = region_transform(region, shape, scale, translate)
    ys, xs = pixel_centres(region, shape)
    for i in (0, 7, 15):
        for j in (0, 11, 23):
            world_hires = (i * s[0] + t[0], j * s[1] + t[1])
            # the image point (image frame) -> data (-0.5) -> world
            world_image = ((ys[i] - 0.5) * scale[0] + translate[0], (xs[j] - 0.5) * scale[1] + translate[1])
            assert world_hires == pytest.approx(world_image)


def test_sub_view_covers_the_box_on_the_same_grid():
    view = View((0.0, 0.0, 10.0, 20.0), (40, 80))  # 4 output px per image px
    part, (i0, i1, j0, j1) = sub_view(view, (2.1, 3.0, 5.0, 4.6))
    assert (i0, i1, j0, j1) == (12, 19, 8, 20)
    assert part.region == pytest.approx((3.0, 2.0, 4.75, 5.0))
    assert part.out_shape == (7, 12)
    assert part.pixel_size == pytest.approx(view.pixel_size)
    assert sub_view(view, (30, 30, 40, 40)) is None
