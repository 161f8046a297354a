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

    def step(self, index: int, tokens: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block ``index``'s adapter on the frequency ``tokens``: (tokens + delta, out + scale * delta), ``out``
        being the block's output. Without gradients both sums are made in place (``_fused_step``): the
        adapter's cost is memory traffic over the tokens, and this saves two token-sized tensors per block."""
        a = self.adapters[index]
        if torch.is_grad_enabled() and (tokens.requires_grad or out.requires_grad
                                        or any(p.requires_grad for p in a.parameters())):
            delta = a(tokens)
            return tokens + delta, out + self.scale * delta
        return _fused_step(a, tokens, out, self.scale)


def _fused_step(a: Adapter, tokens: torch.Tensor, out: torch.Tensor, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``Adapter`` at inference, in place: the small (dim -> hidden) half as the module computes it, then one
    in-place product each into the tokens and the block's output (the up-projection's bias rides as an extra
    input column), instead of a full-size delta, its sum with the tokens and its sum with the output: two
    fresh token-sized tensors fewer per block. The output keeps its memory layout (TinyViT's blocks return a
    channel-major view its next convolution wants)."""
    tokens = tokens.contiguous()
    h = a.act(a.down(a.norm(tokens))).reshape(-1, a.down.out_features)
    h = torch.cat([h, h.new_ones(h.shape[0], 1)], dim=1)
    up = torch.cat([a.up.weight.t(), a.up.bias[None]], dim=0)  # (hidden + 1, dim)
    if not _add_product(out, h, up, scale):
        out = out + scale * (h.to(out.dtype) @ up.to(out.dtype)).view(out.shape)
    _add_product(tokens, h, up, 1.0)  # contiguous: always in place
    return tokens, out


def _add_product(x: torch.Tensor, h: torch.Tensor, up: torch.Tensor, alpha: float) -> bool:
    """``x`` (..., dim) += alpha * h @ up in place, rows of ``h`` in x's logical order, for a contiguous x
    or a (B, L, dim) x stored channel-major; False (nothing done) for any other layout. Explicit dtypes:
    in-place ops skip autocast."""
    h, up = h.to(x.dtype), up.to(x.dtype)
    if x.is_contiguous():
        x.view(-1, x.shape[-1]).addmm_(h, up, alpha=alpha)
        return True
    if x.dim() == 3 and x.transpose(1, 2).is_contiguous():
        b, n, _ = x.shape
        x.transpose(1, 2).baddbmm_(up.t().expand(b, -1, -1), h.view(b, n, -1).transpose(1, 2), alpha=alpha)
        return True
    return False
