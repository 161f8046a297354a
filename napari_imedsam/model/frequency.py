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
        being the block's output. Without gradients both sums are made in place, with the LayerNorm folded
        into the down-projection (``_fused_step``): the adapter's cost is memory traffic over the tokens."""
        a = self.adapters[index]
        if torch.is_grad_enabled() and (tokens.requires_grad or out.requires_grad
                                        or any(p.requires_grad for p in a.parameters())):
            delta = a(tokens)
            return tokens + delta, out + self.scale * delta
        return _fused_step(a, tokens, out, self.scale)


def _fused_step(a: Adapter, tokens: torch.Tensor, out: torch.Tensor, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``Adapter`` at inference, in place: LayerNorm + down as one (dim -> hidden) product on the raw tokens,
    then one ``addmm_`` each into the tokens and the block's output (the up-projection's bias rides as an
    extra input column). Reads the tokens twice, reads and writes tokens and output once each (plus a copy
    of either when it is not contiguous)."""
    tokens, out = tokens.contiguous(), out.contiguous()  # a block may return a transposed view (TinyViT)
    t, o = tokens.view(-1, tokens.shape[-1]), out.view(-1, out.shape[-1])
    var, mean = torch.var_mean(t, dim=-1, unbiased=False, keepdim=True)
    w = a.down.weight * a.norm.weight  # (hidden, dim): the LayerNorm's gain folded in
    shift = a.down.weight @ a.norm.bias + a.down.bias
    h = (t @ w.t()).sub_(mean * w.sum(1)).mul_(torch.rsqrt(var + a.norm.eps)).add_(shift)
    h = torch.cat([a.act(h), h.new_ones(h.shape[0], 1)], dim=1)
    up = torch.cat([a.up.weight.t(), a.up.bias[None]], dim=0)  # (hidden + 1, dim)
    o.addmm_(h.to(o.dtype), up.to(o.dtype), alpha=scale)  # explicit dtypes: in-place ops skip autocast
    t.addmm_(h.to(t.dtype), up.to(t.dtype))
    return tokens, out
