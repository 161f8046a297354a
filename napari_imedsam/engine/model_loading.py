"""Loading a model for the widget: device fallback and error messages a user can act on (no Qt)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..model.device import available_devices


class ModelLoadError(RuntimeError):
    """Loading failed; the message names the file and the backbone it was expected to fit."""


@dataclass
class LoadedModel:
    model: object
    device: str
    description: str
    notes: list[str] = field(default_factory=list)  # warnings for the user (e.g. device fallback)


def pick_device(device: str) -> tuple[str, str | None]:
    """The device to use and, if the requested one is absent, a notice saying what was used instead."""
    device = (device or "auto").strip()
    if device == "auto":
        return "auto", None
    kind = device.split(":")[0]
    present = available_devices()
    if kind in present:
        return device, None
    fallback = present[0]
    return fallback, (f"Device '{device}' is not available on this machine (available: {', '.join(present)}); "
                      f"using {fallback} instead.")


def load(backbone: str, checkpoint: str | Path | None = None, adapters: str | Path | bool | None = None,
         device: str = "auto") -> LoadedModel:
    """Build the model. ``adapters``: a file, ``None``/``True`` for the embedded default head (when the
    package ships one for this backbone), ``False`` for the plain backbone."""
    from ..model.build import default_adapters_path, load_model
    notes = []
    device, note = pick_device(device)
    if note:
        notes.append(note)
    checkpoint = str(checkpoint).strip() if checkpoint else None
    if isinstance(adapters, (str, Path)):
        adapters = str(adapters).strip() or None
    use_adapters = True if adapters is None else adapters
    what = f"a {backbone} checkpoint"
    try:
        model = load_model(backbone, checkpoint=checkpoint, adapters=use_adapters)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{exc}. Expected {what}" + (f" at {checkpoint}." if checkpoint else ".")) from exc
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        files = ", ".join(str(f) for f in (checkpoint, adapters if isinstance(adapters, str) else None) if f)
        raise ModelLoadError(f"Could not load backbone '{backbone}'" + (f" from {files}" if files else "")
                             + f": {exc} (expected {what}"
                             + (" and adapters saved for it)." if isinstance(adapters, str) else ").")) from exc
    if isinstance(use_adapters, str):
        head = f"adapters {Path(use_adapters).name}"
    elif use_adapters and default_adapters_path(backbone) is not None:
        head = "embedded default head"
    else:
        head = "plain backbone (identity adapters)"
    return LoadedModel(model, device, f"{backbone}, {head}", notes)
