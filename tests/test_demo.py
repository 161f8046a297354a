"""``imedsam-demo``: the headless screenshot shows a mask; without a display it says how to run it; both
widgets fit a 1920x1080 screen together."""

from __future__ import annotations

import colorsys
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXE = Path(sys.executable).with_name("imedsam-demo")


def _label_hue() -> float:
    from napari_imedsam.widgets.layers import label_colormap

    r, g, b, _ = (float(v) for v in np.ravel(label_colormap().map(1))[:4])
    return colorsys.rgb_to_hsv(r, g, b)[0]


@pytest.mark.gui
@pytest.mark.slow
def test_demo_screenshot_shows_the_mask(tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display (pytest-xvfb provides one)")
    out = tmp_path / "demo.png"
    result = subprocess.run([str(EXE), "--screenshot", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.png"]  # a .png path: that picture only
    from skimage.io import imread

    img = imread(out)[..., :3].astype(np.float32) / 255
    assert img.shape[0] > 400 and img.shape[1] > 600
    assert img.std() > 0.05  # not blank
    hsv = np.apply_along_axis(lambda p: colorsys.rgb_to_hsv(*p), -1, img[::2, ::2])
    hue_gap = np.abs(hsv[..., 0] - _label_hue())
    hue_gap = np.minimum(hue_gap, 1 - hue_gap)
    mask_coloured = (hue_gap < 0.04) & (hsv[..., 1] > 0.35) & (hsv[..., 2] > 0.25)
    assert mask_coloured.sum() > 1500, f"only {mask_coloured.sum()} mask-coloured pixels"


def test_without_a_display_it_prints_the_xvfb_command():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([str(EXE), "--sample", "retina"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert "no display" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert "xvfb-run -a " in result.stderr and "imedsam-demo --sample retina --screenshot docs" in result.stderr


def test_display_detection():
    from napari_imedsam.demo import display_problem, xvfb_hint

    assert display_problem({}, "linux") and display_problem({"DISPLAY": ""}, "linux")
    assert display_problem({"DISPLAY": ":99"}, "linux") is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_problem({}, "darwin") is None and display_problem({}, "win32") is None
    assert xvfb_hint(["--screenshot", "pics"]).endswith("imedsam-demo --screenshot pics")


@pytest.mark.gui
def test_both_widgets_fit_a_1080p_screen(make_napari_viewer, monkeypatch, tmp_path, disk_image):
    """Opened from the Plugins menu (stacked in the right dock area) with fresh settings, the two widgets
    neither grow the window beyond 1080 px nor squeeze the canvas."""
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    from napari_imedsam import load_model
    from napari_imedsam.engine import model_loading

    monkeypatch.setattr(model_loading, "load", lambda *_a, **_k: model_loading.LoadedModel(
        load_model("tiny"), "cpu", "tiny"))  # the widget starts loading as it opens: keep that quick
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1920, 1080)
    viewer.add_image(disk_image((256, 256), centre=(128, 120), radius=60), name="scan")
    _d1, seg = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment (I-MedSAM)")
    _d2, tune = viewer.window.add_plugin_dock_widget("napari-imedsam", "Fine-tune (I-MedSAM)")
    assert seg.wait_idle(60)
    QApplication.processEvents()
    assert window.height() <= 1080 and window.width() <= 1920, (window.width(), window.height())
    canvas = viewer.window._qt_viewer.canvas.native
    assert canvas.width() >= 900 and canvas.height() >= 700, (canvas.width(), canvas.height())
    imsave(tmp_path / "both_widgets_1080p.png", viewer.screenshot(canvas_only=False, flash=False),
           check_contrast=False)
    for w in (seg, tune):
        assert w.visibleRegion().boundingRect().height() > 300  # each shows a good part of itself ...
        assert w.minimumSizeHint().height() < 400  # ... and scrolls for the rest
        assert w.ui.scroll.horizontalScrollBar().maximum() == 0  # never sideways
