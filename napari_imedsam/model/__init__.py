"""Pure-torch I-MedSAM: backbones, LoRA, frequency adapter, box features, implicit decoder."""

from .adapters import AdapterMismatchError, load_adapters, read_adapter_file, save_adapters
from .build import build_model, load_model
from .config import IMedSAMConfig, default_config
from .imedsam import PART_NAMES, IMedSAM

__all__ = [
    "PART_NAMES", "AdapterMismatchError", "IMedSAM", "IMedSAMConfig", "build_model", "default_config",
    "load_adapters", "load_model", "read_adapter_file", "save_adapters",
]
