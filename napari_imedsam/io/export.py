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

from napari_imedsam.io.volumes import size_text

PathLike = str | os.PathLike
_REQUIRED_KEYS = ("affine", "ornt", "source_shape", "zyx_shape", "display_axes")
#: The most memory one export may allocate (the upsampled labels and their copies); ``max_bytes`` overrides it.
MAX_EXPORT_BYTES = 4 * 2**30


class RequestTooLarge(ValueError):
    """A render or export would need more memory than its limit; the message gives both numbers."""


def check_request_size(shape, bytes_per_element: float, limit: float, what: str, advice: str) -> None:
    """Refuse (RequestTooLarge) a request for an array of ``shape`` whose working memory, estimated as
    ``bytes_per_element`` per element, exceeds ``limit`` bytes. Estimated before anything is allocated."""
    elements = 1
    for n in shape:
        elements *= int(n)
    need = elements * bytes_per_element
    if need > limit:
        raise RequestTooLarge(f"{what} of shape {tuple(int(n) for n in shape)} ({elements:,} values) would need "
                              f"about {size_text(need)}, over the limit of {size_text(limit)}; {advice}")


def check_factor(factor: int) -> int:
    """Return ``factor`` if it is a positive integer (1, 2, 4, ...), else raise a ValueError."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"factor must be a positive integer (1, 2 or 4 in the viewer), got {factor!r}")
    return int(factor)


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> list[float] | None:
    """Voxel sizes (mm), one positive finite number per axis, or None."""
    if spacing is None:
        return None
    if isinstance(spacing, (str, bytes)) or not isinstance(spacing, (Sequence, np.ndarray)):
        raise ValueError(f"spacing must be one voxel size (mm) per axis of the labels, got {spacing!r}")
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must hold numbers (mm per axis), got {spacing!r}") from exc
    if len(values) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} needs one value per axis of the {ndim}-D labels")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be positive finite voxel sizes (mm), got {tuple(spacing)}")
    return values


def _check_upsampled_size(arr: np.ndarray, factor: int, max_bytes: float | None) -> None:
    shape = (*arr.shape[:-2], arr.shape[-2] * factor, arr.shape[-1] * factor)
    # np.repeat along y, then along x, then the cast to the label dtype: about three copies at most
    check_request_size(shape, 3 * max(arr.dtype.itemsize, 1), MAX_EXPORT_BYTES if max_bytes is None else max_bytes,
                       f"Labels upsampled by factor {factor}",
                       "use a smaller factor, export fewer slices, or pass max_bytes to allow more.")


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


def upsample_labels(labels: Any, factor: int, max_bytes: float | None = None) -> np.ndarray:
    """Nearest-neighbour upsampling of the last two axes by an integer ``factor``. Refused
    (:class:`RequestTooLarge`) when the result would need more than ``max_bytes`` (default MAX_EXPORT_BYTES)."""
    factor = check_factor(factor)
    arr = _as_labels(labels)
    _check_upsampled_size(arr, factor, max_bytes)
    if factor == 1:
        return arr
    return np.repeat(np.repeat(arr, factor, axis=-2), factor, axis=-1)


def write_labels_tiff(path: PathLike, labels: Any, spacing: Sequence[float] | None = None) -> Path:
    """Write a 2-D or 3-D label array as-is (e.g. already rendered at high resolution) to a TIFF.

    With ``spacing`` (mm per axis) and values that fit uint16, ImageJ-style calibration is stored.
    """
    arr = _as_labels(labels)
    spacing = check_spacing(spacing, arr.ndim)
    arr = arr.astype(label_dtype(arr), copy=False)
    path = Path(path)
    kwargs: dict[str, Any] = {"photometric": "minisblack", "compression": "zlib"}
    if spacing is not None and arr.dtype in (np.uint8, np.uint16):
        kwargs.update(imagej=True, resolution=(1.0 / spacing[-1], 1.0 / spacing[-2]),
                      metadata={"unit": "mm", "axes": "ZYX" if arr.ndim == 3 else "YX",
                                **({"spacing": float(spacing[0])} if arr.ndim == 3 else {})})
        kwargs.pop("compression")  # ImageJ hyperstacks are read most widely uncompressed
    import tifffile

    tifffile.imwrite(path, arr, **kwargs)
    return path


def export_tiff(path: PathLike, labels: Any, factor: int = 1, spacing: Sequence[float] | None = None,
                max_bytes: float | None = None) -> Path:
    """Write labels to TIFF, upsampled in-plane by ``factor`` with nearest neighbour.

    ``spacing`` is the image's voxel size; the written calibration is divided in-plane by ``factor``.
    The upsampled size is checked before anything is allocated (see :func:`upsample_labels`).
    """
    factor = check_factor(factor)
    spacing = check_spacing(spacing, _as_labels(labels).ndim)
    fine = upsample_labels(labels, factor, max_bytes=max_bytes)
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


def write_labels_nifti(path: PathLike, labels: Any, metadata: Mapping[str, Any], factor: int = 1,
                       max_bytes: float | None = None) -> Path:
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
        arr = upsample_labels(arr, factor, max_bytes=max_bytes)
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
