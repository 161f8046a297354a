"""Multi-process training with ``torchrun``: process group set-up from the environment and the few
collectives the training loop needs.

Design: no DistributedDataParallel wrapper. Every rank builds the same model (same seed), rank 0's
trainable tensors are broadcast once at the start, and after each optimisation step's backward passes the
gradients of the trainable parameters (about 1-2 M numbers) are averaged with one all-reduce of a flat
buffer. Parameters therefore stay identical on every rank without DDP's hooks, and parameters that a step
did not use (e.g. the fine head when UGS is off) need no ``find_unused_parameters``. The cost is that the
all-reduce does not overlap the backward pass, negligible at this size. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """What ``torchrun`` put in the environment (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def current() -> DistInfo:
    """The running process group's rank and size (single process when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_distributed(device: str = "auto") -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun; returns (info, device string for this rank).

    NCCL when the device is CUDA (one GPU per local rank), gloo otherwise."""
    info = env_info()
    if not info.enabled:
        return info, device
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda:
        torch.cuda.set_device(info.local_rank)
        device = f"cuda:{info.local_rank}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", init_method="env://")
    return current(), device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def broadcast_parameters(params: Sequence[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values into every rank's tensors (in place)."""
    if not current().enabled:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src)


def average_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over the ranks (missing gradients count as zero)."""
    info = current()
    if not info.enabled or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n


def all_reduce_sum(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum of a few floats over the ranks (identity in a single process)."""
    if not current().enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def shard(items: Sequence, info: DistInfo | None = None) -> list:
    """Rank ``r``'s part of a global batch or list: items ``r, r + world, ...`` (disjoint, covering)."""
    info = info or current()
    return list(items)[info.rank :: info.world_size]
