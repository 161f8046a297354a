"""Implicit decoder: per-point features -> coarse INR -> uncertainty (MC dropout) -> fine INR at the top-K."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def positional_encoding(p: torch.Tensor, levels: int) -> torch.Tensor:
    """gamma(p) = (p, sin(2^k pi p), cos(2^k pi p)) for k < levels; p (..., 2) -> (..., 2 + 4 * levels)."""
    freqs = (2.0 ** torch.arange(levels, device=p.device, dtype=p.dtype)) * math.pi
    angles = p.unsqueeze(-1) * freqs  # (..., 2, L)
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(-2)
    return torch.cat([p, enc], dim=-1)


def _mlp(sizes: list[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))


class CoarseINR(nn.Module):
    """MLP -> (logit, feature). Dropout after every hidden layer; ``mc_logits`` keeps it on in eval mode."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], feature: int, dropout: float, zero_logit: bool):
        super().__init__()
        self.layers = _mlp([in_dim, *hidden, 1 + feature])
        self.dropout = dropout
        if zero_logit:
            with torch.no_grad():
                self.layers[-1].weight[0].zero_()
                self.layers[-1].bias[0] = 0.0

    def forward(self, x: torch.Tensor, dropout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers[:-1]:
            x = F.dropout(F.relu(layer(x)), self.dropout, training=dropout)
        out = self.layers[-1](x)
        return out[..., 0], out[..., 1:]

    def forward_and_mc(self, x: torch.Tensor, samples: int, seed: int | None = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference: ``forward(x)`` without dropout and ``mc_logits(x, ...)``, sharing the first (widest)
        layer, which dropout does not touch. Returns (logit, feature, MC logits)."""
        h0 = F.relu(self.layers[0](x))
        h = h0
        for layer in self.layers[1:-1]:
            h = F.relu(layer(h))
        out = self.layers[-1](h)
        return out[..., 0], out[..., 1:], self.mc_logits(x, samples, seed, first=h0)

    def mc_logits(self, x: torch.Tensor, samples: int, seed: int | None = None,
                  first: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``samples`` dropout sub-networks, (S, ...), with dropout on whatever the module's mode.

        Each sample drops the same hidden units at every point (one network drawn per sample), so a point's
        variance does not depend on which other points are queried with it. ``seed`` fixes the draws
        (inference: reproducible masks and uncertainty); ``None`` uses the global RNG (training). ``first``:
        the first layer's activation if already computed."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu")
            gen.manual_seed(seed)
        keep = 1.0 - self.dropout
        h = (F.relu(self.layers[0](x)) if first is None else first).unsqueeze(0)
        shape = (samples,) + (1,) * (h.dim() - 2)
        for i, layer in enumerate(self.layers[1:], start=1):
            width = self.layers[i - 1].out_features
            mask = (torch.rand((samples, width), generator=gen) < keep).to(h.dtype) / max(keep, 1e-6)
            h = h * mask.to(h.device).view(*shape, width)
            if i == len(self.layers) - 1:
                return h @ layer.weight[0] + layer.bias[0]
            h = F.relu(layer(h))
        raise AssertionError("unreachable: the coarse head has at least one hidden layer")


class FineINR(nn.Module):
    """MLP on the point's input plus the coarse feature -> logit; last layer zero when residual."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], zero_out: bool):
        super().__init__()
        self.layers = _mlp([in_dim, *hidden, 1])
        if zero_out:
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)[..., 0]


def topk_uncertain(variance: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices (B, k) of the ``fraction`` highest-variance points of each row of (B, N)."""
    k = max(1, int(round(fraction * variance.shape[-1])))
    return variance.topk(k, dim=-1).indices
