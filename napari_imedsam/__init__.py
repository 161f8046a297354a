"""napari-imedsam: I-MedSAM box-prompted medical segmentation with resolution-free masks, in napari.

Public API::

    from napari_imedsam import load_model, Predictor
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Predictor", "load_model"]


def __getattr__(name: str):
    # Lazy: napari imports this package to read the manifest; torch loads only when the API is used.
    if name == "load_model":
        from .model.build import load_model

        return load_model
    if name == "Predictor":
        from .engine.predictor import Predictor

        return Predictor
    raise AttributeError(name)
