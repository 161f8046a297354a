"""DICOM Segmentation objects (highdicom): write the masks drawn on a DICOM series, and open a SEG or an
RTSTRUCT as labels on the grid of the series it refers to.

Writing (:func:`write_labels_dicom_seg`): labels in the display order of the image that the plugin's reader
made from the series (see :mod:`napari_imedsam.io.volumes`) become a *binary* SEG in a new series of the same
study, with the source's Frame of Reference, one frame per source slice that holds a mask, and one segment
per label id (its name as the segment label, the id kept as the segment's tracking ID ``label N``).

Reading (:func:`read_dicom_seg`, :func:`read_rtstruct`): the referenced series is looked up beside the file
(its folder, the folder above and their sub-folders) or given explicitly; the result is a napari
``(data, kwargs, "labels")`` tuple with the series' voxel size as ``scale``, so it overlays the image layer
the reader makes of that series. Only pydicom, highdicom, numpy and scikit-image: no Qt.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import apply_orientation

from napari_imedsam.io.dicom import dicom_files_in, is_dicom_file, load_dicom
from napari_imedsam.io.export import label_dtype
from napari_imedsam.io.volumes import to_display

PathLike = str | os.PathLike
LayerData = tuple[Any, dict[str, Any], str]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_TRACKING = re.compile(r"label (\d+)$")


def _need_highdicom():
    try:
        import highdicom
    except ImportError as exc:  # pragma: no cover - highdicom is a dependency
        raise ImportError("DICOM SEG needs highdicom: pip install highdicom") from exc
    return highdicom


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-imedsam")
    except PackageNotFoundError:  # a source tree that was not installed
        return "unknown"


# ---------------------------------------------------------------------------------------------- file kinds
def dicom_kind(path: PathLike) -> str | None:
    """``"SEG"``, ``"RTSTRUCT"``, another DICOM modality string, or None (not a readable DICOM file)."""
    if not is_dicom_file(path):
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"])
    except Exception:  # noqa: BLE001 - any unreadable header: not a file we can classify
        return None
    sop = str(getattr(ds, "SOPClassUID", ""))
    if sop == SEG_SOP_CLASS:
        return "SEG"
    if sop == RTSTRUCT_SOP_CLASS:
        return "RTSTRUCT"
    return str(getattr(ds, "Modality", "") or "") or None


def is_dicom_seg(path: PathLike) -> bool:
    """True for a DICOM Segmentation Storage file."""
    return dicom_kind(path) == "SEG"


def is_rtstruct(path: PathLike) -> bool:
    """True for a DICOM RT Structure Set file."""
    return dicom_kind(path) == "RTSTRUCT"


# ---------------------------------------------------------------------------------------------- geometry
def from_display(labels: np.ndarray, geometry: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`napari_imedsam.io.volumes.to_display`: a display-order array (its 2-D form for a single
    slice) back to the source layout ``(column, row, slice)`` of a DICOM series."""
    zyx_shape = tuple(int(n) for n in geometry["zyx_shape"])
    display = tuple(zyx_shape[a] for a in geometry["display_axes"])
    arr = np.asarray(labels)
    if arr.shape != display:
        raise ValueError(f"labels of shape {arr.shape} do not match the image {display}: a DICOM SEG is written "
                         "on the grid of its source series (export at 1x)")
    ornt = np.asarray(geometry["ornt"], dtype=float)
    inverse = np.zeros_like(ornt)
    for src_axis, (dst_axis, flip) in enumerate(ornt):
        inverse[int(dst_axis)] = (src_axis, flip)
    return apply_orientation(arr.reshape(zyx_shape), inverse)


def _series_of(source: Any) -> tuple[list[Path], dict[str, Any]]:
    """The files (in slice order) and the reader's geometry of a DICOM source: the metadata of an image layer the
    reader made, a folder, a file, a list of files, or pydicom datasets read from files."""
    if isinstance(source, Mapping):
        meta = dict(source)
        if meta.get("source_format") != "dicom" or not meta.get("source_files"):
            raise ValueError("the image did not come from a DICOM series (no source_files in its metadata): "
                             "a DICOM SEG needs the source series; export NIfTI or TIFF instead")
        return [Path(f) for f in meta["source_files"]], meta
    import pydicom

    if isinstance(source, pydicom.Dataset):
        source = [source]
    if isinstance(source, Sequence) and not isinstance(source, str) and source and all(
            isinstance(d, pydicom.Dataset) for d in source):
        names = [getattr(d, "filename", None) for d in source]
        if not all(isinstance(n, str | os.PathLike) and Path(n).is_file() for n in names):
            raise ValueError("pass the source series as files or a folder: these datasets were not read from files")
        source = list(names)
    vol = load_dicom(source)
    if vol.rgb or "source_files" not in vol.metadata:
        raise ValueError("a DICOM SEG needs a greyscale series with its geometry; this source is a colour image")
    return [Path(f) for f in vol.metadata["source_files"]], dict(vol.metadata)


def _name_of(names: Mapping[int, str] | Sequence[str] | None, label: int) -> str:
    if isinstance(names, Mapping):
        name = names.get(label) or names.get(str(label))  # type: ignore[call-overload]
    elif names is not None and 0 < label <= len(names):
        name = names[label - 1]
    else:
        name = None
    return (str(name) if name else f"object {label}")[:64]  # LO: at most 64 characters


# ---------------------------------------------------------------------------------------------- writing
def write_labels_dicom_seg(labels: Any, source_datasets_or_dir: Any, path: PathLike,
                           names: Mapping[int, str] | Sequence[str] | None = None,
                           series_description: str = "I-MedSAM masks") -> Path:
    """Write ``labels`` (integer, in the display order of the image read from the source series) as a binary
    DICOM SEG referencing that series; returns the path.

    ``source_datasets_or_dir``: the image layer's ``metadata`` (from the plugin's reader), the series folder,
    one of its files, a list of its files, or pydicom datasets read from them. ``names``: label id -> name
    (a mapping, or a sequence naming labels 1, 2, ...); unnamed labels become ``object N``.
    """
    hd = _need_highdicom()
    import pydicom
    from pydicom.sr.codedict import codes

    arr = np.asarray(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be an integer array, got dtype {arr.dtype}")
    files, geometry = _series_of(source_datasets_or_dir)
    frames = from_display(arr, geometry).transpose(2, 1, 0)  # (slice, row, column) in the files' order
    ids = [int(v) for v in np.unique(frames) if v > 0]
    if not ids:
        raise ValueError("nothing to export: the labels are empty")
    lookup = np.zeros(int(frames.max()) + 1, dtype=np.uint16 if len(ids) > 255 else np.uint8)
    for number, label in enumerate(ids, start=1):
        lookup[label] = number
    seg_array = lookup[frames]
    datasets = [pydicom.dcmread(str(f)) for f in files]
    n_frames = int(getattr(datasets[0], "NumberOfFrames", 1) or 1)
    if len(datasets) == 1 and n_frames == 1:
        seg_array = seg_array[0]
    elif len(datasets) != seg_array.shape[0] and not (len(datasets) == 1 and n_frames == seg_array.shape[0]):
        raise ValueError(f"{len(datasets)} source files for {seg_array.shape[0]} slices")
    algorithm = hd.AlgorithmIdentificationSequence(name="napari-imedsam", version=_software_version(),
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=_name_of(names, label),
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"label {label}",
        )
        for number, label in enumerate(ids, start=1)
    ]
    first = datasets[0]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=seg_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-imedsam",
        manufacturer_model_name="I-MedSAM",
        software_versions=_software_version(),
        device_serial_number="none",
        content_label="IMEDSAM",
        content_description="Masks drawn with napari-imedsam (box prompts, I-MedSAM)",
        series_description=series_description[:64],
    )
    path = Path(path)
    seg.save_as(str(path))
    return path


# ---------------------------------------------------------------------------------------------- reading
def _subfolders(folder: Path, skip: Path | None = None) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and d != skip)
    except OSError:
        return []


def _nearby_folders(path: Path) -> Iterable[Path]:
    """The file's folder and its sub-folders, then the folder above and that folder's other sub-folders."""
    here = path.resolve().parent
    yield here
    yield from _subfolders(here)
    yield here.parent
    yield from _subfolders(here.parent, skip=here)


def find_series(series_uid: str, near: PathLike) -> list[Path]:
    """Files of the series ``series_uid`` in the folders beside ``near`` (see :func:`_nearby_folders`)."""
    import pydicom

    near = Path(near)
    for folder in _nearby_folders(near):
        try:
            candidates = dicom_files_in(folder)
        except OSError:
            continue
        found = []
        for f in candidates:
            try:
                ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            except Exception:  # noqa: BLE001 - an unreadable file is not part of the series
                continue
            if str(getattr(ds, "SeriesInstanceUID", "")) == series_uid:
                found.append(f)
        if found:
            return found
    return []


def _referenced_series(path: Path, ds: Any, series: Any) -> tuple[list[Path], dict[str, Any], list[str]]:
    """Files (slice order), geometry and SOP Instance UIDs of the series that ``ds`` refers to."""
    import pydicom

    uid = _referenced_series_uid(ds)
    if series is None:
        files = find_series(uid, path)
        if not files:
            raise ValueError(f"{path.name} refers to series {uid}, which is not beside it (searched "
                             f"{path.parent}, {path.parent.parent} and their sub-folders): put the SEG next to the "
                             "series folder, or pass series=FOLDER")
        series = files
    files, geometry = _series_of(series)
    if str(geometry.get("series_instance_uid", uid)) != uid:
        warnings.warn(f"{path.name} refers to series {uid}, but the given series is "
                      f"{geometry.get('series_instance_uid')}", stacklevel=3)
    uids = [str(pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
            for f in files]
    return files, geometry, uids


def _referenced_series_uid(ds: Any) -> str:
    """The series a SEG (Referenced Series Sequence) or an RTSTRUCT (via its Frame of Reference) refers to."""
    for ser in getattr(ds, "ReferencedSeriesSequence", []):
        return str(ser.SeriesInstanceUID)
    # RTSTRUCT: Referenced Frame of Reference > RT Referenced Study > RT Referenced Series
    for frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        for study in getattr(frame, "RTReferencedStudySequence", []):
            for ser in getattr(study, "RTReferencedSeriesSequence", []):
                return str(ser.SeriesInstanceUID)
    raise ValueError("the file names no referenced series (ReferencedSeriesSequence)")


def _labels_layer(frames: np.ndarray, geometry: dict[str, Any], names: dict[int, str], name: str,
                  source: Path) -> LayerData:
    """A (slice, row, column) label stack on the series' grid -> napari Labels layer data in display order."""
    data, spacing = to_display(frames.transpose(2, 1, 0), geometry)
    data = data.astype(label_dtype(data), copy=False)
    meta = {**geometry, "label_names": names, "source_labels_path": str(source)}
    return (data, {"name": name, "scale": tuple(float(s) for s in spacing), "metadata": meta}, "labels")


def read_dicom_seg(path: PathLike, series: Any = None) -> LayerData:
    """A DICOM SEG as napari Labels data on the grid of its referenced series.

    ``series``: the series (folder, files, or the metadata of its image layer); by default it is looked up beside
    ``path``. Each segment becomes one label id: the id written by :func:`write_labels_dicom_seg` (tracking ID
    ``label N``), else its segment number. Fractional segments are thresholded at 0.5; where segments
    overlap the later one wins. ``metadata["label_names"]`` maps the ids to the segment labels.
    """
    hd = _need_highdicom()
    path = Path(path)
    seg = hd.seg.segread(str(path))
    files, geometry, uids = _referenced_series(path, seg, series)
    numbers = list(seg.segment_numbers)
    ids: dict[int, int] = {}
    for n in numbers:
        match = _TRACKING.match(str(seg.get_segment_description(n).get("TrackingID", "") or ""))
        ids[n] = int(match.group(1)) if match else n
    if len(set(ids.values())) != len(ids):  # tracking IDs that do not name distinct labels: use the numbers
        ids = {n: n for n in numbers}
    source_frames = _frames_of(files[0]) if len(files) == 1 else 1
    stack = None
    for n in numbers:
        if source_frames > 1:  # one multi-frame source image
            mask = seg.get_pixels_by_source_frame(uids[0], list(range(1, source_frames + 1)),
                                                  segment_numbers=[n], assert_missing_frames_are_empty=True)
        else:
            mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[n],
                                                     assert_missing_frames_are_empty=True)
        mask = mask[..., 0] >= 0.5 if mask.dtype.kind == "f" else mask[..., 0] > 0
        if stack is None:
            stack = np.zeros(mask.shape, dtype=np.int32)
        stack[mask] = ids[n]
    names = {ids[n]: str(seg.get_segment_description(n).SegmentLabel) for n in numbers}
    name = str(getattr(seg, "SeriesDescription", "") or "") or path.stem
    return _labels_layer(stack, geometry, names, name, path)


def _frames_of(file: Path) -> int:
    import pydicom

    ds = pydicom.dcmread(str(file), stop_before_pixels=True, specific_tags=["NumberOfFrames"])
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def read_rtstruct(path: PathLike, series: Any = None) -> LayerData:
    """An RT Structure Set as napari Labels data on the grid of its referenced series: each ROI's closed planar
    contours are filled on the slice they lie on, a contour inside another one is a hole (label id = ROI number;
    a later ROI wins where they overlap). ``metadata["label_names"]`` maps the ids to the ROI names."""
    import pydicom
    from skimage.draw import polygon

    path = Path(path)
    ds = pydicom.dcmread(str(path))
    files, geometry, _uids = _referenced_series(path, ds, series)
    lps = np.asarray(geometry["affine_lps"], dtype=float)  # (column, row, slice) index -> LPS mm
    to_index = np.linalg.inv(lps)
    ncol, nrow, nslice = (int(n) for n in geometry["source_shape"])
    stack = np.zeros((nslice, nrow, ncol), dtype=np.int32)
    names = {int(roi.ROINumber): str(getattr(roi, "ROIName", "") or f"ROI {roi.ROINumber}")
             for roi in getattr(ds, "StructureSetROISequence", [])}
    for roi in getattr(ds, "ROIContourSequence", []):
        label = int(roi.ReferencedROINumber)
        inside: dict[int, np.ndarray] = {}  # slice -> filled area (nested contours are holes: XOR)
        for contour in getattr(roi, "ContourSequence", []):
            if str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")) not in ("CLOSED_PLANAR", ""):
                continue
            xyz = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            ijk = (to_index @ np.c_[xyz, np.ones(len(xyz))].T)[:3].T  # column, row, slice (fractional)
            k = np.round(ijk[:, 2])
            if np.any(np.abs(ijk[:, 2] - k) > 0.25) or len(set(k)) != 1:
                warnings.warn(f"ROI {label}: a contour does not lie on one slice of the series; skipped",
                              stacklevel=2)
                continue
            z = int(k[0])
            if not 0 <= z < nslice:
                continue
            rr, cc = polygon(ijk[:, 1], ijk[:, 0], shape=(nrow, ncol))
            area = np.zeros((nrow, ncol), dtype=bool)
            area[rr, cc] = True
            inside[z] = inside[z] ^ area if z in inside else area
        for z, area in inside.items():
            stack[z][area] = label
    name = str(getattr(ds, "StructureSetLabel", "") or "") or path.stem
    return _labels_layer(stack, geometry, names, name, path)


def read_dicom_labels(path: PathLike, series: Any = None) -> list[LayerData]:
    """npe2-style reader for one DICOM SEG or RTSTRUCT file: ``[(labels, kwargs, "labels")]``."""
    kind = dicom_kind(path)
    if kind == "SEG":
        return [read_dicom_seg(path, series)]
    if kind == "RTSTRUCT":
        return [read_rtstruct(path, series)]
    raise ValueError(f"{path} is neither a DICOM SEG nor an RTSTRUCT (modality {kind})")
