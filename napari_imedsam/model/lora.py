"""LoRA on the q and v parts of a fused qkv projection (A Kaiming-uniform, B zero: starts as identity).

At inference (no gradient wanted) the update is merged into one weight, ``W + scale * B @ A`` on the q and
v rows, computed once per change of any of the tensors involved, so LoRA costs one plain linear layer;
while training the low-rank path runs unmerged so that gradients reach A and B."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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
        self._merged: tuple[tuple, torch.Tensor] | None = None  # (state of the tensors, merged weight)

    @property
    def weight(self) -> torch.Tensor:  # some callers inspect qkv.weight
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def _state(self) -> tuple:
        """Changes whenever any tensor of the merged weight is replaced or modified in place."""
        tensors = (self.base.weight, self.q_a, self.q_b, self.v_a, self.v_b)
        return tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in tensors)

    def merged_weight(self) -> torch.Tensor:
        """``W`` with the scaled q and v updates added, cached until a tensor changes."""
        state = self._state()
        if self._merged is None or self._merged[0] != state:
            with torch.no_grad():
                w = self.base.weight.detach().clone()
                w.index_add_(0, self.q_index, (self.q_b @ self.q_a).to(w.dtype), alpha=self.scaling)
                w.index_add_(0, self.v_index, (self.v_b @ self.v_a).to(w.dtype), alpha=self.scaling)
            self._merged = (state, w)
        return self._merged[1]

    def _needs_grad(self) -> bool:
        return torch.is_grad_enabled() and any(
            t.requires_grad for t in (self.base.weight, self.q_a, self.q_b, self.v_a, self.v_b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._needs_grad():
            return F.linear(x, self.merged_weight(), self.base.bias)
        self._merged = None  # training: free the merged copy (it would be stale after the next step)
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
