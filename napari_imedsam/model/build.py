"""Build an I-MedSAM model from a backbone name, optional checkpoint and optional adapters."""

from __future__ import annotations

from pathlib import Path

import torch

from . import triton_guard
from .adapters import adapter_config, load_adapters
from .backbones import SAM_VIT, build_backbone
from .config import IMedSAMConfig, default_config
from .imedsam import IMedSAM


def build_model(config: IMedSAMConfig, checkpoint: str | Path | None = None,
                device: torch.device | str = "cpu") -> IMedSAM:
    """The model for ``config`` on ``device`` (``"meta"`` builds shapes only, for counting parameters)."""
    triton_guard.apply()  # the backbones import torchvision; a viewer may have mapped LLVM since import
    parts = build_backbone(config.backbone, config.image_size, checkpoint=checkpoint, device=device)
    with torch.device(device):
        model = IMedSAM(parts, config)
    return model.eval()


def default_adapters_path(backbone: str) -> Path | None:
    """The embedded default head shipped inside the package, if there is one for this backbone."""
    path = Path(__file__).resolve().parent.parent / "weights" / f"{backbone}_default.safetensors"
    return path if path.is_file() else None


def load_model(name: str = "litemedsam", checkpoint: str | Path | None = None,
               adapters: str | Path | None | bool = True, config: IMedSAMConfig | None = None,
               download: bool = False, **overrides) -> IMedSAM:
    """Public entry point: ``load_model("litemedsam")``, ``load_model("sam_vit_b", checkpoint=...)``.

    adapters: a file path; ``True`` (default) uses the embedded default head when the package ships one for
    this backbone; ``None``/``False`` gives the plain backbone with freshly initialised (identity) adapters.
    SAM weights are found by ``model.weights.resolve_checkpoint`` (explicit path, then the cache folder;
    ``download=True`` fetches them with a verified download).
    """
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
