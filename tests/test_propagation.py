"""3-D propagation logic (``engine.propagation``) with a fake segmenter, and once with the tiny model."""

from __future__ import annotations

from dataclasses import replace

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

    # The first release's absolute rules (off by default since the calibration on real volumes; still there)
    first = PropagationSettings(min_stability=0.75, max_intensity_shift=0.5, doubt_overlap=None,
                                doubt_relative_stability=None, doubt_relative_contrast=None, patience=1)
    steps, reason = _run(propagate(fuzzy, 6, seed, len(vol), -1, first))
    assert steps == [] and "uncertain" in reason and stability(np.array([0.5, -0.5])) == 0.0

    image = vol * 0.8 + 0.1  # the object is bright in the model's view
    image[8] = 0.1  # ... and slice 8 holds no bright tissue under the same mask
    steps, reason = _run(propagate(_fake_segment(vol, []), 6, seed, len(vol), +1, first, image=lambda z: image[z]))
    assert [s.slice for s in steps] == [7] and "different tissue" in reason
    # the default: the seed-relative hard rule catches the same slice
    steps, reason = _run(propagate(_fake_segment(vol, []), 6, seed, len(vol), +1,
                                   PropagationSettings(max_seed_shift=0.5), image=lambda z: image[z]))
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


# ---- calibrated rules: a faint end, a neighbour, one doubtful slice -----------------------------------------
def _disk(n, cy, cx, r):
    yy, xx = np.mgrid[:n, :n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def _faint_end_volume(nz=16, n=48):
    """Object A (z 3-11, bright, its last two slices faint) and a neighbour B right after it (z 12-15) whose
    edge falls inside A's last box: the image (background 0.1) and the two label masks."""
    img = np.full((nz, n, n), 0.1, np.float32)
    a, b = np.zeros((nz, n, n), bool), np.zeros((nz, n, n), bool)
    for z in range(3, 12):
        a[z] = _disk(n, 24, 18, 8 if z < 10 else 6)
        img[z][a[z]] = 1.0 if z < 10 else 0.45  # the low-contrast end
    for z in range(12, nz):
        b[z] = _disk(n, 24, 30, 6)
        img[z][b[z]] = 1.0
    return img, a, b


def _threshold_segment(img, level=0.25):
    """A model that finds everything brighter than ``level`` inside the box (faint tissue too)."""

    def segment(z, box):
        x0, y0, x1, y1 = box
        inside = np.zeros(img.shape[1:], bool)
        inside[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
        return np.where(inside & (img[z] > level), 10.0, -10.0)

    return segment


def test_stops_at_a_faint_end_and_not_in_the_neighbour():
    img, a, b = _faint_end_volume()
    seg = _threshold_segment(img)
    up, why_up = _run(propagate(seg, 6, a[6], len(img), +1, image=lambda z: img[z]))
    down, why_down = _run(propagate(seg, 6, a[6], len(img), -1, image=lambda z: img[z]))
    assert [s.slice for s in up] == [7, 8, 9, 10, 11]  # the faint slices 10-11 are kept: not stopped early
    assert "jumped elsewhere" in why_up and "slice 12" in why_up  # the neighbour's edge is refused
    assert [s.slice for s in down] == [5, 4, 3] and "vanished" in why_down
    for s in up + down:
        np.testing.assert_array_equal(s.mask, a[s.slice])
        assert not (s.mask & b[s.slice]).any()
        assert {"overlap", "relative_contrast", "seed_shift"} <= set(s.signals)
    faint = {s.slice: s.signals for s in up}[10]
    assert faint["relative_contrast"] < 0.5 and faint["overlap"] == 1.0  # one doubt only: kept
    # what the first release's rules did on the same volume: the faint end counts as another tissue
    first = PropagationSettings(min_stability=0.75, max_intensity_shift=0.5, min_overlap=None, max_seed_shift=None,
                                doubt_overlap=None, doubt_relative_stability=None, doubt_relative_contrast=None,
                                patience=1, box_intensity=None)
    old, why_old = _run(propagate(seg, 6, a[6], len(img), +1, first, image=lambda z: img[z]))
    assert [s.slice for s in old] == [7, 8, 9] and "different tissue" in why_old


def test_one_doubtful_slice_does_not_stop_but_two_do():
    vol = _blob_volume(nz=16, z_range=(1, 14))
    seed = vol[7] > 0.5

    def segment(z, box, odd):
        """The object's mask, except on the ``odd`` slices: shifted sideways (overlap ~0.7 with its
        neighbours) and fuzzy (stability 0): two doubts."""
        mask = vol[z] > 0.5
        if z in odd:
            return np.where(np.roll(mask, odd[z], axis=1), 0.5, -0.5)
        return np.where(mask, 10.0, -10.0)

    steps, _ = _run(propagate(lambda z, box: segment(z, box, {9: 5}), 7, seed, len(vol), +1))
    assert [s.slice for s in steps] == [8, 9, 10, 11, 12, 13, 14]  # slice 9 was doubtful, slice 10 not: kept
    assert steps[1].signals["overlap"] < 0.8 and steps[1].signals["relative_stability"] < 0.9
    two = lambda z, box: segment(z, box, {9: 5, 10: -5})  # noqa: E731
    steps, reason = _run(propagate(two, 7, seed, len(vol), +1))
    # two in a row stop it; the first doubtful slice is kept (often an object's faint last slice), and the
    # reason names the first slice dropped
    assert [s.slice for s in steps] == [8, 9] and "no longer looks like" in reason and "slice 10" in reason
    steps, reason = _run(propagate(two, 7, seed, len(vol), +1, PropagationSettings(keep_first_doubtful=False)))
    assert [s.slice for s in steps] == [8] and "slice 9" in reason


def test_a_new_object_after_a_gap_is_not_followed():
    """A z-stack: the object fades out and the next one starts under the same box (regrowth, contrast)."""
    n = 48
    img = np.full((14, n, n), 0.1, np.float32)
    truth = np.zeros(img.shape, bool)
    for z, r, v in ((2, 5, 1.0), (3, 7, 1.0), (4, 8, 1.0), (5, 7, 1.0), (6, 5, 0.4), (7, 4, 0.3),
                    (8, 5, 1.0), (9, 8, 1.0), (10, 8, 1.0)):
        m = _disk(n, 24, 24, r)
        img[z][m] = v
        truth[z] = m if z <= 7 else False
    steps, reason = _run(propagate(_threshold_segment(img), 4, truth[4], len(img), +1, image=lambda z: img[z]))
    # slice 7 (faint and small) is doubtful; a hard rule stopping on slice 8 drops it with slice 8 (on the
    # stardist nuclei the doubtful slice before the next object is more often the gap than the object)
    assert [s.slice for s in steps] == [5, 6] and "another object" in reason and "slice 8" in reason
    keep = PropagationSettings(keep_doubtful_at_hard_stop=True)
    steps, reason = _run(propagate(_threshold_segment(img), 4, truth[4], len(img), +1, keep, image=lambda z: img[z]))
    assert [s.slice for s in steps] == [5, 6, 7] and "another object" in reason and "slice 8" in reason
    # each of the three rules alone catches it; without them it walks into the next object
    off = replace(keep, max_regrowth=None, max_contrast_recovery=None)
    steps, reason = _run(propagate(_threshold_segment(img), 4, truth[4], len(img), +1, off, image=lambda z: img[z]))
    assert [s.slice for s in steps] == [5, 6, 7] and "intensity came back" in reason and "slice 8" in reason
    off = replace(off, max_intensity_recovery=None)
    steps, _ = _run(propagate(_threshold_segment(img), 4, truth[4], len(img), +1, off, image=lambda z: img[z]))
    assert 8 in [s.slice for s in steps]


def test_a_stacked_object_of_the_same_size_is_not_followed():
    """Touching nuclei along z: the next object starts under the same box at the same size and contrast,
    after one dimmer slice (the gap). Neither the area nor the contrast comes back; the intensity does."""
    n = 48
    img = np.full((12, n, n), 0.1, np.float32)
    truth = np.zeros(img.shape, bool)
    for z, r, v in ((2, 7, 1.0), (3, 8, 1.0), (4, 8, 1.0), (5, 7, 1.0), (6, 7, 0.75), (7, 7, 1.0), (8, 7, 1.0)):
        m = _disk(n, 24, 24, r)
        img[z][m] = v
        truth[z] = m if z <= 6 else False
    segment = _threshold_segment(img)
    steps, reason = _run(propagate(segment, 4, truth[4], len(img), +1, image=lambda z: img[z]))
    assert [s.slice for s in steps] == [5, 6] and "intensity came back" in reason and "slice 7" in reason
    assert "intensity_recovery" not in steps[0].signals  # no dip yet on slice 5 (its mean is the seed's)
    steps, _ = _run(propagate(segment, 4, truth[4], len(img), +1, PropagationSettings(max_intensity_recovery=None),
                              image=lambda z: img[z]))
    assert [s.slice for s in steps][:4] == [5, 6, 7, 8]  # the rule off: it walks on into the next object


def test_a_darker_band_inside_the_object_does_not_stop_it():
    """The mean intensity dips and comes back while the mask is as large as the seed's (the object's own
    texture, as in many stardist nuclei near their middle): not the gap before another object."""
    n = 48
    img = np.full((12, n, n), 0.1, np.float32)
    truth = np.zeros(img.shape, bool)
    for z in range(2, 10):
        truth[z] = _disk(n, 24, 24, 8)
        img[z][truth[z]] = 0.8 if z == 5 else 1.0
    segment = _threshold_segment(img)
    steps, reason = _run(propagate(segment, 3, truth[3], len(img), +1, image=lambda z: img[z]))
    assert [s.slice for s in steps] == list(range(4, 10)), reason
    assert "intensity_recovery" not in steps[2].signals  # slice 6: the dip on slice 5 did not count
    any_size = PropagationSettings(dip_max_area=None)
    steps, reason = _run(propagate(segment, 3, truth[3], len(img), +1, any_size, image=lambda z: img[z]))
    assert [s.slice for s in steps] == [4, 5] and "intensity came back" in reason and "slice 6" in reason


def test_marked_end_slice_fills_up_to_it_and_stops_there():
    img, a, _ = _faint_end_volume()
    seg = _threshold_segment(img)
    gone = lambda z, box: np.full(img.shape[1:], -10.0) if z == 5 else seg(z, box)  # noqa: E731
    up, why = _run(propagate(seg, 6, a[6], len(img), +1, image=lambda z: img[z], until=9))
    assert [s.slice for s in up] == [7, 8, 9] and "end slice 9" in why
    down, why = _run(propagate(gone, 6, a[6], len(img), -1, image=lambda z: img[z], until=3))
    assert [s.slice for s in down] == [4, 3] and "nothing found on slice(s) 5" in why


# ---- interpolation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["adaptive", "linear"])
def test_interpolation_fills_between_and_nothing_else(mode):
    from napari_imedsam.engine.interpolation import interpolate

    vol = _blob_volume(nz=16, z_range=(1, 14))
    calls = []
    seg = _fake_segment(vol, calls)
    gt = vol > 0.5
    steps, summary = _run(interpolate(seg, {3: gt[3], 9: gt[9]}, mode=mode))
    assert sorted(s.slice for s in steps) == [4, 5, 6, 7, 8] and "filled 5" in summary
    assert {z for z, _ in calls} == {4, 5, 6, 7, 8}  # annotated slices and slices outside are not touched
    for s in steps:
        np.testing.assert_array_equal(s.mask, gt[s.slice])  # the box covered the object on every slice
    steps, _ = _run(interpolate(seg, {3: gt[3], 6: gt[6], 9: gt[9], 12: np.zeros_like(gt[0])}, mode=mode))
    assert sorted(s.slice for s in steps) == [4, 5, 7, 8]  # an empty mask is no annotation
    with pytest.raises(ValueError, match="at least two"):
        next(interpolate(seg, {3: gt[3]}))


def test_interpolated_boxes_come_from_both_ends():
    from napari_imedsam.engine.interpolation import interpolate

    n = 64
    moving = np.stack([_disk(n, 32, 12 + 4 * z, 5) for z in range(11)])  # slides right by 4 px per slice
    calls = []
    steps, _ = _run(interpolate(_fake_segment(moving.astype(np.float32), calls), {0: moving[0], 10: moving[10]},
                                mode="linear"))
    boxes = dict(calls)
    x0, _, x1, _ = boxes[5]
    assert abs((x0 + x1) / 2 - 32.5) < 1  # half-way between the two annotated boxes
    for s in steps:
        np.testing.assert_array_equal(s.mask, moving[s.slice])


# ---- volumes and cancellation --------------------------------------------------------------------------------
class _FakeSegmenter:
    """Stands in for engine.segmenter.Segmenter in propagate_volume (the fake model thresholds the slice)."""

    def __init__(self):
        self.keys = []

    def full_logits(self, src, box):
        self.keys.append(src.key)
        return _threshold_segment(np.asarray(src.load())[None])(0, box)


def test_propagate_volume_both_ways_with_marked_extent_and_cancel(monkeypatch):
    from napari_imedsam.engine import propagate_volume
    from napari_imedsam.engine import segmenter as segmenter_module

    monkeypatch.setattr(segmenter_module, "Segmenter", _FakeSegmenter)
    img, a, _ = _faint_end_volume()
    fake = _FakeSegmenter()
    gen = propagate_volume(fake, img, 6, a[6])
    steps, reasons = _run(gen)
    assert [s.slice for s in steps] == [7, 8, 9, 10, 11, 5, 4, 3]
    assert [s.direction for s in steps] == [1] * 5 + [-1] * 3 and set(reasons) == {1, -1}
    steps, reasons = _run(propagate_volume(fake, img, 6, a[6], start_slice=4, end_slice=8))
    assert [s.slice for s in steps] == [7, 8, 5, 4] and "end slice 8" in reasons[1]
    steps, _ = _run(propagate_volume(fake, img, 6, a[6], directions=(-1,)))
    assert [s.slice for s in steps] == [5, 4, 3]
    with pytest.raises(ValueError, match="outside the marked extent"):
        next(propagate_volume(fake, img, 6, a[6], start_slice=8, end_slice=12))

    # cancel: close the generator between slices; what was yielded stays valid, nothing more is computed
    gen = propagate_volume(fake, img, 6, a[6])
    done = [next(gen), next(gen)]
    n_calls = len(fake.keys)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
    assert len(fake.keys) == n_calls and [s.slice for s in done] == [7, 8]
    for s in done:
        np.testing.assert_array_equal(s.mask, a[s.slice])


def test_cancelled_steps_are_one_undo_step():
    """What the widget does with the steps of a cancelled run: one history group, one undo."""
    from napari_imedsam.engine.history import History, paste_mask

    img, a, _ = _faint_end_volume()
    labels = np.zeros(img.shape, np.int32)
    labels[6][a[6]] = 3
    history = History()
    gen = propagate(_threshold_segment(img), 6, a[6], len(img), +1, image=lambda z: img[z])
    for _ in range(3):
        step = next(gen)
        index = (step.slice, slice(None), slice(None))
        history.commit(labels, index, paste_mask(labels[index], step.mask, 3, replace_label=True), group="run")
    gen.close()
    assert [z for z in range(len(img)) if (labels[z] == 3).any()] == [6, 7, 8, 9]
    history.undo(labels)
    assert [z for z in range(len(img)) if (labels[z] == 3).any()] == [6] and not history.can_undo


def test_propagate_volume_with_the_tiny_model():
    from napari_imedsam import Predictor, load_model
    from napari_imedsam.engine import PropagationSettings as Exported
    from napari_imedsam.engine import interpolate_between, propagate_volume

    assert Exported is PropagationSettings
    vol = _blob_volume() * 200
    pred = Predictor(load_model("tiny"), device="cpu")
    steps, reasons = _run(propagate_volume(pred, vol, 6, vol[6] > 100, settings=PropagationSettings(limit=2)))
    assert set(reasons) == {1, -1} and all(isinstance(r, str) for r in reasons.values()) and len(steps) <= 4
    steps, summary = _run(interpolate_between(pred, vol, {4: vol[4] > 100, 7: vol[7] > 100}))
    assert {s.slice for s in steps} <= {5, 6} and "between annotated slices 4-7" in summary
