"""Segmentation metrics per image (Dice, IoU, Hausdorff, HD95, normalised surface Dice) and averages.

Definitions (pred and gt are boolean masks of the same shape, 2-D or 3-D):

- Dice = 2 |P & G| / (|P| + |G|), IoU = |P & G| / |P | G|.
- Surfaces are the inner boundaries ``mask & ~binary_erosion(mask, cross)`` with the 4-neighbour
  cross (6-neighbour in 3-D) and ``border_value=0``, as MedPy and MONAI do: a pixel is on the surface
  when a direct neighbour is background or it lies on the image edge. A one-pixel object is its own
  surface.
- Distances are Euclidean between surface pixel centres, from ``distance_transform_edt`` with
  ``sampling=spacing``: in mm when ``spacing`` (per axis, anisotropic allowed) is given, else in pixels.
- HD (Hausdorff) = the largest of both directed surface distance sets.
- HD95 = the 95th percentile (numpy's linear interpolation) of both directed sets *pooled*
  (concatenated), as MedPy's ``hd95`` does. MONAI instead takes the larger of the two directed 95th
  percentiles, which is never smaller.
- NSD (normalised surface Dice at tolerance tau, same unit as the distances) = (number of pred surface
  pixels within tau of the gt surface + number of gt surface pixels within tau of the pred surface) /
  (number of surface pixels of both), counting pixels (MONAI's default), not surfel areas.

Empty masks: both empty -> Dice 1, IoU 1, HD 0, HD95 0, NSD 1 (nothing to find, nothing found);
exactly one empty -> Dice 0, IoU 0, HD inf, HD95 inf, NSD 0. ``aggregate`` averages each metric over
its finite values and reports how many were infinite as ``<name>_n_inf`` for hd and hd95, so one
missed object does not turn the whole mean into inf but is not silently hidden either.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

METRIC_KEYS = ("dice", "iou", "hd", "hd95", "nsd")
DISTANCE_KEYS = ("hd", "hd95")


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise ValueError(f"{name} must be a boolean mask (or hold only 0 and 1); threshold probabilities first")


def _check(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None):
    pred, gt = _as_bool(pred, "pred"), _as_bool(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    if pred.ndim < 1:
        raise ValueError("masks must have at least one dimension")
    if spacing is not None:
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != pred.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing must hold {pred.ndim} positive numbers (one per axis), got {spacing}")
    return pred, gt, spacing


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient; 1 when both masks are empty."""
    pred, gt, _ = _check(pred, gt, None)
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union (Jaccard); 1 when both masks are empty."""
    pred, gt, _ = _check(pred, gt, None)
    union = int((pred | gt).sum())
    return 1.0 if union == 0 else int((pred & gt).sum()) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Inner boundary: foreground pixels with a background direct neighbour or on the image edge."""
    mask = np.asarray(mask, dtype=bool)
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def _crop_to_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop to the union's bounding box plus one background pixel: surfaces and distances are unchanged."""
    union = pred | gt
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, union.shape[axis])))
    return pred[tuple(box)], gt[tuple(box)]


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed distances (pred surface -> gt surface, gt surface -> pred surface); both masks non-empty."""
    pred, gt, spacing = _check(pred, gt, spacing)
    if not pred.any() or not gt.any():
        raise ValueError("surface distances need two non-empty masks")
    pred, gt = _crop_to_union(pred, gt)
    s_pred, s_gt = surface(pred), surface(gt)
    to_gt = ndimage.distance_transform_edt(~s_gt, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    return to_gt[s_pred], to_pred[s_gt]


def _distance_metrics(d_pred: np.ndarray, d_gt: np.ndarray, tolerance: float) -> dict[str, float]:
    pooled = np.concatenate([d_pred, d_gt])
    within = int((d_pred <= tolerance).sum()) + int((d_gt <= tolerance).sum())
    return {
        "hd": float(pooled.max()),
        "hd95": float(np.percentile(pooled, 95)),
        "nsd": within / pooled.size,
    }


def hausdorff(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, percentile: float = 100.0
) -> float:
    """Hausdorff distance (``percentile`` 100) or its pooled percentile variant (95 for HD95)."""
    pred, gt, spacing = _check(pred, gt, spacing)
    if not pred.any() and not gt.any():
        return 0.0
    if not pred.any() or not gt.any():
        return float("inf")
    return float(np.percentile(np.concatenate(surface_distances(pred, gt, spacing)), percentile))


def surface_dice(
    pred: np.ndarray, gt: np.ndarray, tolerance: float = 1.0, spacing: Sequence[float] | None = None
) -> float:
    """Normalised surface Dice at ``tolerance`` (mm with spacing, else pixels)."""
    pred, gt, spacing = _check(pred, gt, spacing)
    if not pred.any() and not gt.any():
        return 1.0
    if not pred.any() or not gt.any():
        return 0.0
    return _distance_metrics(*surface_distances(pred, gt, spacing), tolerance)["nsd"]


def compute_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None, nsd_tolerance: float = 1.0
) -> dict[str, float]:
    """All metrics of one image: {"dice", "iou", "hd", "hd95", "nsd"}; distances in mm with spacing."""
    pred, gt, spacing = _check(pred, gt, spacing)
    if nsd_tolerance < 0:
        raise ValueError(f"nsd_tolerance must be >= 0, got {nsd_tolerance}")
    out = {"dice": dice(pred, gt), "iou": iou(pred, gt)}
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        out.update(hd=0.0, hd95=0.0, nsd=1.0)
    elif not has_pred or not has_gt:
        out.update(hd=float("inf"), hd95=float("inf"), nsd=0.0)
    else:
        out.update(_distance_metrics(*surface_distances(pred, gt, spacing), nsd_tolerance))
    return out


def aggregate(results: Iterable[Mapping[str, float]], keys: Sequence[str] | None = None) -> dict[str, float]:
    """Means over images: {"n", <metric> (mean of finite values), "hd_n_inf", "hd95_n_inf"}.

    ``keys`` defaults to the metrics of ``METRIC_KEYS`` present in the results. NaN values are
    ignored; a metric with no finite value averages to NaN.
    """
    results = list(results)
    if keys is None:
        keys = [k for k in METRIC_KEYS if any(k in r for r in results)]
    out: dict[str, float] = {"n": len(results)}
    for key in keys:
        values = np.array([r[key] for r in results if key in r], dtype=np.float64)
        finite = values[np.isfinite(values)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
        if key in DISTANCE_KEYS or np.isinf(values).any():
            out[f"{key}_n_inf"] = int(np.isinf(values).sum())
    return out


def aggregate_by(
    results: Iterable[Mapping[str, float]], group: str, keys: Sequence[str] | None = None
) -> dict[Hashable, dict[str, float]]:
    """``aggregate`` per value of ``results[i][group]`` (e.g. per organ: group="label_id")."""
    groups: dict[Hashable, list[Mapping[str, float]]] = {}
    for r in results:
        groups.setdefault(r[group], []).append(r)
    return {g: aggregate(rs, keys) for g, rs in sorted(groups.items(), key=lambda item: str(item[0]))}
