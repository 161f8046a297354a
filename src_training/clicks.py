"""Simulated corrective clicks (as micro-sam and SAM train and evaluate interactive segmentation): a click at
the interior point of the largest error region of the current mask, positive for a miss, negative for a leak.
The clicking benchmark uses the same rule to play the user."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


def corrective_click(pred_mask: np.ndarray, truth: np.ndarray) -> tuple[float, float, int] | None:
    """(x, y, label) in pixels of the masks' grid (pixel centres at .5): the point farthest from the edge of
    the largest connected error region (label 1 for a missed part, 0 for a leak); None when exact."""
    best = None
    for wrong, label in ((truth & ~pred_mask, 1), (pred_mask & ~truth, 0)):
        regions, n = ndimage.label(wrong)
        if not n:
            continue
        sizes = ndimage.sum(wrong, regions, index=np.arange(1, n + 1))
        k = int(np.argmax(sizes)) + 1
        if best is None or sizes[k - 1] > best[0]:
            best = (sizes[k - 1], regions == k, label)
    if best is None:
        return None
    dist = ndimage.distance_transform_edt(np.pad(best[1], 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return x + 0.5, y + 0.5, best[2]


def truth_on_grid(masks: Sequence[np.ndarray], valid_hw: Sequence[tuple[int, int]], size: int, grid: int
                  ) -> torch.Tensor:
    """Each object's mask on the model's low-resolution grid (``grid`` cells over the padded ``size``-pixel
    input, the image at its top-left): (B, grid, grid) bool."""
    out = torch.zeros((len(masks), grid, grid), dtype=torch.bool)
    for i, (mask, (vh, vw)) in enumerate(zip(masks, valid_hw)):
        th, tw = max(1, round(vh * grid / size)), max(1, round(vw * grid / size))
        m = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
        out[i, :th, :tw] = F.interpolate(m, size=(th, tw), mode="area")[0, 0] >= 0.5
    return out


def simulated_clicks(lowres_logit: torch.Tensor, truth: torch.Tensor, size: int, probability: float,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One corrective click per object with ``probability`` (else a padding point, label -1, which SAM's
    prompt encoder embeds as "not a point"), from the backbone's current mask: (B, 1, 2) input pixels and
    (B, 1) labels."""
    b, _, g, _ = lowres_logit.shape
    points = torch.zeros((b, 1, 2))
    labels = torch.full((b, 1), -1.0)
    pred = (lowres_logit[:, 0] > 0).cpu().numpy()
    truth_np = truth.cpu().numpy()
    for i in range(b):
        if rng.random() >= probability:
            continue
        click = corrective_click(pred[i], truth_np[i])
        if click is not None:
            points[i, 0] = torch.tensor([click[0] * size / g, click[1] * size / g])
            labels[i, 0] = float(click[2])
    return points.to(lowres_logit.device), labels.to(lowres_logit.device)
