"""Device choice: cuda > mps > cpu, and what is present on this machine."""

from __future__ import annotations

import torch


def available_devices() -> list[str]:
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    out.append("cpu")
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks the best present device; asking for an absent one is a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device(available_devices()[0])
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cuda', 'mps' or 'cpu'.")
    if kind not in available_devices():
        raise ValueError(f"Device {device!r} is not available on this machine (available: "
                         f"{', '.join(available_devices())}).")
    return torch.device(device)
