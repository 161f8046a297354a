"""npe2 reader: NIfTI (*.nii, *.nii.gz) and DICOM (*.dcm, a series folder) as napari image layers.

The image keeps its physical voxel size as the layer ``scale`` (mm) and the geometry needed to write
labels back onto the original grid in ``metadata`` (see :mod:`napari_imedsam.io.volumes`).

Every file that cannot be read raises one error type, :class:`ReaderError` (a ``ValueError``) whose
message names the file and what is wrong with it; a path that does not exist is a ``FileNotFoundError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_imedsam.io.dicom import is_dicom_file, load_dicom
from napari_imedsam.io.volumes import ReaderError, Volume, default_contrast_limits, is_nifti_path, load_nifti

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]


def volume_to_layer_data(volume: Volume) -> LayerData:
    """A napari ``(data, kwargs, "image")`` tuple for a loaded volume."""
    kwargs: dict[str, Any] = {
        "name": volume.name,
        "scale": tuple(float(s) for s in volume.spacing),
        "metadata": dict(volume.metadata),
    }
    if volume.rgb:
        kwargs["rgb"] = True
    else:
        is_hu = bool(volume.metadata.get("is_hu", False))
        kwargs["contrast_limits"] = list(default_contrast_limits(volume.data, is_hu))
        kwargs["colormap"] = "gray"
    return (volume.data, kwargs, "image")


def _has_dicom(folder: Path) -> bool:
    try:
        return any(p.is_file() and is_dicom_file(p) for p in folder.iterdir())
    except OSError:
        return False


def get_reader(path: str | os.PathLike | Sequence[str | os.PathLike]) -> ReaderFunction | None:
    """Return a reader for a NIfTI file, a DICOM file or folder, or a list of DICOM files; else None."""
    if isinstance(path, (list, tuple)):
        if len(path) == 1:
            return get_reader(path[0])
        files = [Path(p) for p in path]
        if files and all(p.is_file() and is_dicom_file(p) for p in files):
            return _dicom_list_reader
        return None
    p = Path(path)
    if is_nifti_path(p):
        return _nifti_reader if p.is_file() else None
    if p.is_dir():
        return _dicom_reader if _has_dicom(p) else None
    if p.is_file() and is_dicom_file(p):  # *.dcm, or an extension-less DICOM file picked explicitly
        from napari_imedsam.io.dicom_seg import dicom_kind, read_dicom_labels

        # a SEG or RTSTRUCT opens as labels on its series' grid
        return read_dicom_labels if dicom_kind(p) in ("SEG", "RTSTRUCT") else _dicom_reader
    return None


def _as_reader_error(path, load: Callable[[], Volume]) -> list[LayerData]:
    """Run a loader; anything it raises other than ReaderError / FileNotFoundError becomes a ReaderError."""
    try:
        return [volume_to_layer_data(load())]
    except (ReaderError, FileNotFoundError):
        raise
    except MemoryError as exc:
        raise ReaderError(f"Not enough memory to open {path}.", path) from exc
    except Exception as exc:  # noqa: BLE001 - one error type for every unreadable file
        raise ReaderError(f"Cannot read {path}: {type(exc).__name__}: {exc}", path) from exc


def _nifti_reader(path: str | os.PathLike) -> list[LayerData]:
    return _as_reader_error(path, lambda: load_nifti(path))


def _dicom_reader(path: str | os.PathLike) -> list[LayerData]:
    return _as_reader_error(path, lambda: load_dicom(path))


def _dicom_list_reader(paths: Sequence[str | os.PathLike]) -> list[LayerData]:
    return _as_reader_error(paths[0] if paths else paths, lambda: load_dicom(list(paths)))


def read_image(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LayerData]:
    """Read ``path`` with the plugin's reader or raise a :class:`ReaderError` saying why it cannot."""
    if isinstance(path, (str, os.PathLike)) and not Path(path).exists():
        raise FileNotFoundError(f"No such file or folder: {path}")
    reader = get_reader(path)
    if reader is None:
        raise ReaderError(f"{path} is not a NIfTI file (*.nii, *.nii.gz), a DICOM file or a DICOM folder.", path)
    return reader(path)
