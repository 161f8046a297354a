"""Predictor API: resolution-free rendering, adaptive vs dense, adapters round trip, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from napari_imedsam import Predictor, load_model
from napari_imedsam.model import AdapterMismatchError, load_adapters, save_adapters
from napari_imedsam.model.build import build_model
from napari_imedsam.model.config import default_config
from src_training.metrics import dice


def disk_image(size: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    img = 40 + 150 * (((yy - 70) / 38.0) ** 2 + ((xx - 85) / 30.0) ** 2 < 1)
    return (img + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)


def perturbed(model, seed: int = 0):
    """A model whose INR contributes (as after training), not just the residual base."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_part_parameters()["inr"]:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def lite_predictor():
    model = perturbed(load_model("litemedsam", adapters=None))
    pred = Predictor(model, device="cpu")
    pred.set_image(disk_image())
    return pred


BOX = (50, 28, 120, 112)


@pytest.mark.slow
def test_predict_is_consistent_across_resolutions(lite_predictor):
    p1 = lite_predictor.predict(BOX)
    p2 = lite_predictor.predict(BOX, out_shape=(320, 320))
    assert p1.shape == (160, 160) and p2.shape == (320, 320) and p1.dtype == np.float32
    averaged = p2.reshape(160, 2, 160, 2).mean(axis=(1, 3))
    assert (p1 > 0.5).sum() > 500  # the disk is found
    assert dice(p1 > 0.5, averaged > 0.5) >= 0.98


@pytest.mark.slow
def test_adaptive_matches_dense_with_far_fewer_points(lite_predictor):
    shape = (640, 640)
    adaptive = lite_predictor.predict(BOX, out_shape=shape)
    n_adaptive = lite_predictor.last_stats.evaluated
    dense = lite_predictor.predict(BOX, out_shape=shape, dense=True)
    n_dense = lite_predictor.last_stats.evaluated
    assert n_dense == shape[0] * shape[1]
    assert dice(adaptive > 0.5, dense > 0.5) >= 0.995
    ratio = n_adaptive / n_dense
    print(f"adaptive/dense INR points at 4x: {n_adaptive}/{n_dense} = {ratio:.3f}")
    assert ratio < 0.2


@pytest.mark.slow
def test_region_renders_the_same_pixels(lite_predictor):
    """A window rendered at 4x equals the matching crop of the full 4x rendering."""
    full = lite_predictor.predict(BOX, out_shape=(640, 640), dense=True)
    window = lite_predictor.predict(BOX, region=(40, 60, 80, 100), out_shape=(160, 160), dense=True)
    np.testing.assert_allclose(window, full[160:320, 240:400], atol=1e-5)
    outside = lite_predictor.predict(BOX, region=(-20, -20, 10, 10), out_shape=(30, 30))
    assert outside[:20].max() < 1e-6 and outside[:, :20].max() < 1e-6  # outside the image: 0


@pytest.mark.slow
def test_uncertainty_and_backbone_baseline(lite_predictor):
    unc = lite_predictor.uncertainty(BOX, out_shape=(80, 80))
    assert unc.shape == (80, 80) and unc.min() >= 0 and unc.max() > 0
    base = lite_predictor.predict_backbone(BOX, out_shape=(320, 320))
    assert base.shape == (320, 320)
    assert dice(base > 0.5, lite_predictor.predict(BOX, out_shape=(320, 320)) > 0.5) > 0.8


def test_residual_fresh_model_equals_backbone_through_predictor():
    pred = Predictor(load_model("tiny"), device="cpu")
    pred.set_image(disk_image(96))
    a = pred.predict((10, 10, 70, 80), out_shape=(192, 192), dense=True)
    b = pred.predict_backbone((10, 10, 70, 80), out_shape=(192, 192))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_adapter_round_trip_reproduces_predictions(tmp_path):
    model = perturbed(load_model("tiny"), seed=3)
    with torch.no_grad():
        for _, p in model.named_part_parameters()["lora"]:
            p.add_(0.02 * torch.randn_like(p))
    path = save_adapters(model, tmp_path / "a.safetensors", extra={"note": "test"})
    image = disk_image(96)
    p1 = Predictor(model, device="cpu")
    p1.set_image(image)
    fresh = load_model("tiny", adapters=path)
    p2 = Predictor(fresh, device="cpu")
    p2.set_image(image)
    box = (10, 10, 70, 80)
    assert np.array_equal(p1.predict(box, out_shape=(150, 150)), p2.predict(box, out_shape=(150, 150)))


def test_bad_adapter_files_are_refused(tmp_path):
    tiny = load_model("tiny")
    other = build_model(default_config("tiny", lora_rank=8))
    path = save_adapters(other, tmp_path / "rank8.safetensors")
    with pytest.raises(AdapterMismatchError, match="lora_rank: 8 vs 4"):
        load_adapters(tiny, path)
    lite_cfg_file = tmp_path / "fake_lite.safetensors"
    save_adapters(tiny, lite_cfg_file)
    data = lite_cfg_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_adapters(tiny, truncated)

    class Evil:
        def __reduce__(self):
            return (exec, ("import os; os.environ['IMEDSAM_PWNED'] = '1'",))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(ValueError, match="pickle"):
        load_adapters(tiny, evil)
    evil_pth = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil_pth)
    from napari_imedsam.model.backbones import read_state_dict

    with pytest.raises(ValueError, match="weights_only"):
        read_state_dict(evil_pth)
    import os

    assert "IMEDSAM_PWNED" not in os.environ


def test_adapters_for_another_backbone_name_both(tmp_path):
    lite_like = tmp_path / "x.safetensors"
    save_adapters(load_model("tiny"), lite_like)
    with pytest.raises(ValueError, match="'tiny'"):
        load_model("litemedsam", adapters=lite_like)


@pytest.fixture(scope="module")
def tiny_predictor():
    return Predictor(load_model("tiny"), device="cpu")


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10)), "too small"),
        (np.zeros((4, 5, 6, 7)), "Expected a 2-D grey image"),
        (np.zeros((20, 20, 2)), "Expected a 2-D grey image"),
        (np.array([[1.0, np.nan], [0, 1]]).repeat(10, 0).repeat(10, 1), "NaN or infinite"),
        (np.array([[1.0, np.inf], [0, 1]]).repeat(10, 0).repeat(10, 1), "NaN or infinite"),
        (np.array([["a"]]), "real numbers"),
    ],
)
def test_bad_images_give_clear_errors(tiny_predictor, image, message):
    with pytest.raises(ValueError, match=message):
        tiny_predictor.set_image(image)


def test_constant_image_and_any_dtype(tiny_predictor):
    tiny_predictor.set_image(np.full((40, 50), 7, dtype=np.uint16))  # documented: becomes all zeros
    prob = tiny_predictor.predict((5, 5, 30, 30))
    assert prob.shape == (40, 50) and np.isfinite(prob).all()
    for dtype in (np.int8, np.uint8, np.int32, np.float64, bool):
        tiny_predictor.set_image(disk_image(40).astype(dtype))
    rgba = np.dstack([disk_image(40)] * 3 + [np.full((40, 40), 255, np.uint8)])
    tiny_predictor.set_image(rgba)
    assert tiny_predictor.image_hw == (40, 40)
    tiny_predictor.set_image(np.linspace(-1000, 1000, 40 * 40).reshape(40, 40), window=(-125, 275))
    with pytest.raises(ValueError, match="Window"):
        tiny_predictor.set_image(disk_image(40), window=(5, 5))


def test_bad_boxes(tiny_predictor):
    tiny_predictor.set_image(disk_image(60))
    with pytest.raises(ValueError, match="zero area"):
        tiny_predictor.predict((10, 10, 10, 30))
    with pytest.raises(ValueError, match="wholly outside"):
        tiny_predictor.predict((100, 100, 120, 130))
    with pytest.raises(ValueError, match="non-finite"):
        tiny_predictor.predict((0, np.nan, 10, 10))
    with pytest.raises(ValueError, match="4 numbers"):
        tiny_predictor.predict((0, 10, 10))
    partly = tiny_predictor.predict((-20, -10, 30, 40), out_shape=(60, 60))
    clipped = tiny_predictor.predict((0, 0, 30, 40), out_shape=(60, 60))
    np.testing.assert_array_equal(partly, clipped)  # documented: clipped to the image
    with pytest.raises(ValueError, match="out_shape"):
        tiny_predictor.predict((0, 0, 30, 40), out_shape=(0, 10))
    with pytest.raises(ValueError, match="region"):
        tiny_predictor.predict((0, 0, 30, 40), region=(10, 10, 5, 20))


def test_predict_before_set_image():
    pred = Predictor(load_model("tiny"), device="cpu")
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict((0, 0, 5, 5))


def test_embedding_cache_keys_on_adapters():
    model = load_model("tiny")
    pred = Predictor(model, device="cpu")
    image = disk_image(64)
    pred.set_image(image)
    pred.set_image(image)
    assert pred.cache.hits == 1 and len(pred.cache) == 1
    before = pred.predict((5, 5, 50, 50), out_shape=(64, 64), dense=True)
    with torch.no_grad():
        for _, p in model.named_part_parameters()["lora"]:
            p.add_(0.5 * torch.randn_like(p))
    pred.invalidate()
    pred.set_image(image)
    assert len(pred.cache) == 1 and pred.cache.misses == 2  # new encoder -> new embedding, never stale
    after = pred.predict((5, 5, 50, 50), out_shape=(64, 64), dense=True)
    assert not np.array_equal(before, after)


def test_device_choice():
    from napari_imedsam.model.device import available_devices, resolve_device

    assert "cpu" in available_devices()
    assert resolve_device("auto").type == available_devices()[0]
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda")


def test_heads_run_in_chunks_of_unsettled_points_only(monkeypatch):
    """The predictor sorts out the settled points (the backbone's logit beyond the bound) before chunking,
    so each call of the heads holds only points they run on, and the values equal the model's own query
    over all the points (logits and uncertainty)."""
    model = perturbed(build_model(default_config("tiny")), seed=3)
    pred = Predictor(model, device="cpu", chunk=256)
    pred.set_image(disk_image(96))
    box = (10, 10, 70, 80)
    feats, tau = pred._prompt_state(box, None, None, None)
    rng = np.random.default_rng(0)
    xy = (rng.random((3000, 2)) * 96).astype(np.float32)
    pts = torch.from_numpy(pred.transform_coords(xy))[None]
    valid = torch.tensor([pred._prepared.valid_hw], dtype=torch.float32)
    with torch.no_grad():
        base = model.base_logit(feats, pts)
        model.config = model.config.with_(residual_bound=float(base.abs().median()))  # half settled
        settled = model.settled(base)[0].numpy()
        want, want_var = model.query(feats, pts, valid, tau)
    assert 0 < settled.sum() < len(xy)
    sizes = []
    real_query = model.query
    monkeypatch.setattr(model, "query", lambda f, p, *a, **k: (sizes.append(p.shape[1]), real_query(f, p, *a, **k))[1])
    got = pred._query(feats, tau, xy, "inr")
    np.testing.assert_allclose(got, want[0].numpy(), atol=1e-6)
    unsettled = int((~settled).sum())
    assert sum(sizes) == unsettled and len(sizes) == -(-unsettled // pred._points_per_chunk())
    np.testing.assert_allclose(pred._query(feats, tau, xy, "uncertainty"), want_var[0].numpy(), atol=1e-7)
