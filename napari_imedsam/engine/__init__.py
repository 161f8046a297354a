"""Prediction without Qt: the Predictor and its caches, rendering a region at a size, objects, history,
3-D propagation, model loading for the viewer.
May import src_training, model, io, samples; never Qt, widgets or finetune."""

from __future__ import annotations

__all__ = ["Predictor", "PropagationSettings", "interpolate_between", "propagate", "propagate_volume"]


def __getattr__(name: str):
    # Lazy: the widgets import engine modules one by one; torch loads only with the Predictor.
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    if name in ("propagate", "PropagationSettings", "propagate_volume", "interpolate_between"):
        from . import interpolation, propagation

        return getattr(propagation if name != "interpolate_between" else interpolation, name)
    raise AttributeError(name)
