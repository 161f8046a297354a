"""Pure torch (the bottom layer): backbones, LoRA, frequency adapter, box features, implicit decoder, weights
files, checkpoint resolution and preprocessing to the model's input. Imports nothing else of the project."""

from . import triton_guard

triton_guard.apply()  # the plugin's first torch import path (see triton_guard)

# ruff: noqa: E402 - the guard runs before the modules below import torch


from .adapters import AdapterMismatchError, load_adapters, read_adapter_file, save_adapters
from .build import build_model, load_model
from .config import IMedSAMConfig, default_config
from .imedsam import PART_NAMES, IMedSAM

__all__ = [
    "PART_NAMES", "AdapterMismatchError", "IMedSAM", "IMedSAMConfig", "build_model", "default_config",
    "load_adapters", "load_model", "read_adapter_file", "save_adapters",
]
