"""Load NIfTI and DICOM images into numpy arrays in napari's (z, y, x) display order.

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
import warnings
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


def load_nifti(path: PathLike) -> Volume:
    """Read a 2-D or 3-D NIfTI file as float32 (scl_slope/scl_inter applied: HU for CT) in (z, y, x)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIfTI file not found: {path}")
    img = nib.load(str(path))
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise ValueError(f"{path.name} is a {len(shape)}-D NIfTI of shape {shape}; only 2-D and 3-D images "
                         "can be opened. Extract one volume first, e.g. nibabel's img.slicer[..., 0].")
    if len(shape) < 2:
        raise ValueError(f"{path.name} has shape {shape}; a 2-D or 3-D image is needed.")
    source_ndim = len(shape)
    data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    if source_ndim == 2:
        data = data[:, :, None]
    header = img.header
    geometry = display_geometry(data.shape, img.affine)
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


# --------------------------------------------------------------------------- DICOM
# Patient coordinates in DICOM are LPS+; NIfTI/nibabel affines are RAS+: negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def is_dicom_file(path: PathLike) -> bool:
    """True for a file with the DICOM Part-10 preamble ("DICM" at byte 128); cheap, reads 132 bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_files_in(folder: PathLike) -> list[Path]:
    """The DICOM files directly inside ``folder`` (not recursive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))


def _read_headers(files: Sequence[Path]) -> list[tuple[Path, Any]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=False)
        except (InvalidDicomError, OSError, EOFError, ValueError):  # unreadable: not part of a series
            continue
        if "Rows" in ds and "Columns" in ds:  # an image (not a DICOMDIR, report, ...)
            out.append((f, ds))
    return out


def load_dicom(path: PathLike | Sequence[PathLike], series_uid: str | None = None) -> Volume:
    """Read a DICOM series as float32 (HU for CT) in (z, y, x) order.

    ``path`` is a folder (its largest series, or ``series_uid``), one file (the series it belongs
    to, gathered from its folder) or an explicit list of files (only those files are read).
    """
    anchor: Path | None = None
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():
            files = dicom_files_in(p)
            if not files:
                subdirs = sorted(d.name for d in p.iterdir() if d.is_dir())[:5]
                hint = f" It has sub-folders {subdirs}: open the series folder itself." if subdirs else ""
                raise ValueError(f"No DICOM files (with the 'DICM' preamble) directly inside {p}.{hint}")
        elif p.is_file():
            if not is_dicom_file(p):
                raise ValueError(f"{p} is not a DICOM file (no 'DICM' marker at byte 128).")
            anchor, files = p, dicom_files_in(p.parent)
        else:
            raise FileNotFoundError(f"DICOM path not found: {p}")
    else:
        files = [Path(f) for f in path]
        if not files:
            raise ValueError("No DICOM files given.")
    headers = _read_headers(files)
    if not headers:
        raise ValueError(f"None of the {len(files)} DICOM file(s) holds an image (no Rows/Columns): "
                         f"{files[0] if len(files) == 1 else files[0].parent}")
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "unknown")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise ValueError(f"Series {series_uid} not found; available: {sorted(series)}")
        chosen = series_uid
    elif anchor is not None and any(f == anchor for f, _ in headers):
        chosen = next(str(getattr(ds, "SeriesInstanceUID", "unknown")) for f, ds in headers if f == anchor)
    elif anchor is not None:
        raise ValueError(f"{anchor} is a DICOM file without an image (no Rows/Columns).")
    else:
        chosen = max(sorted(series), key=lambda uid: len(series[uid]))
    vol = _load_series([f for f, _ in series[chosen]])
    vol.metadata["series_in_folder"] = {uid: len(v) for uid, v in series.items()}
    return vol


def _pixels(ds: Any, f: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError(f"{f} has no pixel data (it may be a DICOMDIR, a report or a presentation state).")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ValueError(f"Cannot decode the pixel data of {f} (transfer syntax {ts}): {exc}. "
                         "Compressed DICOM needs a decoder plug-in such as pylibjpeg or gdcm.") from exc
    return np.asarray(arr)


def _floats(ds: Any, keyword: str, default: Sequence[float] | None) -> list[float] | None:
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return None if default is None else list(default)
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    return [float(v) for v in values]


def _load_series(files: Sequence[Path]) -> Volume:
    import pydicom

    dss = [pydicom.dcmread(str(f), force=False) for f in files]
    first, f0 = dss[0], Path(files[0])
    if int(getattr(first, "SamplesPerPixel", 1)) > 1:
        if len(dss) > 1:
            raise ValueError(f"Colour DICOM series ({len(dss)} files) are not supported; open one file.")
        rgb = _pixels(first, f0)
        ps = _floats(first, "PixelSpacing", (1.0, 1.0))
        meta = {"source_path": str(f0), "source_format": "dicom",
                "modality": getattr(first, "Modality", None)}
        return Volume(rgb, (ps[0], ps[1]), f0.stem, meta, rgb=True)
    shapes: dict[tuple[int, int], int] = {}
    for ds in dss:
        key = (int(ds.Rows), int(ds.Columns))
        shapes[key] = shapes.get(key, 0) + 1
    if len(shapes) > 1:
        raise ValueError(f"The series in {f0.parent} mixes image sizes {shapes} (rows, columns: count); "
                         "a volume needs equal sizes. Open the files of one size as a list.")
    iop = _floats(first, "ImageOrientationPatient", None)
    row_dir = np.array(iop[:3] if iop else [1.0, 0.0, 0.0])
    col_dir = np.array(iop[3:] if iop else [0.0, 1.0, 0.0])
    normal = np.cross(row_dir, col_dir)
    positions = [_floats(ds, "ImagePositionPatient", None) for ds in dss]
    geometry_known = iop is not None and all(p is not None for p in positions)
    uniform = True
    frames = int(getattr(first, "NumberOfFrames", 1) or 1)
    if len(dss) > 1 and geometry_known:
        proj = np.array([np.dot(p, normal) for p in positions])
        order = np.argsort(proj, kind="stable")
        steps = np.diff(proj[order])
        if np.any(np.abs(steps) < 1e-4):
            raise ValueError(f"Several files in {f0.parent} share one slice position (more than one "
                             "acquisition, echo or time point in the series); cannot build one volume.")
        dz = float(np.median(steps))
        uniform = bool(np.all(np.abs(steps - dz) <= 0.01 * dz + 1e-3))
        if not uniform:
            warnings.warn(f"Uneven slice spacing in {f0.parent} ({steps.min():.3f}-{steps.max():.3f} mm); "
                          f"using the median {dz:.3f} mm.", stacklevel=2)
    else:
        order = np.argsort([int(getattr(ds, "InstanceNumber", 0) or 0) for ds in dss], kind="stable")
        dz = (_floats(first, "SpacingBetweenSlices", None) or _floats(first, "SliceThickness", (1.0,)))[0]
    dss = [dss[i] for i in order]
    files = [Path(files[i]) for i in order]
    slices = []
    for ds, f in zip(dss, files):
        arr = _pixels(ds, f).astype(np.float32)
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        arr = arr * slope + intercept
        slices.extend(arr if frames > 1 and arr.ndim == 3 else [arr])
    stack = np.stack(slices)  # (slice, row, column)
    dr, dc = _floats(first, "PixelSpacing", None) or _floats(first, "ImagerPixelSpacing", (1.0, 1.0))
    origin = np.array(positions[order[0]] if geometry_known else [0.0, 0.0, 0.0])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, normal * dz, origin
    source = stack.transpose(2, 1, 0)  # (column, row, slice): the usual NIfTI layout of a DICOM series
    geometry = display_geometry(source.shape, _LPS_TO_RAS @ lps)
    data, spacing = to_display(source, geometry)
    modality = getattr(first, "Modality", None)
    is_hu = looks_like_hu(data, modality)
    geometry.update(
        source_path=str(f0 if len(files) == 1 else f0.parent),
        source_files=[str(f) for f in files],
        source_format="dicom",
        source_ndim=3,
        affine_lps=lps,
        geometry_from_positions=bool(geometry_known and len(dss) > 1),
        slice_spacing_uniform=uniform,
        series_instance_uid=str(getattr(first, "SeriesInstanceUID", "")),
        modality=modality,
        is_hu=is_hu,
        qform_code=1,
        sform_code=1,
    )
    fallback = f0.stem if len(files) == 1 else f0.parent.name
    name = str(getattr(first, "SeriesDescription", "") or "") or fallback
    return Volume(data, spacing, name, geometry)


def load_volume(path: PathLike | Sequence[PathLike]) -> Volume:
    """Load a NIfTI file, a DICOM file, a DICOM folder or a list of DICOM files."""
    if isinstance(path, (str, os.PathLike)) and is_nifti_path(path):
        return load_nifti(path)
    return load_dicom(path)
