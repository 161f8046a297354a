"""Reading 2-D images and masks: any common format and dtype to float32 [0, 1] images and objects.

Images: grey stays HxW, colour becomes HxWx3 (alpha dropped). uint8 is divided by 255, uint16 by
65535, bool maps to {0, 1}, every other dtype (floats, other integers) is min-max rescaled.
Masks: colour masks are reduced to one channel by the maximum over the colour channels. JPEG masks
(lossy, not strictly binary) are thresholded at half the range (> 127 for uint8). Other masks with at
most two distinct values, or float masks, are binary (non-zero, resp. > max / 2, is foreground) and
split into 8-connected objects; integer masks with more than two distinct values are instance-id
masks (one object per non-zero id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import skimage.io
import skimage.measure
import tifffile

from napari_imedsam.io.volumes import ReaderError
from napari_imedsam.model.preprocess import rescale_unit

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
TIFF_EXTENSIONS = (".tif", ".tiff")

MaskMode = Literal["auto", "binary", "instance"]


def read_array(path: str | Path) -> np.ndarray:
    """Read a 2-D image file as stored (tifffile for TIFF, skimage.io otherwise). A file that cannot be read
    (cut short, not an image, empty, a folder) is a ``ReaderError`` naming it; a missing one FileNotFoundError."""
    path = Path(path)
    if path.is_dir():
        raise ReaderError(f"{path} is a folder, not an image file.", path)
    if not path.is_file():
        raise FileNotFoundError(f"Image file not found: {path}")
    if path.stat().st_size == 0:
        raise ReaderError(f"{path} is empty (0 bytes).", path)
    try:
        if path.suffix.lower() in TIFF_EXTENSIONS:
            return np.asarray(tifffile.imread(path))
        return np.asarray(skimage.io.imread(path))
    except MemoryError as exc:
        raise ReaderError(f"{path}: not enough memory to read it.", path) from exc
    except Exception as exc:  # noqa: BLE001 - tifffile/imageio/PIL raise many types (struct.error, OSError, ...)
        raise ReaderError(f"{path} cannot be read as an image; it may be cut short or not an image "
                          f"({type(exc).__name__}: {exc}).", path) from exc


def to_hw_or_hwc(arr: np.ndarray) -> np.ndarray:
    """Bring an array to HxW (grey) or HxWx3 (colour), dropping alpha; channel-first is accepted."""
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] > 4:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[-1] in (1, 2):  # grey, grey + alpha
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # RGB, RGBA
        return arr[..., :3]
    raise ValueError(f"unsupported image shape {arr.shape}: expected HxW, HxWx3 or HxWx4")


def to_unit_float(arr: np.ndarray) -> np.ndarray:
    """Map any dtype to float32 in [0, 1] (uint8 / 255, uint16 / 65535, otherwise min-max)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return np.clip(rescale_unit(arr, lo, hi), 0.0, 1.0)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as HxW or HxWx3 float32 in [0, 1]."""
    return to_unit_float(to_hw_or_hwc(read_array(path)))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as a 2-D array in its stored dtype (colour masks: maximum over colour channels)."""
    arr = read_array(path)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] > 4:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4):
        n_colour = 1 if arr.shape[-1] <= 2 else 3
        arr = arr[..., :n_colour].max(axis=-1)
    if arr.ndim != 2:
        raise ValueError(f"unsupported mask shape {arr.shape}: expected HxW or HxWxC")
    return arr


def binarize(raw: np.ndarray, jpeg: bool) -> np.ndarray:
    """Foreground of a binary mask: half-range threshold for JPEG and floats, non-zero otherwise."""
    if raw.dtype == bool:
        return raw
    if raw.dtype.kind == "f":
        top = float(np.nanmax(raw)) if raw.size else 0.0
        return raw > (top / 2 if top > 0 else 0.0)
    if jpeg:
        return raw > np.iinfo(raw.dtype).max // 2
    return raw > 0


class MaskObjects(NamedTuple):
    """The objects of one mask: a label image, the ids kept, the mode used, the foreground size."""

    labels: np.ndarray
    ids: list[int]
    mode: Literal["binary", "instance"]
    foreground_px: int
    largest_px: int


def mask_objects(raw: np.ndarray, *, jpeg: bool, mode: MaskMode = "auto", min_area: int = 16) -> MaskObjects:
    """Split a mask into objects, keeping those with at least ``min_area`` pixels.

    Binary masks give one object per 8-connected component (ids are the component numbers in raster
    order); instance masks give one object per non-zero id.
    """
    if mode not in ("auto", "binary", "instance"):
        raise ValueError(f"mask_mode must be 'auto', 'binary' or 'instance', got {mode!r}")
    if mode == "auto":
        many_values = raw.dtype.kind in "iu" and np.unique(raw).size > 2
        mode = "instance" if many_values and not jpeg else "binary"
    if mode == "binary":
        labels = skimage.measure.label(binarize(raw, jpeg), connectivity=2).astype(np.int32, copy=False)
    else:
        if raw.dtype.kind not in "iub":
            raise ValueError(f"an instance-id mask must hold integers, got dtype {raw.dtype}")
        if raw.dtype.kind == "i" and raw.min() < 0:
            raise ValueError("an instance-id mask must not hold negative ids")
        labels = raw.astype(np.int64, copy=False)
    values, areas = np.unique(labels, return_counts=True)
    areas = np.where(values == 0, 0, areas)
    ids = [int(v) for v, a in zip(values, areas) if a >= max(min_area, 1)]
    return MaskObjects(labels, ids, mode, int(areas.sum()), int(areas.max()) if areas.size else 0)
