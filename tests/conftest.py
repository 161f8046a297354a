"""Shared fixtures: a small model and predictor, a synthetic disk image, and builders of the two dock
widgets (docked in a test viewer). Heavy imports happen inside the fixtures, so tests that need none of
them stay light."""

from __future__ import annotations

import numpy as np
import pytest


def make_disk_image(shape=(128, 160), centre=(60, 70), radius=25, inside=200.0, outside=20.0, noise=5.0,
                    seed=0, dtype=np.float32) -> np.ndarray:
    """A bright disk on a dark background with Gaussian noise (grey, ``shape``)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.where((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2, inside, outside)
    return (img + np.random.default_rng(seed).normal(0, noise, shape)).astype(dtype)


def make_halo_image(seed: int = 0) -> np.ndarray:
    """A bright core (r 22) in a dimmer halo (r 34) at (y 60, x 70) of a 128 x 160 image: a box's mask stops
    inside the halo, so a positive click there has something to add."""
    yy, xx = np.mgrid[:128, :160]
    r = np.hypot(yy - 60, xx - 70)
    img = np.where(r <= 22, 200.0, np.where(r <= 34, 90.0, 20.0))
    return (img + np.random.default_rng(seed).normal(0, 5, img.shape)).astype(np.float32)


@pytest.fixture
def halo_image():
    """:func:`make_halo_image` (call it)."""
    return make_halo_image


@pytest.fixture
def disk_image():
    """The builder :func:`make_disk_image` (call it: ``disk_image()``, ``disk_image((64, 64), radius=10)``)."""
    return make_disk_image


@pytest.fixture
def one_thread():
    """Small tensors: one intra-op thread is faster, and far faster on a shared, busy CPU (no spin-waits)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    """The ``tiny`` backbone (random weights, no adapters file), fresh for each test."""
    from napari_imedsam import load_model

    return load_model("tiny")


@pytest.fixture
def tiny_predictor(tiny_model):
    from napari_imedsam import Predictor

    return Predictor(tiny_model, device="cpu")


@pytest.fixture
def segment_widget():
    """``segment_widget(viewer, model=None, backbone="tiny", adapters=None, description=...)``: a docked
    Segment widget with ``model`` applied, else ``backbone`` loaded (None: no model)."""

    def build(viewer, model=None, backbone="tiny", adapters=None, description="test model"):
        from napari_imedsam.widgets.segment_widget import SegmentWidget

        w = SegmentWidget(viewer)
        viewer.window.add_dock_widget(w, name="Segment (I-MedSAM)")
        assert w.wait_idle(10)
        if model is not None:
            w.apply_model(model, description)
        elif backbone:
            w.load_model_now(backbone, adapters=adapters)
        return w

    return build


@pytest.fixture
def finetune_widget():
    """``finetune_widget(viewer, projects_root=None)``: a docked Fine-tune widget."""

    def build(viewer, projects_root=None):
        from napari_imedsam.widgets.finetune_widget import FinetuneWidget

        w = FinetuneWidget(viewer, projects_root=projects_root)
        viewer.window.add_dock_widget(w, name="Fine-tune (I-MedSAM)")
        return w

    return build
