"""Reading NIfTI/DICOM images (HU, physical spacing, orientation kept) and exporting label images.
The bottom layer beside model: file formats only; imports nothing else of the project."""

from napari_imedsam.io.dicom import load_dicom
from napari_imedsam.io.export import export_tiff, upsample_labels, write_labels_nifti, write_labels_tiff
from napari_imedsam.io.reader import get_reader, read_image
from napari_imedsam.io.volumes import Volume, load_nifti, load_volume, make_metadata

__all__ = [
    "Volume",
    "export_tiff",
    "get_reader",
    "load_dicom",
    "load_nifti",
    "load_volume",
    "make_metadata",
    "read_image",
    "upsample_labels",
    "write_labels_nifti",
    "write_labels_tiff",
]
