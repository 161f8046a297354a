"""napari sample data: real images shipped inside installed packages, and a synthetic CT phantom.

Nothing is downloaded: every file below is part of the installed wheel of its package.

============  =====================================  ===========================  ==========================
sample        file (package)                         modality                     source and licence
============  =====================================  ===========================  ==========================
retina        ``skimage/data/retina.jpg``            colour fundus photograph,    Wikimedia Commons "Fundus
              (scikit-image)                         1411x1411 RGB                photograph of normal left
                                                                                  eye" (M. Haggstrom), CC0 1.0
                                                                                  public-domain dedication
ct_slice      ``pydicom/data/test_files/             CT slice, 128x128, HU after  NEMA WG04 ``CT1_UNC``
              CT_small.dcm`` (pydicom)               rescale, 0.66 mm pixels      downsized by pydicom; its
                                                                                  README: "no restriction on
                                                                                  using any of these files";
                                                                                  pydicom is MIT
mri_volume    ``nibabel/tests/data/anatomical.nii``  T1 MRI of a head, SPM        nibabel test data, shipped
              (nibabel)                              normalised, 33x41x25, 2 mm   under nibabel's MIT licence
                                                                                  (no separate licence listed)
ct_phantom    generated (:mod:`~napari_imedsam.      synthetic abdominal CT, HU   this project
              engine.phantom`)
============  =====================================  ===========================  ==========================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]


def retina() -> list[LayerData]:
    """A real colour fundus photograph (2-D RGB) from scikit-image's shipped data."""
    from skimage import data

    image = data.retina()
    meta = {"source": "scikit-image data/retina.jpg", "licence": "CC0 1.0 (Wikimedia Commons)"}
    return [(image, {"name": "retina", "rgb": True, "metadata": meta}, "image")]


def ct_slice() -> list[LayerData]:
    """A real CT slice in HU from pydicom's test files (read with the plugin's DICOM reader)."""
    from pydicom.data import get_testdata_file

    from napari_imedsam.io.dicom import load_dicom
    from napari_imedsam.io.reader import volume_to_layer_data

    path = get_testdata_file("CT_small.dcm", download=False)
    if path is None:
        raise FileNotFoundError("pydicom's CT_small.dcm test file is missing from this pydicom install.")
    data, kwargs, kind = volume_to_layer_data(load_dicom([path]))  # this file only, not its folder
    kwargs["name"] = "CT slice"
    return [(data, kwargs, kind)]


def nibabel_anatomical_path() -> Path:
    import nibabel

    path = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not path.is_file():
        raise FileNotFoundError(f"nibabel's test image {path} is missing (a packaging that strips tests?).")
    return path


def mri_volume() -> list[LayerData]:
    """A real T1 MRI volume (3-D) from nibabel's test data, read with the plugin's NIfTI reader."""
    from napari_imedsam.io.reader import volume_to_layer_data
    from napari_imedsam.io.volumes import load_nifti

    data, kwargs, kind = volume_to_layer_data(load_nifti(nibabel_anatomical_path()))
    kwargs["name"] = "MRI volume"
    return [(data, kwargs, kind)]


def ct_phantom() -> list[LayerData]:
    """A synthetic abdominal CT volume in HU (the ground truth comes from ``make_ct_phantom``)."""
    from napari_imedsam.io.volumes import CT_WINDOW, make_metadata
    from napari_imedsam.samples.phantom import make_ct_phantom

    hu, _labels, spacing = make_ct_phantom()
    meta = make_metadata(hu.shape, spacing)
    meta.update(is_hu=True, modality="CT", source_format="phantom")
    kwargs = {"name": "CT phantom", "scale": spacing, "contrast_limits": list(CT_WINDOW),
              "colormap": "gray", "metadata": meta}
    return [(np.asarray(hu), kwargs, "image")]
