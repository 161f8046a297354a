"""Sample data load offline (no socket may connect) and the CT phantom is plausible and deterministic."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_imedsam import sample_data
from napari_imedsam.samples.phantom import ORGAN_IDS, make_ct_phantom

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_retina(no_network):
    [(data, kwargs, kind)] = sample_data.retina()
    assert kind == "image" and kwargs["rgb"] is True
    assert data.shape == (1411, 1411, 3) and data.dtype == np.uint8 and data.max() > 100


def test_ct_slice(no_network):
    [(data, kwargs, kind)] = sample_data.ct_slice()
    assert kind == "image" and data.shape == (128, 128) and data.dtype == np.float32
    assert kwargs["scale"] == pytest.approx((0.661468, 0.661468))
    assert data.min() < -500 and data.max() > 700  # HU: air/fat and bone
    assert kwargs["metadata"]["is_hu"] is True and kwargs["contrast_limits"] == [-160.0, 240.0]


def test_mri_volume(no_network):
    [(data, kwargs, kind)] = sample_data.mri_volume()
    assert kind == "image" and data.ndim == 3 and data.shape == (25, 41, 33)
    assert kwargs["scale"] == pytest.approx((2.0, 2.0, 2.0))
    assert kwargs["metadata"]["is_hu"] is False
    lo, hi = kwargs["contrast_limits"]
    assert 0 <= lo < hi <= float(data.max())


def test_ct_phantom_sample(no_network):
    [(data, kwargs, kind)] = sample_data.ct_phantom()
    hu, _, spacing = make_ct_phantom()
    np.testing.assert_array_equal(data, hu)
    assert kind == "image" and kwargs["scale"] == spacing
    assert kwargs["metadata"]["zyx_shape"] == hu.shape


def test_phantom_anatomy_and_determinism():
    hu, labels, spacing = make_ct_phantom()
    assert hu.shape == labels.shape == (40, 256, 256)
    assert hu.dtype == np.float32 and labels.dtype == np.uint8
    assert spacing == pytest.approx((2.5, 360 / 256, 360 / 256))
    assert set(np.unique(labels)) == {0, *ORGAN_IDS.values()} == {0, 1, 2, 3, 6, 8}
    assert hu.min() == pytest.approx(-1000, abs=1) and 500 < hu.max() < 1000  # air and bone
    means = {name: float(hu[labels == i].mean()) for name, i in ORGAN_IDS.items()}
    assert 45 < means["liver"] < 75 and 35 < means["spleen"] < 65 and 140 < means["aorta"] < 200
    assert 20 < means["right_kidney"] < 160 and 20 < means["left_kidney"] < 160
    # Liver on the patient's right = the screen's left (low x), spleen on the right (high x).
    assert np.argwhere(labels == 6)[:, 2].mean() < 128 < np.argwhere(labels == 1)[:, 2].mean()
    assert np.argwhere(labels == 2)[:, 2].mean() < 128 < np.argwhere(labels == 3)[:, 2].mean()
    # Organs vary along z: the liver grows towards the top, the kidneys sit low.
    assert (labels[-1] == 6).sum() > (labels[8] == 6).sum()
    assert (labels[2] == 2).any() and not (labels[-1] == 2).any()
    hu2, labels2, _ = make_ct_phantom()
    np.testing.assert_array_equal(hu, hu2)
    np.testing.assert_array_equal(labels, labels2)
    hu3, _, _ = make_ct_phantom(seed=1)
    assert not np.array_equal(hu, hu3)


def test_phantom_small_shape_keeps_every_organ():
    hu, labels, spacing = make_ct_phantom(shape=(8, 64, 64), seed=3)
    assert hu.shape == (8, 64, 64) and spacing == pytest.approx((12.5, 5.625, 5.625))
    assert set(np.unique(labels)) == {0, 1, 2, 3, 6, 8}
    with pytest.raises(ValueError, match="shape"):
        make_ct_phantom(shape=(4, 8, 8))


def test_manifest_names_resolve():
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())
    import importlib

    mine = {"napari_imedsam.sample_data", "napari_imedsam.io.reader"}
    found = 0
    for command in manifest["contributions"]["commands"]:
        module, _, attr = command["python_name"].partition(":")
        if module in mine:
            assert callable(getattr(importlib.import_module(module), attr))
            found += 1
    assert found == 5


def test_layer_data_builds_napari_layers():
    """The kwargs are valid napari layer arguments (no viewer needed)."""
    from napari.layers import Layer

    for sample in (sample_data.retina, sample_data.ct_slice, sample_data.mri_volume):
        for data, kwargs, kind in sample():
            layer = Layer.create(data, kwargs, kind)
            assert layer.name == kwargs["name"]
            assert tuple(layer.scale) == pytest.approx(kwargs.get("scale", (1.0, 1.0)))
