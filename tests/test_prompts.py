"""Click and mask prompts through the public Predictor (tiny backbone): what they change, that every render
path takes them, and the errors a bad prompt gets."""

from __future__ import annotations

import numpy as np
import pytest

from src_training.metrics import dice

BOX = (45.0, 35.0, 95.0, 85.0)


@pytest.fixture
def pred(tiny_predictor, disk_image):
    tiny_predictor.set_image(disk_image())
    return tiny_predictor


def test_clicks_change_the_prediction_and_are_cached(pred):
    box_only = pred.predict(BOX, return_logits=True)
    clicked = pred.predict(BOX, points=[[70, 60], [50, 40]], point_labels=[1, 0], return_logits=True)
    assert clicked.shape == box_only.shape == pred.image_hw
    assert not np.allclose(box_only, clicked)  # the clicks reach the decoder
    again = pred.predict(BOX, points=[[70, 60], [50, 40]], point_labels=[1, 0], return_logits=True)
    np.testing.assert_array_equal(clicked, again)
    other = pred.predict(BOX, points=[[70, 60], [50, 40]], point_labels=[1, 1], return_logits=True)
    assert not np.allclose(clicked, other)  # the labels are part of the cache key


def test_clicks_alone_and_mask_prompt(pred):
    alone = pred.predict(None, points=[[70, 60]], point_labels=[1])
    assert alone.shape == pred.image_hw and 0.0 <= alone.min() and alone.max() <= 1.0
    first = pred.predict(BOX, points=[[70, 60]], point_labels=[1], return_logits=True)
    refined = pred.predict(BOX, points=[[70, 60]], point_labels=[1], mask_prompt=first, return_logits=True)
    assert refined.shape == first.shape and not np.allclose(first, refined)  # the mask input is used


@pytest.mark.slow
def test_mask_prompt_content_steers_litemedsam(disk_image):
    """The tiny backbone's mask path is degenerate (one channel before a LayerNorm): LiteMedSAM shows that the
    mask prompt's content, not only its presence, reaches the decoder and keys the cache."""
    from napari_imedsam import Predictor, load_model

    pred = Predictor(load_model("litemedsam"), device="cpu")
    pred.set_image(disk_image())
    yy, xx = np.mgrid[:128, :160]
    disk = np.where((yy - 60) ** 2 + (xx - 70) ** 2 <= 25**2, 8.0, -8.0)
    a = pred.predict(BOX, mask_prompt=disk, return_logits=True)
    b = pred.predict(BOX, mask_prompt=-disk, return_logits=True)
    assert np.abs(a - b).max() > 0.5


def test_every_render_path_takes_the_prompts(pred):
    pred.progressive_clicks = False  # all clicks decoded at once, as predict_backbone does (merging: test_click_merge)
    kw = dict(points=[[70, 60], [60, 75]], point_labels=[1, 0])
    h, w = pred.image_hw
    twice = pred.predict(BOX, out_shape=(2 * h, 2 * w), **kw)
    native = pred.predict(BOX, **kw)
    down = twice.reshape(h, 2, w, 2).mean(axis=(1, 3))
    assert dice(native > 0.5, down > 0.5) >= 0.97  # 1x and 2x agree, as for boxes
    window = pred.predict(BOX, out_shape=(40, 40), region=(30.0, 40.0, 50.0, 60.0), **kw)
    np.testing.assert_allclose(window, twice[60:100, 80:120], atol=1e-4)
    dense = pred.predict(BOX, dense=True, **kw)
    assert dice(native > 0.5, dense > 0.5) >= 0.995
    base = pred.predict_backbone(BOX, **kw)
    np.testing.assert_allclose(native, base, atol=1e-4)  # a fresh residual head is the backbone
    assert not np.allclose(base, pred.predict_backbone(BOX))
    assert pred.uncertainty(BOX, **kw).shape == (h, w)


@pytest.mark.parametrize("kw, message", [
    (dict(points=[[np.nan, 3]], point_labels=[1]), "non-finite"),
    (dict(points=[[500, 3]], point_labels=[1]), "outside"),
    (dict(points=[[-1, 3]], point_labels=[1]), "outside"),
    (dict(points=[[5, 3]], point_labels=[2]), "1 \\(object\\) or 0"),
    (dict(points=[[5, 3], [6, 7]], point_labels=[1]), "one 0/1 per point"),
    (dict(points=[[5, 3]]), "need point_labels"),
    (dict(points=[[5, 3, 4]], point_labels=[1]), "\\(x, y\\) pairs"),
    (dict(points="here", point_labels=[1]), "\\(x, y\\) pairs"),
    (dict(point_labels=[1]), "without points"),
    (dict(mask_prompt=np.zeros((3, 3))), "image grid"),
    (dict(mask_prompt=np.full((128, 160), np.inf)), "non-finite"),
])
def test_bad_prompts_say_what_is_wrong(pred, kw, message):
    with pytest.raises(ValueError, match=message):
        pred.predict(BOX, **kw)


def test_no_prompt_at_all(pred):
    with pytest.raises(ValueError, match="No prompt"):
        pred.predict(None)
    with pytest.raises(TypeError, match="Unknown prompt"):
        pred.predict_backbone(BOX, clicks=[[1, 2]])
