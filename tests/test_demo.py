"""``imedsam-demo --screenshot out.png --quit`` works headless and shows a mask."""

from __future__ import annotations

import colorsys
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def _label_hue() -> float:
    from napari_imedsam.widgets.layers import label_colormap

    r, g, b, _ = (float(v) for v in np.ravel(label_colormap().map(1))[:4])
    return colorsys.rgb_to_hsv(r, g, b)[0]


def test_demo_screenshot_shows_the_mask(tmp_path):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs an X display (pytest-xvfb provides one)")
    out = tmp_path / "demo.png"
    exe = Path(sys.executable).with_name("imedsam-demo")
    result = subprocess.run([str(exe), "--screenshot", str(out), "--quit"], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    from skimage.io import imread

    img = imread(out)[..., :3].astype(np.float32) / 255
    assert img.shape[0] > 400 and img.shape[1] > 600
    assert img.std() > 0.05  # not blank
    hsv = np.apply_along_axis(lambda p: colorsys.rgb_to_hsv(*p), -1, img[::2, ::2])
    hue_gap = np.abs(hsv[..., 0] - _label_hue())
    hue_gap = np.minimum(hue_gap, 1 - hue_gap)
    mask_coloured = (hue_gap < 0.04) & (hsv[..., 1] > 0.35) & (hsv[..., 2] > 0.25)
    assert mask_coloured.sum() > 1500, f"only {mask_coloured.sum()} mask-coloured pixels"
