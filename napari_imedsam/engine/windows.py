"""CT intensity windows: what the model sees (the image layer's data and contrast are not changed).

Windows are (low, high) in Hounsfield units; values are clipped to the window and rescaled to [0, 1] by
:func:`napari_imedsam.model.preprocess.image_to_unit`. ``"none"`` min-max scales the slice (non-CT)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: name -> (low, high) HU. Abdomen is the BCV/Synapse training window of I-MedSAM (DESIGN.md).
PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (-125.0, 275.0),
    "lung": (-1350.0, 150.0),  # level -600, width 1500
    "bone": (-450.0, 1050.0),  # level 300, width 1500
    "brain": (0.0, 80.0),  # level 40, width 80
}
NONE = "none"
CUSTOM = "custom"
CHOICES = (NONE, *PRESETS, CUSTOM)


def looks_like_ct(data: Any, metadata: Mapping[str, Any] | None = None) -> bool:
    """True when the reader marked the image as HU, or a sample of it has air-like values (< -500)."""
    meta = metadata or {}
    if "is_hu" in meta:
        return bool(meta["is_hu"])
    if str(meta.get("modality", "")).upper() == "CT":
        return True
    arr = np.asarray(data[tuple(slice(None, None, max(1, s // 64)) for s in data.shape)])
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.number):
        return False
    return bool(np.mean(arr < -500) >= 0.005 and arr.min() >= -3000)


def default_preset(data: Any, metadata: Mapping[str, Any] | None = None) -> str:
    """``"abdomen"`` for CT, ``"none"`` otherwise."""
    return "abdomen" if looks_like_ct(data, metadata) else NONE


def window_for(name: str, custom: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """The (low, high) of a preset, the ``custom`` window, or None for ``"none"``."""
    if name == NONE:
        return None
    if name == CUSTOM:
        if custom is None or not float(custom[1]) > float(custom[0]):
            raise ValueError(f"A custom window needs high > low, got {custom}.")
        return float(custom[0]), float(custom[1])
    if name not in PRESETS:
        raise ValueError(f"Unknown window preset {name!r}; choose one of {', '.join(CHOICES)}.")
    return PRESETS[name]


def describe(name: str, window: tuple[float, float] | None) -> str:
    """A short text for the widget: which window the model sees."""
    if window is None:
        return "model sees: min-max scaled slice (no CT window)"
    return f"model sees: {name} [{window[0]:g}, {window[1]:g}] HU"
