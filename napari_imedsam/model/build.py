"""Build an I-MedSAM model from a backbone name, optional checkpoint and optional adapters."""

from __future__ import annotations

import os
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import torch

from . import fast_paths, triton_guard
from .adapters import adapter_config, load_adapters
from .backbones import SAM_VIT, build_backbone
from .config import BACKBONES, IMedSAMConfig, default_config
from .imedsam import IMedSAM


def build_model(config: IMedSAMConfig, checkpoint: str | Path | None = None,
                device: torch.device | str = "cpu") -> IMedSAM:
    """The model for ``config`` on ``device`` (``"meta"`` builds shapes only, for counting parameters)."""
    triton_guard.apply()  # the backbones import torchvision; a viewer may have mapped LLVM since import
    parts = build_backbone(config.backbone, config.image_size, checkpoint=checkpoint, device=device)
    if config.fast_backbone:
        fast_paths.install(parts)
    with torch.device(device):
        model = IMedSAM(parts, config)
    return model.eval()


def default_adapters_path(backbone: str) -> Path | None:
    """The embedded default head shipped inside the package, if there is one for this backbone."""
    path = Path(__file__).resolve().parent.parent / "weights" / f"{backbone}_default.safetensors"
    return path if path.is_file() else None


def _check_overrides(overrides: dict) -> None:
    """Settings passed to ``load_model`` as keywords: known names, values of the setting's type."""
    known = {f.name: f for f in fields(IMedSAMConfig) if f.name not in ("backbone", "extra")}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"load_model got unknown setting(s) {unknown}; the settings are {sorted(known)}.")
    for key, value in overrides.items():
        default = known[key].default if known[key].default is not MISSING else known[key].default_factory()
        if value is None and "None" in str(known[key].type):
            continue
        if isinstance(default, bool):
            ok = isinstance(value, (bool, np.bool_))
        elif isinstance(default, int):
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        elif isinstance(default, float):
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
                and bool(np.isfinite(value))
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = isinstance(value, (tuple, list)) and all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
        else:
            ok = True
        if not ok:
            raise ValueError(f"load_model setting {key}={value!r} must be {type(default).__name__} like the default "
                             f"{default!r}.")


def _check_path_arg(value, what: str) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{what} must be a file path (str or pathlib.Path), got {type(value).__name__} {value!r:.80}.")


def load_model(name: str = "litemedsam", checkpoint: str | Path | None = None,
               adapters: str | Path | None | bool = True, config: IMedSAMConfig | None = None,
               download: bool = False, **overrides) -> IMedSAM:
    """Public entry point: ``load_model("litemedsam")``, ``load_model("sam_vit_b", checkpoint=...)``.

    adapters: a file path; ``True`` (default) uses the embedded default head when the package ships one for
    this backbone; ``None``/``False`` gives the plain backbone with freshly initialised (identity) adapters.
    SAM weights are found by ``model.weights.resolve_checkpoint`` (explicit path, then the cache folder;
    ``download=True`` fetches them with a verified download).
    """
    if not isinstance(name, str) or name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.")
    _check_path_arg(checkpoint, "checkpoint")
    if not isinstance(adapters, bool):
        _check_path_arg(adapters, "adapters")
    if config is not None and not isinstance(config, IMedSAMConfig):
        raise ValueError(f"config must be an IMedSAMConfig (see default_config), got {type(config).__name__}.")
    _check_overrides(overrides)
    if checkpoint is not None and name != "tiny":
        from .weights import check_checkpoint_file

        checkpoint = check_checkpoint_file(checkpoint)
    if adapters is True:
        adapters = default_adapters_path(name) if config is None and not overrides else None
    if adapters:
        config = adapter_config(adapters)
        if config.backbone != name:
            raise ValueError(f"Adapters {adapters} are for backbone {config.backbone!r}, not {name!r}.")
    elif config is None:
        config = default_config(name, **overrides)
    if name in SAM_VIT:
        from .weights import resolve_checkpoint

        checkpoint = resolve_checkpoint(name, path=checkpoint, download=download)
    elif name == "tiny" and checkpoint is not None:
        raise ValueError("The tiny backbone has seeded random weights and takes no checkpoint.")
    model = build_model(config, checkpoint=checkpoint)
    if adapters:
        load_adapters(model, adapters)
    return model
