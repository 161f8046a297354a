"""Load NIfTI and DICOM images into numpy arrays in napari's (z, y, x) display order (the DICOM reading
itself: :mod:`napari_imedsam.io.dicom`).

Pure numpy/nibabel/pydicom (no Qt, no napari), so scripts and training code can use it too.

Orientation (the same for every source, so a NIfTI and a DICOM of one scan line up):
every 3-D image is permuted/flipped (never resampled) with nibabel's orientation tools so that
its array axes are ``(S, P, L)``:

* axis 0 (z): slice index, increasing from inferior to superior,
* axis 1 (y): image rows, increasing from anterior (top of the screen) to posterior,
* axis 2 (x): image columns, increasing from the patient's right to the patient's left,

i.e. axial slices are shown the radiological way (patient's right on the screen's left), which is
also the layout of an axial DICOM series. Oblique scans get the closest such permutation.

The metadata kept with every volume (see :class:`Volume`) lets :mod:`napari_imedsam.io.export`
write a label volume back to NIfTI that overlays the original file exactly:

``affine``        4x4 RAS+ (mm) affine of the *source* array (the NIfTI file's own axis order; for
                  DICOM the (column, row, slice) layout that dcm2niix-style converters use).
``source_shape``  shape of that source array (3-D), ``source_ndim`` its original ndim.
``ornt``          nibabel orientation transform (3x2) from source axes to the (z, y, x) axes.
``zyx_affine``    affine of the (z, y, x) array, ``zyx_shape`` its shape.
``display_axes``  the (z, y, x) axes kept in ``data`` (a single-slice image is squeezed to 2-D).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

DISPLAY_AXCODES = ("S", "P", "L")
AXIS_ORDER_DOC = (
    "(z, y, x) = (S, P, L): axis 0 inferior->superior, axis 1 anterior->posterior, "
    "axis 2 patient right->left (radiological view)"
)
#: Soft-tissue CT window (level 40, width 400 HU).
CT_WINDOW = (-160.0, 240.0)
NIFTI_SUFFIXES = (".nii", ".nii.gz")

PathLike = str | os.PathLike


class ReaderError(ValueError):
    """A file or folder cannot be read as an image. The message names the file and what is wrong with it
    (truncated, an impossible header, a broken geometry tag, ...); ``path`` is that file."""

    def __init__(self, message: str, path: PathLike | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


def _memory_limit() -> int:
    """Half the machine's physical memory (8 GiB when unknown): the most one volume may need."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (AttributeError, ValueError, OSError):
        return 8 * 2**30


def size_text(n: float) -> str:
    """Bytes for a message: "1.5 MiB", "10.0 GiB"."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_volume_size(path: PathLike, shape: Sequence[int], bytes_per_voxel: int = 4,
                      max_bytes: int | None = None) -> None:
    """Refuse (ReaderError) a header whose dimensions are impossible or need more memory than ``max_bytes``
    (default half the physical memory), before anything is allocated."""
    dims = [int(n) for n in shape]
    if any(n < 1 for n in dims):
        raise ReaderError(f"{path}: its header gives the dimensions {tuple(dims)}; every dimension must be at "
                          "least 1 (the header is damaged or the file is not an image).", path)
    voxels = 1
    for n in dims:
        voxels *= n
    limit = _memory_limit() if max_bytes is None else max_bytes
    if voxels * bytes_per_voxel > limit:
        raise ReaderError(f"{path}: its header gives the dimensions {tuple(dims)} = {voxels:,} voxels, "
                          f"{size_text(voxels * bytes_per_voxel)} as float32, over the limit of {size_text(limit)} "
                          "(half this machine's memory). The header is damaged, or crop/downsample the image first.",
                          path)


def check_affine(path: PathLike, affine: np.ndarray, what: str) -> np.ndarray:
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise ReaderError(f"{path}: its {what} holds NaN or infinite values, so the voxels have no position. "
                          "Repair the header (e.g. with nibabel: img.set_sform(img.get_qform())) or re-export it.",
                          path)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ReaderError(f"{path}: its {what} is singular (a zero voxel size or two parallel axes): "
                          f"{affine[:3, :3].round(4).tolist()}. Repair the header or re-export the image.", path)
    return affine


@dataclass
class Volume:
    """An image in display order with its voxel spacing (mm per display axis) and geometry metadata."""

    data: np.ndarray
    spacing: tuple[float, ...]
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    rgb: bool = False


def looks_like_hu(data: np.ndarray, modality: str | None = None) -> bool:
    """True for CT data in Hounsfield units: modality CT, or at least 0.5 % air-like voxels (< -500).

    A fraction rather than the minimum, because resampled MRI can hold a few large negative values.
    """
    if modality is not None:
        return modality.upper() == "CT"
    if data.size == 0:
        return False
    sample = data.reshape(-1)[:: max(1, data.size // 1_000_000)]
    return bool(np.mean(sample < -500.0) >= 0.005)


def default_contrast_limits(data: np.ndarray, is_hu: bool) -> tuple[float, float]:
    """Soft-tissue window for HU data, else the 0.5-99.5 percentiles (a flat image gets a unit range)."""
    if is_hu:
        return CT_WINDOW
    finite = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def display_geometry(source_shape: Sequence[int], affine: np.ndarray) -> dict[str, Any]:
    """Orientation transform, affine and spacing that bring a 3-D source array to (S, P, L) order."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or len(source_shape) != 3:
        raise ValueError(f"need a 3-D shape and a 4x4 affine, got shape {tuple(source_shape)}, "
                         f"affine {affine.shape}")
    ornt = ornt_transform(io_orientation(affine), axcodes2ornt(DISPLAY_AXCODES))
    zyx_affine = affine @ inv_ornt_aff(ornt, tuple(source_shape))
    zyx_shape = [0, 0, 0]
    for src_axis, (dst_axis, _flip) in enumerate(ornt):
        zyx_shape[int(dst_axis)] = int(source_shape[src_axis])
    spacing = tuple(float(s) for s in np.linalg.norm(zyx_affine[:3, :3], axis=0))
    display_axes = tuple(range(3))
    if sum(n != 1 for n in zyx_shape) == 2:  # a single slice: show it as a 2-D image
        display_axes = tuple(a for a in range(3) if zyx_shape[a] != 1)
    return {
        "affine": affine,
        "source_shape": tuple(int(n) for n in source_shape),
        "ornt": ornt,
        "zyx_affine": zyx_affine,
        "zyx_shape": tuple(zyx_shape),
        "zyx_spacing": spacing,
        "display_axes": display_axes,
        "axis_order": AXIS_ORDER_DOC,
    }


def to_display(source: np.ndarray, geometry: dict[str, Any]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Reorder a source array to (z, y, x) (squeezed to the display axes) and return it with its spacing."""
    zyx = apply_orientation(source, geometry["ornt"])
    axes = geometry["display_axes"]
    if len(axes) < 3:
        zyx = zyx.reshape([zyx.shape[a] for a in axes])
    spacing = tuple(geometry["zyx_spacing"][a] for a in axes)
    return np.ascontiguousarray(zyx), spacing


def make_metadata(shape_zyx: Sequence[int], spacing_zyx: Sequence[float],
                  origin_ras: Sequence[float] = (0.0, 0.0, 0.0)) -> dict[str, Any]:
    """Geometry metadata for an array already in (S, P, L) order (e.g. a synthetic phantom).

    The source layout is the conventional (x=L, y=P, z=S) one, so an exported NIfTI looks like a
    converted axial DICOM series.
    """
    if len(shape_zyx) != 3 or len(spacing_zyx) != 3:
        raise ValueError("make_metadata needs a 3-D shape and 3 spacings (z, y, x)")
    sz, sy, sx = (float(s) for s in spacing_zyx)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-sx, -sy, sz])  # columns along L, P, S in RAS+ coordinates
    affine[:3, 3] = origin_ras
    nz, ny, nx = (int(n) for n in shape_zyx)
    geometry = display_geometry((nx, ny, nz), affine)
    geometry.update(source_ndim=3, source_format="array")
    return geometry


# --------------------------------------------------------------------------- NIfTI


def is_nifti_path(path: PathLike) -> bool:
    """True for a path named *.nii or *.nii.gz."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _checked_path(path: PathLike, what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ReaderError(f"{path} is a folder, not a {what} file; pick the file itself.", path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.stat().st_size == 0:
        raise ReaderError(f"{path} is empty (0 bytes); it was not written completely.", path)
    return path


def load_nifti(path: PathLike, max_bytes: int | None = None) -> Volume:
    """Read a 2-D or 3-D NIfTI file as float32 (scl_slope/scl_inter applied: HU for CT) in (z, y, x).

    Every failure is a :class:`ReaderError` naming the file: not NIfTI, an impossible or too large header
    (checked before reading, see :func:`check_volume_size`), a file cut short, a NaN or singular affine."""
    path = _checked_path(path, "NIfTI")
    try:
        img = nib.load(str(path))
        shape = tuple(int(n) for n in img.shape)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a bad header
        raise ReaderError(f"{path} is not a readable NIfTI file ({type(exc).__name__}: {exc}).", path) from exc
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise ReaderError(f"{path.name} is a {len(shape)}-D NIfTI of shape {shape}; only 2-D and 3-D images "
                          "can be opened. Extract one volume first, e.g. nibabel's img.slicer[..., 0].", path)
    if len(shape) < 2:
        raise ReaderError(f"{path.name} has shape {shape}; a 2-D or 3-D image is needed.", path)
    check_volume_size(path, shape, 4, max_bytes)
    header = img.header
    on_disk = int(np.prod(shape)) * np.dtype(img.get_data_dtype()).itemsize
    if not is_gz(path):
        available = path.stat().st_size - int(header.get("vox_offset", 0) or 0)
        if available < on_disk:
            raise ReaderError(f"{path} is cut short: its header promises {on_disk:,} bytes of voxels "
                              f"(shape {shape}, {img.get_data_dtype()}) but the file holds {max(available, 0):,}.",
                              path)
    affine = check_affine(path, img.affine, "affine (sform/qform)")
    source_ndim = len(shape)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except MemoryError as exc:
        raise ReaderError(f"{path}: not enough memory for its {shape} voxels.", path) from exc
    except Exception as exc:  # noqa: BLE001 - gzip/zlib/nibabel errors of a damaged file
        raise ReaderError(f"{path} is cut short or corrupt: reading its voxels failed ({type(exc).__name__}: "
                          f"{exc}). Copy or export the file again.", path) from exc
    if source_ndim == 2:
        data = data[:, :, None]
    geometry = display_geometry(data.shape, affine)
    out, spacing = to_display(data, geometry)
    is_hu = looks_like_hu(out)
    qcode = int(header["qform_code"]) if "qform_code" in header else 0
    scode = int(header["sform_code"]) if "sform_code" in header else 0
    geometry.update(
        source_path=str(path),
        source_format="nifti",
        source_ndim=source_ndim,
        qform_code=qcode,
        sform_code=scode,
        is_hu=is_hu,
        modality="CT" if is_hu else None,
    )
    return Volume(out, spacing, _nifti_stem(path), geometry)


def is_gz(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def load_volume(path: PathLike | Sequence[PathLike]) -> Volume:
    """Load a NIfTI file, a DICOM file, a DICOM folder or a list of DICOM files."""
    if isinstance(path, (str, os.PathLike)) and is_nifti_path(path):
        return load_nifti(path)
    from napari_imedsam.io.dicom import load_dicom  # dicom builds on this module

    return load_dicom(path)
