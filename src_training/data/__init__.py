"""Datasets for training and evaluation: 2-D folder pairs and sliced NIfTI CT volumes.

Pure numpy (no Qt, no napari, no torch). Typical use::

    ds = open_dataset("Kvasir-SEG")             # detects the layout, checks every file first
    splits = split_dataset(ds, seed=0)          # {"train", "val", "test"}, by source image
    s = splits["train"][0]                      # Sample(image, mask, source, case_id, spacing, ...)
    box = box_from_mask(s.mask, jitter=20, rng=np.random.default_rng(0))
"""

from .boxes import box_from_mask, jitter_box, mask_to_box
from .folder import FolderPairDataset
from .layout import LAYOUTS, Layout, build_dataset, detect_layout, open_dataset
from .nifti import BCV_ORGANS, CT_WINDOW, NiftiSliceDataset, read_label_names
from .reading import read_image, read_mask
from .sample import DatasetError, Problem, Sample, SampleDataset
from .splits import SampleSubset, random_case_split, read_list_file, split_dataset
from .validation import validate_dataset

__all__ = [
    "BCV_ORGANS",
    "CT_WINDOW",
    "LAYOUTS",
    "DatasetError",
    "FolderPairDataset",
    "Layout",
    "NiftiSliceDataset",
    "Problem",
    "Sample",
    "SampleDataset",
    "SampleSubset",
    "box_from_mask",
    "build_dataset",
    "detect_layout",
    "jitter_box",
    "mask_to_box",
    "open_dataset",
    "random_case_split",
    "read_image",
    "read_label_names",
    "read_list_file",
    "read_mask",
    "split_dataset",
    "validate_dataset",
]
