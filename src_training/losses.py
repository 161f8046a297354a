"""Training loss: a * BCE + b * soft Dice on the coarse logits (all points, weighted by a decaying coarse
weight) plus the same on the fine logits at the top-K uncertain points (DESIGN.md "Training")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

DICE_SMOOTH = 1.0  # added to numerator and denominator: an image whose points miss the object stays finite


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """1 - soft Dice of sigmoid probabilities, per image (rows of (B, N)), averaged over the batch."""
    probs = torch.sigmoid(logits.float())
    w = torch.ones_like(probs) if weights is None else weights.float()
    inter = (w * probs * targets).sum(-1)
    denom = (w * probs).sum(-1) + (w * targets).sum(-1)
    return (1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH)).mean()


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over the (weighted) points of each image, then the batch."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if weights is None:
        return bce.mean()
    w = weights.float()
    return ((bce * w).sum(-1) / w.sum(-1).clamp_min(1.0)).mean()


def bce_dice(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
             bce_weight: float = 0.5, dice_weight: float = 0.5) -> torch.Tensor:
    """a * BCE + b * soft Dice, in float32 whatever the autocast dtype."""
    return bce_weight * weighted_bce(logits, targets, weights) + dice_weight * soft_dice_loss(
        logits, targets, weights)


def coarse_weight_at(step: int, total: int, start: float, end: float) -> float:
    """Linear decay of the coarse term's weight from ``start`` (step 0) to ``end`` (last step)."""
    if total <= 1:
        return float(start)
    t = min(max(step / (total - 1), 0.0), 1.0)
    return float(start + (end - start) * t)


def training_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, weights: torch.Tensor,
                  coarse_weight: float, bce_weight: float = 0.5, dice_weight: float = 0.5
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats, for logging) from ``IMedSAM.forward_train``'s output."""
    coarse = bce_dice(out["coarse"], labels, weights, bce_weight, dice_weight)
    total = coarse_weight * coarse
    logs = {"coarse": float(coarse.detach())}
    if "fine" in out:
        idx = out["fine_index"]
        fine = bce_dice(out["fine"], labels.gather(1, idx), weights.gather(1, idx), bce_weight, dice_weight)
        total = total + fine
        logs["fine"] = float(fine.detach())
    return total, logs
