"""Recognise a dataset folder's layout and open it as the matching dataset."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .folder import FolderPairDataset
from .nifti import BCV_ORGANS, CT_WINDOW, NIFTI_EXTENSIONS, NiftiSliceDataset, read_label_names
from .reading import IMAGE_EXTENSIONS, MaskMode
from .sample import DatasetError, SampleDataset

# (image folder, mask folder, description); folder names match case-insensitively
LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("images", "masks", "images/ + masks/ (Kvasir-SEG, Kvasir-Sessile)"),
    ("original", "ground truth", "Original/ + Ground Truth/ (CVC-ClinicDB)"),
    ("original", "groundtruth", "Original/ + GroundTruth/ (CVC-ClinicDB)"),
    ("img", "label", "img/ + label/ with .nii.gz (BCV / Synapse)"),
    ("imagestr", "labelstr", "imagesTr/ + labelsTr/ with .nii.gz (MSD, nnU-Net, AMOS)"),
)


@dataclass(frozen=True)
class Layout:
    """What ``detect_layout`` found: the kind of data and its two folders."""

    kind: Literal["folder", "nifti"]
    image_dir: Path
    mask_dir: Path
    description: str


def _accepted() -> str:
    return "; ".join(d for _i, _m, d in LAYOUTS)


def _count(directory: Path, suffixes: Iterable[str]) -> int:
    suffixes = tuple(suffixes)
    names = (p.name for p in directory.iterdir() if not p.name.startswith("."))
    return sum(1 for name in names if name.lower().endswith(suffixes))


def detect_layout(path: str | Path) -> Layout:
    """Find which accepted layout ``path`` uses; raise DatasetError naming the accepted ones if none."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder (or does not exist). Accepted layouts: {_accepted()}.")
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    found = []
    for image_name, mask_name, description in LAYOUTS:
        if image_name in children and mask_name in children:
            image_dir, mask_dir = children[image_name], children[mask_name]
            n_nifti, n_2d = _count(image_dir, NIFTI_EXTENSIONS), _count(image_dir, IMAGE_EXTENSIONS)
            kind = "nifti" if n_nifti > n_2d else "folder"
            found.append(Layout(kind, image_dir, mask_dir, description))
    if not found:
        raise DatasetError(
            f"no known dataset layout in {root} (sub-folders: {sorted(p.name for p in children.values())}). "
            f"Accepted layouts: {_accepted()}."
        )
    if len(found) > 1:
        raise DatasetError(
            f"{root} matches several layouts ({'; '.join(f.description for f in found)}): "
            "point to a folder holding only one of them."
        )
    return found[0]


def build_dataset(
    path: str | Path,
    *,
    min_area: int | None = None,
    mask_mode: MaskMode = "auto",
    mask_suffix: str = "",
    window: tuple[float, float] = CT_WINDOW,
    organs: Iterable[int] | None = None,
    label_names: Mapping[int, str] | None = None,
    cache_size: int = 2,
) -> SampleDataset:
    """The dataset in ``path`` for its layout, without any check (bad files are in ``problems``).

    2-D folders (``FolderPairDataset``) use ``min_area`` (default 16 px), ``mask_mode`` and
    ``mask_suffix``; NIfTI folders (``NiftiSliceDataset``) use ``window``, ``organs``, ``label_names``
    (default: BCV names for img/label, ``dataset.json`` names for imagesTr/labelsTr) and ``min_area``
    (default 1 px).
    """
    layout = detect_layout(path)
    root = Path(path)
    if layout.kind == "folder":
        dataset: SampleDataset = FolderPairDataset(
            layout.image_dir,
            layout.mask_dir,
            min_area=16 if min_area is None else min_area,
            mask_mode=mask_mode,
            mask_suffix=mask_suffix,
            cache_size=cache_size,
            root=root,
        )
    else:
        if label_names is None:
            is_bcv = layout.image_dir.name.lower() == "img"
            label_names = BCV_ORGANS if is_bcv else read_label_names(root / "dataset.json")
        dataset = NiftiSliceDataset(
            layout.image_dir,
            layout.mask_dir,
            window=window,
            organs=organs,
            label_names=label_names,
            min_area=1 if min_area is None else min_area,
            cache_size=cache_size,
            root=root,
        )
    return dataset


def open_dataset(path: str | Path, *, validate: bool = True, deep: bool = True, **options) -> SampleDataset:
    """Open the dataset in ``path`` whatever its accepted layout, checking it first by default.

    ``options`` are those of ``build_dataset`` (min_area, mask_mode, mask_suffix, window, organs,
    label_names, cache_size). With ``validate`` every problem is reported in one ``DatasetError``
    (``deep`` also reads every image, one pass over the data); without it bad files are skipped and
    listed in ``dataset.problems``.
    """
    dataset = build_dataset(path, **options)
    root = Path(path)
    if validate:
        from .validation import validate_dataset

        validate_dataset(dataset, deep=deep)
    elif len(dataset) == 0:
        raise DatasetError(
            f"no usable sample in {root} ({len(dataset.problems)} problem(s) skipped); "
            "open it with validate=True to see why",
            dataset.problems,
        )
    return dataset
