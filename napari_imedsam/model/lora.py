"""LoRA on the q and v parts of a fused qkv projection (A Kaiming-uniform, B zero: starts as identity)."""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRAQKV(nn.Module):
    """Wraps a frozen ``nn.Linear`` qkv and adds low-rank updates to the q and v output columns."""

    def __init__(self, base: nn.Linear, q_index: torch.Tensor, v_index: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.register_buffer("q_index", q_index.long(), persistent=False)
        self.register_buffer("v_index", v_index.long(), persistent=False)
        self.scaling = alpha / rank
        dev = base.weight.device
        self.q_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        self.q_b = nn.Parameter(torch.zeros(len(q_index), rank, device=dev))
        self.v_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        self.v_b = nn.Parameter(torch.zeros(len(v_index), rank, device=dev))
        if dev.type != "meta":
            nn.init.kaiming_uniform_(self.q_a, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.v_a, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:  # some callers inspect qkv.weight
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        dq = (x @ self.q_a.t()) @ self.q_b.t() * self.scaling
        dv = (x @ self.v_a.t()) @ self.v_b.t() * self.scaling
        out = out.index_add(-1, self.q_index, dq.to(out.dtype))
        return out.index_add(-1, self.v_index, dv.to(out.dtype))


def sam_qkv_indices(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """segment-anything's ViT: qkv output is laid out [q(dim), k(dim), v(dim)]."""
    return torch.arange(0, dim), torch.arange(2 * dim, 3 * dim)


def tinyvit_qkv_indices(num_heads: int, key_dim: int, value_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """TinyViT: per head the qkv output is [q(key_dim), k(key_dim), v(value_dim)]."""
    per_head = 2 * key_dim + value_dim
    q = torch.cat([torch.arange(h * per_head, h * per_head + key_dim) for h in range(num_heads)])
    v = torch.cat([torch.arange(h * per_head + 2 * key_dim, (h + 1) * per_head) for h in range(num_heads)])
    return q, v
