"""Write label images to TIFF or NIfTI, optionally at a finer in-plane resolution than the image.

Pure numpy/tifffile/nibabel (no Qt). The in-plane axes are the last two axes of the displayed
array (y, x). A caller can either pass labels at the image's own resolution with ``factor`` > 1
(nearest-neighbour upsampling) or pass labels it already rendered at the fine resolution (the INR
decoder renders masks at any size); :func:`write_labels_nifti` accepts both.

NIfTI export puts the labels on the grid of the original file: the affine is the original one with
the in-plane voxel size divided by ``factor`` and the origin moved so that the ``factor x factor``
fine voxels nest inside each original voxel (new origin = old origin - (1 - 1/factor)/2 * column).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation

PathLike = str | os.PathLike
_REQUIRED_KEYS = ("affine", "ornt", "source_shape", "zyx_shape", "display_axes")


def check_factor(factor: int) -> int:
    """Return ``factor`` if it is a positive integer (1, 2, 4, ...), else raise a ValueError."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer (1, 2 or 4 in the viewer), got {factor!r}")
    return int(factor)


def _as_labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be an integer (or boolean) array, got dtype {arr.dtype}; "
                         "threshold probabilities first, e.g. (prob > 0.5).astype(np.uint8).")
    if arr.ndim < 2:
        raise ValueError(f"labels must be 2-D or 3-D, got shape {arr.shape}")
    return arr


def label_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest of uint8, uint16, int16, int32 that holds every label value."""
    if labels.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(labels.min()), int(labels.max())
    for dt in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    raise ValueError(f"label values {lo}..{hi} do not fit in int32")


def upsample_labels(labels: Any, factor: int) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes by an integer ``factor``."""
    factor = check_factor(factor)
    arr = _as_labels(labels)
    if factor == 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=-2), factor, axis=-1)


def write_labels_tiff(path: PathLike, labels: Any, spacing: Sequence[float] | None = None) -> Path:
    """Write a 2-D or 3-D label array as-is (e.g. already rendered at high resolution) to a TIFF.

    With ``spacing`` (mm per axis) and values that fit uint16, ImageJ-style calibration is stored.
    """
    arr = _as_labels(labels)
    arr = arr.astype(label_dtype(arr), copy=False)
    path = Path(path)
    kwargs: dict[str, Any] = {"photometric": "minisblack", "compression": "zlib"}
    if spacing is not None and arr.dtype in (np.uint8, np.uint16):
        if len(spacing) != arr.ndim:
            raise ValueError(f"spacing {tuple(spacing)} needs one value per axis of labels {arr.shape}")
        kwargs.update(imagej=True, resolution=(1.0 / spacing[-1], 1.0 / spacing[-2]),
                      metadata={"unit": "mm", "axes": "ZYX" if arr.ndim == 3 else "YX",
                                **({"spacing": float(spacing[0])} if arr.ndim == 3 else {})})
        kwargs.pop("compression")  # ImageJ hyperstacks are read most widely uncompressed
    import tifffile

    tifffile.imwrite(path, arr, **kwargs)
    return path


def export_tiff(path: PathLike, labels: Any, factor: int = 1, spacing: Sequence[float] | None = None) -> Path:
    """Write labels to TIFF, upsampled in-plane by ``factor`` with nearest neighbour.

    ``spacing`` is the image's voxel size; the written calibration is divided in-plane by ``factor``.
    """
    factor = check_factor(factor)
    fine = upsample_labels(labels, factor)
    if spacing is not None:
        spacing = [*spacing[:-2], spacing[-2] / factor, spacing[-1] / factor]
    return write_labels_tiff(path, fine, spacing)


def fine_affine(affine: np.ndarray, inplane_axes: Sequence[int], factor: int) -> np.ndarray:
    """Affine of a grid refined ``factor`` times along ``inplane_axes`` (source axes), voxels nested."""
    factor = check_factor(factor)
    affine = np.asarray(affine, dtype=float)
    out = affine.copy()
    for axis in inplane_axes:
        out[:3, 3] -= (1.0 - 1.0 / factor) / 2.0 * affine[:3, axis]
        out[:3, axis] = affine[:3, axis] / factor
    return out


def write_labels_nifti(path: PathLike, labels: Any, metadata: Mapping[str, Any], factor: int = 1) -> Path:
    """Write labels drawn on a reader-loaded image to NIfTI on the original file's grid.

    ``labels`` has the shape of the displayed image, or that shape with the last two axes
    multiplied by ``factor`` (already rendered at high resolution). The file is written in the
    original axis order with the original affine refined in-plane by ``factor``.
    """
    factor = check_factor(factor)
    missing = [k for k in _REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"metadata lacks {missing}: the image did not come from the NIfTI/DICOM "
                         "reader (use napari_imedsam.io.volumes.make_metadata for a plain array) or "
                         "use export_tiff.")
    arr = _as_labels(labels)
    zyx_shape = tuple(int(n) for n in metadata["zyx_shape"])
    axes = tuple(int(a) for a in metadata["display_axes"])
    coarse = tuple(zyx_shape[a] for a in axes)
    fine = (*coarse[:-2], coarse[-2] * factor, coarse[-1] * factor)
    if arr.shape == coarse and factor > 1:
        arr = upsample_labels(arr, factor)
    elif arr.shape != fine:
        raise ValueError(f"labels shape {arr.shape} matches neither the image {coarse} nor the image "
                         f"upsampled by factor {factor} {fine}")
    inplane_zyx = axes[-2:]
    zyx_fine = [n * factor if a in inplane_zyx else n for a, n in enumerate(zyx_shape)]
    ornt = np.asarray(metadata["ornt"], dtype=float)
    inverse = np.zeros_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inverse[int(dst_axis)] = (src_axis, flip)
    source = apply_orientation(arr.reshape(zyx_fine), inverse)
    inplane_src = [i for i, (dst, _flip) in enumerate(ornt) if int(dst) in inplane_zyx]
    affine = fine_affine(np.asarray(metadata["affine"], dtype=float), inplane_src, factor)
    if int(metadata.get("source_ndim", 3)) == 2 and source.shape[2] == 1:
        source = source[:, :, 0]
    source = np.ascontiguousarray(source.astype(label_dtype(source), copy=False))
    img = nib.Nifti1Image(source, affine)
    header = img.header
    header.set_xyzt_units("mm")
    header.set_intent("label")
    qcode, scode = int(metadata.get("qform_code", 1)), int(metadata.get("sform_code", 1))
    if qcode <= 0 and scode <= 0:
        qcode = scode = 1  # the source had no valid transform: label it "scanner"
    img.set_qform(affine if qcode > 0 else None, max(qcode, 0))
    img.set_sform(affine if scode > 0 else None, max(scode, 0))
    path = Path(path)
    nib.save(img, str(path))
    return path
