"""Adapter files: only the tensors I-MedSAM trains, as safetensors, with the config and the backbone's
identity in the metadata. Never unpickled."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .config import IMedSAMConfig
from .imedsam import ALWAYS_SAVED, IMedSAM

FORMAT = "imedsam-adapters-v1"


class AdapterMismatchError(ValueError):
    """The adapter file was made for another backbone or configuration."""


class AdapterFileError(ValueError):
    """The file is not a usable adapter file (unreadable, no or a broken config, NaN/inf weights)."""


def save_adapters(model: IMedSAM, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write the adapters atomically (temp file, then rename) so a crash never leaves a half file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = model.saved_parts()
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.file_state_dict(parts).items()}
    meta = {
        "format": FORMAT,
        "config": model.config.to_json(),
        "backbone": model.backbone_name,
        "backbone_hash": model.backbone_hash,
    }
    for key, value in (extra or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    meta["stored_parts"] = json.dumps(list(parts))  # what load_adapters reads: never overridden
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an adapters file is an ordinary shareable file
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_adapter_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of an adapter file, with a clear error for anything that is not one."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise AdapterFileError(f"Adapters {path} is a folder, not a file; pick the .safetensors file inside it.")
    if not path.is_file():
        raise FileNotFoundError(f"Adapter file {path} does not exist.")
    if path.stat().st_size == 0:
        raise AdapterFileError(f"Adapter file {path} is empty (0 bytes); it was not written completely.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise AdapterFileError(
            f"{path} is not a readable safetensors adapter file ({type(exc).__name__}: {exc}). "
            "It may be truncated, or a pickle (.pth/.pt), which is refused for safety; "
            "adapters are saved by napari-imedsam as .safetensors."
        ) from exc
    if meta.get("format") != FORMAT:
        raise AdapterFileError(f"{path} is a safetensors file but not an I-MedSAM adapter file (format "
                               f"{meta.get('format')!r}, expected {FORMAT!r}).")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise AdapterFileError(f"Adapters {path} hold NaN or infinite weights in {len(bad)} tensor(s) ({bad[:3]}); "
                               "the training that wrote them diverged. Use an earlier version.")
    return tensors, meta


def _config_of(meta: dict[str, str], path: str | Path) -> IMedSAMConfig:
    """The configuration stored in an adapter file's metadata, with a clear error when it is absent or broken."""
    if "config" not in meta:
        raise AdapterFileError(f"Adapters {path} have no 'config' in their metadata, so the model they belong to "
                               "is unknown; the file was not written by save_adapters.")
    try:
        data = json.loads(meta["config"])
        if not isinstance(data, dict):
            raise TypeError(f"it holds {type(data).__name__}, not an object")
        return IMedSAMConfig.from_json(meta["config"])
    except (TypeError, ValueError) as exc:
        raise AdapterFileError(f"Adapters {path} have an unusable 'config' in their metadata ({exc}).") from exc


def adapter_config(path: str | Path) -> IMedSAMConfig:
    _, meta = read_adapter_file(path)
    return _config_of(meta, path)


def load_adapters(model: IMedSAM, path: str | Path) -> dict[str, str]:
    """Load adapters into ``model``; refuses files made for another backbone, weights or configuration."""
    tensors, meta = read_adapter_file(path)
    cfg = _config_of(meta, path)
    problems = []
    if meta.get("backbone") != model.backbone_name:
        problems.append(f"backbone: file {meta.get('backbone')!r} vs model {model.backbone_name!r}")
    elif model.backbone_hash and meta.get("backbone_hash") and meta["backbone_hash"] != model.backbone_hash:
        problems.append(f"backbone weights: file {meta['backbone_hash']} vs model {model.backbone_hash} "
                        "(same backbone name, different checkpoint)")
    problems += [f"config {d}" for d in cfg.architecture_differences(model.config)]
    if problems:
        raise AdapterMismatchError(
            f"Adapters {path} were made for backbone {meta.get('backbone')!r} and cannot be loaded into "
            f"this {model.backbone_name!r} model: " + "; ".join(problems)
        )
    groups = model.named_part_parameters()
    # files written before the mask_decoder part (no "stored_parts" entry) hold exactly the ALWAYS_SAVED parts
    try:
        stored = tuple(json.loads(meta["stored_parts"])) if "stored_parts" in meta else ALWAYS_SAVED
        if not all(isinstance(part, str) for part in stored):
            raise TypeError("not a list of part names")
    except (TypeError, ValueError) as exc:
        raise AdapterFileError(f"Adapters {path} have an unusable 'stored_parts' entry ({exc}).") from exc
    unknown = sorted(set(stored) - set(groups))
    if unknown:
        raise AdapterMismatchError(f"Adapters {path} store parts {unknown} that this version does not know; "
                                   "update napari-imedsam to load them.")
    own = {n: p for part in stored for n, p in groups[part]}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    bad_shape = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad_shape:
        raise AdapterMismatchError(
            f"Adapters {path} do not match the model's tensors: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {bad_shape[:5]}."
        )
    params = dict(model.named_parameters())
    if "mask_decoder" not in stored:
        model.reset_mask_decoder()  # the file was made with SAM's own mask decoder
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v.to(params[k].dtype))
    # inference-only settings travel with the file
    model.config = model.config.with_(mc_samples=cfg.mc_samples, topk=cfg.topk,
                                      ugs_reference_grid=cfg.ugs_reference_grid)
    return meta
