"""3-D propagation logic (``engine.propagation``) with a fake segmenter, and once with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from napari_imedsam.engine.propagation import PropagationSettings, propagate, stability
from src_training.data.boxes import mask_to_box


def _blob_volume(nz=14, n=48, z_range=(3, 10)):
    zz, yy, xx = np.mgrid[:nz, :n, :n]
    zc, zr = (z_range[0] + z_range[1]) / 2, (z_range[1] - z_range[0]) / 2 + 0.5
    r = 14 * np.sqrt(np.clip(1 - ((zz - zc) / zr) ** 2, 0, None))
    return ((yy - 24) ** 2 + (xx - 22) ** 2 <= r**2).astype(np.float32)


def _fake_segment(vol, calls):
    """Thresholds the volume inside the box: an ideal model."""

    def segment(z, box):
        calls.append((z, box))
        x0, y0, x1, y1 = box
        inside = np.zeros(vol.shape[1:], bool)
        inside[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
        return np.where(inside & (vol[z] > 0.5), 10.0, -10.0)

    return segment


def test_mask_to_box():
    m = np.zeros((50, 50), bool)
    m[10:20, 5:45] = True
    assert tuple(mask_to_box(m, margin=0.0, min_margin=0.0)) == (5.0, 10.0, 45.0, 20.0)
    assert tuple(mask_to_box(m, margin=0.1, min_margin=2.0)) == (1.0, 8.0, 49.0, 22.0)
    assert tuple(mask_to_box(m, margin=0.5, min_margin=2.0)) == (0.0, 5.0, 50.0, 25.0)  # clipped
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(np.zeros((5, 5), bool))


def test_propagates_until_the_blob_ends_both_ways():
    vol = _blob_volume()
    seed = vol[6] > 0.5
    calls = []
    seg = _fake_segment(vol, calls)
    up = list(propagate(seg, 6, seed, len(vol), +1))
    down = list(propagate(seg, 6, seed, len(vol), -1))
    assert [s.slice for s in up] == [7, 8, 9, 10]
    assert [s.slice for s in down] == [5, 4, 3]
    for s in up + down:
        np.testing.assert_array_equal(s.mask, vol[s.slice] > 0.5)
    # each prompt is the previous slice's mask box (with margin)
    assert calls[0][1] == tuple(mask_to_box(seed, 0.1, 2.0))


def test_stop_reason_and_limit():
    vol = _blob_volume()
    seg = _fake_segment(vol, [])
    gen = propagate(seg, 6, vol[6] > 0.5, len(vol), +1, PropagationSettings(limit=2))
    steps = []
    with pytest.raises(StopIteration) as stop:
        while True:
            steps.append(next(gen))
    assert [s.slice for s in steps] == [7, 8]
    assert "limit of 2" in stop.value.value


def _run(gen):
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        return steps, stop.value


def test_stops_on_leak_instability_and_intensity_change():
    vol = _blob_volume()
    seed = vol[6] > 0.5

    def leaky(z, box):
        return np.full(vol.shape[1:], 5.0) if z == 8 else np.where(vol[z] > 0.5, 10.0, -10.0)

    steps, reason = _run(propagate(leaky, 6, seed, len(vol), +1))
    assert [s.slice for s in steps] == [7] and "leak" in reason

    def fuzzy(z, box):  # logits near zero: a mask that flips with the threshold
        return np.where(vol[z] > 0.5, 0.5, -0.5) if z == 5 else np.where(vol[z] > 0.5, 10.0, -10.0)

    steps, reason = _run(propagate(fuzzy, 6, seed, len(vol), -1))
    assert steps == [] and "uncertain" in reason and stability(np.array([0.5, -0.5])) == 0.0

    image = vol * 0.8 + 0.1  # the object is bright in the model's view
    image[8] = 0.1  # ... and slice 8 holds no bright tissue under the same mask
    steps, reason = _run(propagate(_fake_segment(vol, []), 6, seed, len(vol), +1, image=lambda z: image[z]))
    assert [s.slice for s in steps] == [7] and "different tissue" in reason


def test_empty_seed_and_volume_end():
    vol = _blob_volume(nz=6, z_range=(0, 5))
    seg = _fake_segment(vol, [])
    steps, reason = _run(propagate(seg, 2, np.zeros(vol.shape[1:], bool), len(vol), +1))
    assert steps == [] and "empty" in reason
    steps, reason = _run(propagate(seg, 2, vol[2] > 0.5, len(vol), +1))
    assert [s.slice for s in steps] == [3, 4, 5] and "end of the volume" in reason
    with pytest.raises(ValueError):
        next(propagate(seg, 2, vol[2] > 0.5, len(vol), 0))


def test_with_the_segmenter_and_tiny_model():
    """The engine pieces fit together: Segmenter.full_logits as the segment function (tiny model: masks
    are arbitrary, but every step must stay inside its box and the run must end)."""
    from napari_imedsam import Predictor, load_model
    from napari_imedsam.engine.segmenter import Segmenter, SliceImage

    vol = _blob_volume() * 200
    seg = Segmenter(Predictor(load_model("tiny"), device="cpu"))

    def segment(z, box):
        return seg.full_logits(SliceImage(("vol", z), lambda z=z: vol[z]), box)

    seed = vol[6] > 100
    steps, reason = _run(propagate(segment, 6, seed, len(vol), +1, PropagationSettings(limit=3)))
    assert isinstance(reason, str) and len(steps) <= 3
    for s in steps:
        x0, y0, x1, y1 = s.box
        rows, cols = np.nonzero(s.mask)
        assert rows.min() >= np.floor(y0) and rows.max() < np.ceil(y1)
        assert cols.min() >= np.floor(x0) and cols.max() < np.ceil(x1)
