"""Frequency Adapter (FA): spectrum of the input image, carried through the encoder by small adapters."""

from __future__ import annotations

import torch
from torch import nn


def image_spectrum(images: torch.Tensor, mode: str = "amplitude") -> torch.Tensor:
    """Centred log-amplitude (or phase) spectrum of the grey image, normalised to [0, 1] per image.

    images: (B, 3, H, W) in [0, 1]. Returns (B, 1, H, W). Computed in float32 on the images' device.
    """
    with torch.autocast(device_type=images.device.type, enabled=False):
        grey = images.float().mean(dim=1)
        spec = torch.fft.fftshift(torch.fft.fft2(grey, norm="ortho"), dim=(-2, -1))
        value = torch.log1p(spec.abs()) if mode == "amplitude" else torch.angle(spec)
        lo = value.amin(dim=(-2, -1), keepdim=True)
        hi = value.amax(dim=(-2, -1), keepdim=True)
        value = (value - lo) / (hi - lo).clamp_min(1e-6)
    return value.unsqueeze(1)


class Adapter(nn.Module):
    """LayerNorm -> Linear down -> GELU -> Linear up; the up-projection starts at zero."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(x))))


class FrequencyAdapter(nn.Module):
    """One adapter per encoder block. ``step(i, f)`` updates the frequency tokens and returns the delta
    that block ``i`` adds (scaled) to its output.

    An adapter whose up-projection is still exactly zero adds nothing and leaves the tokens unchanged, so
    ``live()`` names the blocks that need the work; the encoders skip the others (and the spectrum itself
    when none is live). Which adapters are live is recomputed only when one of their tensors changes."""

    def __init__(self, dims: list[int], hidden: int, scale: float):
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(d, hidden) for d in dims)
        self.scale = scale
        self._live: tuple[tuple, tuple[bool, ...]] | None = None

    def live(self) -> tuple[bool, ...]:
        """Per block: whether its adapter can change anything: a non-zero up-projection, or (when gradients
        are wanted) a trainable one, which the optimizer is about to move."""
        ups = [(a.up.weight, a.up.bias) for a in self.adapters]
        state = tuple((t.data_ptr(), t._version, t.device) for pair in ups for t in pair)
        if self._live is None or self._live[0] != state:
            self._live = (state, tuple(bool(w.detach().any() or b.detach().any()) for w, b in ups))
        if not torch.is_grad_enabled():
            return self._live[1]
        return tuple(nz or w.requires_grad or b.requires_grad for nz, (w, b) in zip(self._live[1], ups))

    def step(self, index: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = self.adapters[index](tokens)
        return tokens + delta, self.scale * delta
