"""The query-point sampler: proportions, the boundary band, padding weights, the paper's whole grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from src_training.batching import collate, grid_points, prepare_sample, sample_rngs
from src_training.data.sample import Sample
from src_training.sampling import PointMix, band_points, sample_points, uniform_points


def disc_sample(size: int = 256, centre=(100.0, 140.0), radius: float = 9.0, factor: int = 1) -> Sample:
    rng = np.random.default_rng(0)
    image = rng.random((size, size)).astype(np.float32)
    yy, xx = (np.mgrid[: size * factor, : size * factor] + 0.5) / factor
    mask = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    return Sample(image=image, mask=mask, source="disc", case_id="disc")


def test_points_fall_in_the_proportions_asked():
    s = disc_sample()
    item = prepare_sample(s, 256)
    mix = PointMix(box=0.5, boundary=0.3, uniform=0.2, margin=0.25, band=2.0)
    rng = np.random.default_rng(1)
    box = np.array([131.0, 91.0, 149.0, 109.0], dtype=np.float32)  # the disc's box, input px (scale 1)
    pts = sample_points(item.mask, box, item.valid_hw, item.scale_yx, 4000, mix, rng)
    assert pts.shape == (4000, 2)
    n_box, n_bnd, n_uni = mix.counts(4000)
    assert (n_box, n_bnd, n_uni) == (2000, 1200, 800)
    grown = (box[0] - 4.5, box[1] - 4.5, box[2] + 4.5, box[3] + 4.5)
    in_box = ((pts[:n_box, 0] >= grown[0]) & (pts[:n_box, 0] <= grown[2])
              & (pts[:n_box, 1] >= grown[1]) & (pts[:n_box, 1] <= grown[3]))
    assert in_box.all()
    # the uniform share covers the whole image: most of it far from the object
    far = np.hypot(pts[-n_uni:, 0] - 140, pts[-n_uni:, 1] - 100) > 40
    assert far.mean() > 0.9
    # uniform points over a 256x256 image put ~0.4 % inside a radius-9 disc; the mix puts far more
    inside = s.mask[pts[:, 1].astype(int), pts[:, 0].astype(int)].mean()
    uni = uniform_points(item.valid_hw, 4000, np.random.default_rng(1))
    inside_uniform = s.mask[uni[:, 1].astype(int), uni[:, 0].astype(int)].mean()
    assert inside > 20 * inside_uniform and inside > 0.2


@pytest.mark.parametrize("factor", [1, 4])
def test_boundary_points_lie_within_the_band(factor):
    s = disc_sample(size=128, centre=(60.0, 70.0), radius=11.0, factor=factor)
    item = prepare_sample(s, 256)  # image 128 -> input 256: 2 input px per image px
    band = 2.0
    pts = band_points(item.mask, item.scale_yx, band, item.factor, 2000, np.random.default_rng(3))
    assert len(pts) == 2000
    # distance of each point from the disc's edge, in image pixels
    x_img, y_img = pts[:, 0] / 2.0, pts[:, 1] / 2.0
    dist = np.abs(np.hypot(x_img - 70.0, y_img - 60.0) - 11.0)
    assert dist.max() <= band + 1.0  # the band around edge pixels (pixel-centred: + one pixel's reach)
    assert np.median(dist) < band
    # both sides of the edge are sampled, at continuous positions
    inside = np.hypot(x_img - 70.0, y_img - 60.0) < 11.0
    assert 0.25 < inside.mean() < 0.75
    assert len(np.unique(np.round(pts, 3), axis=0)) > 1900


def test_a_mask_without_edge_gets_box_points_instead():
    image = np.zeros((32, 32), np.float32)
    s = Sample(image=image, mask=np.ones((32, 32), bool), source="full", case_id="full")
    item = prepare_sample(s, 64)
    pts = sample_points(item.mask, np.array([0, 0, 64, 64], np.float32), item.valid_hw, item.scale_yx, 100,
                        PointMix(), np.random.default_rng(0))
    assert pts.shape == (100, 2) and (pts >= 0).all() and (pts <= 64).all()
    edge = ndimage.binary_erosion(item.mask, border_value=1) ^ item.mask
    assert not edge.any()


def test_padding_points_carry_weight_zero_and_the_whole_grid_is_the_papers():
    a = disc_sample(size=64, centre=(30.0, 30.0), radius=6.0)
    b = Sample(image=np.random.default_rng(1).random((32, 64)).astype(np.float32),
               mask=disc_sample(size=64, centre=(16.0, 30.0), radius=6.0).mask[:32], source="b", case_id="b")
    items = [prepare_sample(a, 64, 0), prepare_sample(b, 64, 1)]
    grid = collate(items, sample_rngs(0, 0, 0, [0, 1]), jitter=0, points=None)
    assert np.array_equal(grid.points[0].numpy(), grid_points((64, 64)))
    assert grid.weights[0].sum() == 64 * 64 and grid.weights[1].sum() == 32 * 64
    padded = grid.points[1, 32 * 64 :].numpy()  # padding repeats real points of the valid region
    assert (padded[:, 1] < 32).all() and (grid.weights[1, 32 * 64 :] == 0).all()
    mixed = collate(items, sample_rngs(0, 0, 0, [0, 1]), jitter=0, points=500)
    assert mixed.points.shape == (2, 500, 2) and bool((mixed.weights == 1).all())
    assert float(mixed.points[1, :, 1].max()) < 32  # inside the valid region


def test_uniform_only_is_the_old_uniform_sampler():
    s = disc_sample(size=64, centre=(30.0, 30.0), radius=6.0)
    item = prepare_sample(s, 64)
    batch = collate([item], sample_rngs(5, 1, 0, [0]), jitter=3, points=300, mix=PointMix.uniform_only())
    rng = sample_rngs(5, 1, 0, [0])[0]
    rng.integers(0, 4, size=4)  # the box jitter draws first
    expected = (rng.random((300, 2)) * np.array([64, 64])).astype(np.float32)
    assert np.allclose(batch.points[0].numpy(), expected)


def test_jitter_follows_the_box_size():
    from src_training.batching import box_jitter_px

    small = disc_sample(size=256, radius=7.0).mask
    large = disc_sample(size=256, centre=(128.0, 128.0), radius=100.0).mask
    assert box_jitter_px(small, 20, 0.1) == 1  # a 14-px nucleus moves by at most 1-2 px, not 20
    assert box_jitter_px(large, 20, 0.1) == 20  # capped by the absolute jitter
    assert box_jitter_px(small, 20, 0.0) == 20  # the paper's absolute jitter


def test_bad_mixes_are_refused():
    with pytest.raises(ValueError, match="positive sum"):
        PointMix(box=0, boundary=0, uniform=0)
    with pytest.raises(ValueError, match="band"):
        PointMix(band=0)
