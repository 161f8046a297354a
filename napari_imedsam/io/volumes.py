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


def _check_affine(path: PathLike, affine: np.ndarray, what: str) -> np.ndarray:
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
    affine = _check_affine(path, img.affine, "affine (sform/qform)")
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


def _read_headers(files: Sequence[Path], failures: list[str] | None = None) -> list[tuple[Path, Any]]:
    """The headers of the image files among ``files``; unreadable ones are skipped (and listed in ``failures``)."""
    import pydicom

    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=False)
        except Exception as exc:  # noqa: BLE001 - unreadable: not part of a series (pydicom raises many types)
            if failures is not None:
                failures.append(f"{f.name}: {type(exc).__name__}: {str(exc)[:120]}")
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
                raise ReaderError(f"No DICOM files (with the 'DICM' preamble) directly inside {p}.{hint}", p)
        elif p.is_file():
            if not is_dicom_file(p):
                raise ReaderError(f"{p} is not a DICOM file (no 'DICM' marker at byte 128).", p)
            anchor, files = p, dicom_files_in(p.parent)
        else:
            raise FileNotFoundError(f"DICOM path not found: {p}")
    else:
        files = [Path(f) for f in path]
        if not files:
            raise ReaderError("No DICOM files given.")
        folders = [f for f in files if f.is_dir()]
        if folders:
            raise ReaderError(f"{folders[0]} is a folder, not a DICOM file; pass the folder alone or its files.",
                              folders[0])
    failures: list[str] = []
    headers = _read_headers(files, failures)
    if not headers:
        where = files[0] if len(files) == 1 else files[0].parent
        why = f"; unreadable: {'; '.join(failures[:3])}" if failures else ""
        raise ReaderError(f"None of the {len(files)} DICOM file(s) holds an image (no Rows/Columns): {where}{why}. "
                          "A file cut short, a DICOMDIR or a report has none.", where)
    series: dict[str, list[tuple[Path, Any]]] = {}
    for f, ds in headers:
        series.setdefault(str(getattr(ds, "SeriesInstanceUID", "unknown")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise ReaderError(f"Series {series_uid} not found; available: {sorted(series)}")
        chosen = series_uid
    elif anchor is not None and any(f == anchor for f, _ in headers):
        chosen = next(str(getattr(ds, "SeriesInstanceUID", "unknown")) for f, ds in headers if f == anchor)
    elif anchor is not None:
        raise ReaderError(f"{anchor} is a DICOM file without an image (no Rows/Columns).", anchor)
    else:
        chosen = max(sorted(series), key=lambda uid: len(series[uid]))
    chosen_files = [f for f, _ in series[chosen]]
    try:
        vol = _load_series(chosen_files)
    except (ReaderError, FileNotFoundError):
        raise
    except MemoryError as exc:
        raise ReaderError(f"Not enough memory to read the {len(chosen_files)} DICOM file(s) of "
                          f"{chosen_files[0].parent}.", chosen_files[0]) from exc
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file makes pydicom or numpy raise
        raise ReaderError(f"The DICOM series in {chosen_files[0].parent} cannot be read ({type(exc).__name__}: {exc}).",
                          chosen_files[0]) from exc
    vol.metadata["series_in_folder"] = {uid: len(v) for uid, v in series.items()}
    return vol


def _pixels(ds: Any, f: Path) -> np.ndarray:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ReaderError(f"{f} has no pixel data (it may be a DICOMDIR, a report or a presentation state).", f)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for undecodable data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ReaderError(f"Cannot decode the pixel data of {f} (transfer syntax {ts}): {exc}. The file may be "
                          "cut short; compressed DICOM needs a decoder plug-in such as pylibjpeg or gdcm.", f) from exc
    return np.asarray(arr)


def _floats(ds: Any, keyword: str, default: Sequence[float] | None, f: Path | None = None, n: int | None = None,
            positive: bool = False) -> list[float] | None:
    """The numbers of tag ``keyword`` (``default`` when absent), checked: ``n`` finite values (positive ones)."""
    try:
        value = getattr(ds, keyword, None)
    except Exception as exc:  # noqa: BLE001 - pydicom parses values lazily and raises on a malformed one
        raise ReaderError(f"{f}: the DICOM tag {keyword} cannot be parsed ({exc}).", f) from exc
    if value is None or value == "":
        return None if default is None else list(default)
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ReaderError(f"{f}: the DICOM tag {keyword} holds {list(values)!r}, not numbers.", f) from exc
    if n is not None and len(out) != n:
        raise ReaderError(f"{f}: the DICOM tag {keyword} holds {len(out)} value(s) {out}; it needs {n}. The "
                          "header is damaged: fix it or re-export the series.", f)
    if not all(np.isfinite(out)) or (positive and not all(v > 0 for v in out)):
        raise ReaderError(f"{f}: the DICOM tag {keyword} holds {out}; it needs finite"
                          f"{' positive' if positive else ''} numbers.", f)
    return out


def _load_series(files: Sequence[Path]) -> Volume:
    import pydicom

    dss = []
    for f in files:
        try:
            dss.append(pydicom.dcmread(str(f), force=False))
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged file
            raise ReaderError(f"{f} cannot be read as DICOM ({type(exc).__name__}: {exc}); it may be cut short.",
                              f) from exc
    first, f0 = dss[0], Path(files[0])
    if int(_floats(first, "SamplesPerPixel", (1,), f0, 1)[0]) > 1:
        if len(dss) > 1:
            raise ReaderError(f"Colour DICOM series ({len(dss)} files) are not supported; open one file.", f0)
        rgb = _pixels(first, f0)
        ps = _floats(first, "PixelSpacing", (1.0, 1.0), f0, 2, positive=True)
        meta = {"source_path": str(f0), "source_format": "dicom",
                "modality": getattr(first, "Modality", None)}
        return Volume(rgb, (ps[0], ps[1]), f0.stem, meta, rgb=True)
    shapes: dict[tuple[int, int], int] = {}
    for ds, f in zip(dss, files):
        rows, cols = (int(_floats(ds, k, None, f, 1)[0]) for k in ("Rows", "Columns"))
        if rows < 1 or cols < 1:
            raise ReaderError(f"{f}: its image has {rows} rows and {cols} columns.", f)
        key = (rows, cols)
        shapes[key] = shapes.get(key, 0) + 1
    check_volume_size(f0.parent, (len(dss) * int(_floats(first, "NumberOfFrames", (1,), f0, 1)[0] or 1), *key))
    if len(shapes) > 1:
        raise ReaderError(f"The series in {f0.parent} mixes image sizes {shapes} (rows, columns: count); "
                          "a volume needs equal sizes. Open the files of one size as a list.", f0.parent)
    iop = _floats(first, "ImageOrientationPatient", None, f0, 6)
    row_dir = np.array(iop[:3] if iop else [1.0, 0.0, 0.0])
    col_dir = np.array(iop[3:] if iop else [0.0, 1.0, 0.0])
    normal = np.cross(row_dir, col_dir)
    if iop is not None and np.linalg.norm(normal) < 1e-3:
        raise ReaderError(f"{f0}: ImageOrientationPatient {iop} does not give two independent directions.", f0)
    if iop is not None:
        row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
        normal = np.cross(row_dir, col_dir)
        normal /= np.linalg.norm(normal)
    positions = [_floats(ds, "ImagePositionPatient", None, f, 3) for ds, f in zip(dss, files)]
    geometry_known = iop is not None and all(p is not None for p in positions)
    uniform = True
    frames = int(getattr(first, "NumberOfFrames", 1) or 1)
    if len(dss) > 1 and geometry_known:
        proj = np.array([np.dot(p, normal) for p in positions])
        order = np.argsort(proj, kind="stable")
        steps = np.diff(proj[order])
        if np.any(np.abs(steps) < 1e-4):
            raise ReaderError(f"Several files in {f0.parent} share one slice position (more than one "
                              "acquisition, echo or time point in the series); cannot build one volume.", f0.parent)
        dz = float(np.median(steps))
        uniform = bool(np.all(np.abs(steps - dz) <= 0.01 * dz + 1e-3))
        if not uniform:
            warnings.warn(f"Uneven slice spacing in {f0.parent} ({steps.min():.3f}-{steps.max():.3f} mm); "
                          f"using the median {dz:.3f} mm.", stacklevel=2)
    else:
        order = np.argsort([int(getattr(ds, "InstanceNumber", 0) or 0) for ds in dss], kind="stable")
        dz = (_floats(first, "SpacingBetweenSlices", None, f0, 1) or _floats(first, "SliceThickness", (1.0,), f0, 1))[0]
        dz = dz if dz > 0 else 1.0  # a single slice's thickness may be 0: it only sets the (unused) z spacing
    dss = [dss[i] for i in order]
    files = [Path(files[i]) for i in order]
    slices = []
    for ds, f in zip(dss, files):
        arr = _pixels(ds, f).astype(np.float32)
        slope = _floats(ds, "RescaleSlope", (1.0,), f, 1)[0] or 1.0
        intercept = _floats(ds, "RescaleIntercept", (0.0,), f, 1)[0]
        arr = arr * slope + intercept
        slices.extend(arr if frames > 1 and arr.ndim == 3 else [arr])
    if len({a.shape for a in slices}) > 1:
        raise ReaderError(f"The pixel data of the series in {f0.parent} has frames of different sizes "
                          f"{sorted({a.shape for a in slices})}.", f0.parent)
    stack = np.stack(slices)  # (slice, row, column)
    dr, dc = (_floats(first, "PixelSpacing", None, f0, 2, positive=True)
              or _floats(first, "ImagerPixelSpacing", (1.0, 1.0), f0, 2, positive=True))
    origin = np.array(positions[order[0]] if geometry_known else [0.0, 0.0, 0.0])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, normal * dz, origin
    source = stack.transpose(2, 1, 0)  # (column, row, slice): the usual NIfTI layout of a DICOM series
    affine = _check_affine(f0, _LPS_TO_RAS @ lps, "geometry (ImageOrientationPatient, PixelSpacing, slice spacing)")
    geometry = display_geometry(source.shape, affine)
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
