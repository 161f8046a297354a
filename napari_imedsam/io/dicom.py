"""Load a DICOM series (a file, a folder or a list of files) into a :class:`~napari_imedsam.io.volumes.Volume`
in the (z, y, x) display order that :mod:`napari_imedsam.io.volumes` documents, HU and geometry kept."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_imedsam.io.volumes import (
    PathLike,
    ReaderError,
    Volume,
    check_affine,
    check_volume_size,
    display_geometry,
    looks_like_hu,
    to_display,
)

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
    affine = check_affine(f0, _LPS_TO_RAS @ lps, "geometry (ImageOrientationPatient, PixelSpacing, slice spacing)")
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
