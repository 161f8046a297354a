"""3-D CT volumes in NIfTI, sliced into 2-D samples: one per (axial slice, organ id).

Layouts: BCV / Synapse ``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz`` and MSD / nnU-Net
``imagesTr/`` + ``labelsTr/`` (image names may carry nnU-Net's ``_0000`` channel suffix). Names pair
after dropping an ``img`` / ``image`` / ``label`` / ``seg`` prefix and the ``_0000`` suffix.

Orientation: both volumes are brought to nibabel's closest canonical (RAS+) orientation with
``nib.as_closest_canonical``; slices are taken along the last array axis (inferior -> superior) and
shown like DICOM / radiological viewers do: rows run anterior -> posterior and columns run from the
patient's right to left (``canonical[:, :, z].T[::-1, ::-1]``). ``spacing`` is (sy, sx) in mm from
the header zooms of the canonical image. Intensities are clipped to the CT window (default
[-125, 275] HU, as in the paper) and rescaled to [0, 1].
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from .pairing import pair_files, strip_suffix
from .sample import DatasetError, LRUCache, Problem, Sample, SampleDataset

BCV_ORGANS: dict[int, str] = {
    1: "spleen",
    2: "right kidney",
    3: "left kidney",
    4: "gallbladder",
    5: "esophagus",
    6: "liver",
    7: "stomach",
    8: "aorta",
    9: "inferior vena cava",
    10: "portal vein and splenic vein",
    11: "pancreas",
    12: "right adrenal gland",
    13: "left adrenal gland",
}
CT_WINDOW = (-125.0, 275.0)
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_PREFIX = re.compile(r"^(images?|img|labels?|segs?|masks?)(?=.)", re.IGNORECASE)


def case_key(stem: str) -> str:
    """The name images and labels pair on: no img/label-like prefix, no nnU-Net ``_0000`` suffix."""
    return _PREFIX.sub("", re.sub(r"_0000$", "", stem))


def read_label_names(dataset_json: str | Path) -> dict[int, str] | None:
    """Label names from an MSD ({"1": "liver"}) or nnU-Net v2 ({"liver": 1}) ``dataset.json``."""
    try:
        labels = json.loads(Path(dataset_json).read_text()).get("labels")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(labels, dict):
        return None
    names: dict[int, str] = {}
    for k, v in labels.items():
        if isinstance(v, str) and str(k).lstrip("-").isdigit():
            names[int(k)] = v
        elif isinstance(v, int) and not isinstance(v, bool):
            names[v] = str(k)
    names.pop(0, None)
    return names or None


def to_display(slice_ras: np.ndarray) -> np.ndarray:
    """A canonical (x, y) slice as rows = anterior -> posterior, columns = patient right -> left."""
    return np.ascontiguousarray(slice_ras.T[::-1, ::-1])


def apply_window(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to [lo, hi] and rescale to [0, 1] (float32)."""
    lo, hi = window
    out = (volume.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _canonical(path: Path) -> nib.spatialimages.SpatialImage:
    img = nib.funcs.squeeze_image(nib.load(path))
    if len(img.shape) != 3:
        raise ValueError(f"expected a 3-D volume, got shape {img.shape}")
    return nib.as_closest_canonical(img)


def _canonical_geometry(path: Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and voxel size after canonical reorientation, from the header only (no voxel read)."""
    img = nib.load(path)
    shape, zooms = img.shape[:3], img.header.get_zooms()[:3]
    if len(img.shape) < 3 or any(n != 1 for n in img.shape[3:]):
        raise ValueError(f"expected a 3-D volume, got shape {img.shape}")
    ornt = nib.orientations.io_orientation(img.affine)
    out_shape, out_zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis, (target, _flip) in enumerate(ornt):
        # headers store float32: round so that 0.7 reads 0.7 in logs, not 0.699999988
        out_shape[int(target)], out_zooms[int(target)] = int(shape[axis]), round(float(zooms[axis]), 6)
    return tuple(out_shape), tuple(out_zooms)


def read_labels(path: Path) -> np.ndarray:
    """The label volume in canonical orientation as int32."""
    data = np.asanyarray(_canonical(path).dataobj)
    if data.dtype.kind == "f":
        data = np.rint(data)
    return data.astype(np.int32, copy=False)


def read_volume(path: Path, window: tuple[float, float]) -> np.ndarray:
    """The CT volume in canonical orientation, windowed to [0, 1] float32."""
    data = _canonical(path).get_fdata(dtype=np.float32)
    if not np.isfinite(data).all():
        raise ValueError("volume contains NaN or infinite values")
    return apply_window(data, window)


class NiftiSliceDataset(SampleDataset):
    """One sample per (axial slice, organ id) of every labelled CT volume; empty slices are skipped.

    Indexing reads every label volume once; CT volumes are read on access and the last
    ``cache_size`` (windowed image, labels) pairs are kept, so iterate volume by volume
    (``indices_by_case``) when memory or disk speed matter.
    """

    def __init__(
        self,
        image_dir: str | Path,
        label_dir: str | Path,
        *,
        window: tuple[float, float] = CT_WINDOW,
        organs: Iterable[int] | None = None,
        label_names: Mapping[int, str] | None = BCV_ORGANS,
        min_area: int = 1,
        cache_size: int = 2,
        root: str | Path | None = None,
    ) -> None:
        self.image_dir, self.label_dir = Path(image_dir), Path(label_dir)
        self.root = Path(root) if root is not None else self.image_dir.parent
        lo, hi = (float(v) for v in window)
        if not hi > lo:
            raise ValueError(f"window must be (low, high) with low < high, got {window}")
        self.window = (lo, hi)
        self.organs = None if organs is None else frozenset(int(o) for o in organs)
        self.label_names = dict(label_names or {})
        self.min_area = int(min_area)
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise DatasetError(f"{d} is not a folder")
        self.pairs, self.problems = pair_files(
            self.image_dir, self.label_dir, NIFTI_EXTENSIONS, case_key, case_key, ("image", "label")
        )
        self._spacing: dict[int, tuple[float, float]] = {}
        self._bad_images: set[int] = set()
        self._index: list[tuple[int, int, int]] = []  # (pair, z, label id)
        self._case_ids = []
        for i, pair in enumerate(self.pairs):
            entries = self._index_pair(i, *pair)
            self._index += entries
            self._case_ids += [self._case_id(i)] * len(entries)
        self._cache = LRUCache(cache_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self.pairs)} volumes, {len(self)} slices)"

    def _case_id(self, pair: int) -> str:
        """The image file name without extension, e.g. ``img0001``."""
        return strip_suffix(self.pairs[pair][1].name, NIFTI_EXTENSIONS) or self.pairs[pair][1].name

    def _index_pair(self, i: int, _key: str, image: Path, label: Path) -> list[tuple[int, int, int]]:
        try:
            shape, zooms = _canonical_geometry(image)
        except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
            reason = f"cannot read image header ({type(exc).__name__}: {exc})"
            self.problems.append(Problem(str(image), reason))
            self._bad_images.add(i)
            shape = None
        try:
            labels = read_labels(label)
        except Exception as exc:  # noqa: BLE001
            self.problems.append(Problem(str(label), f"cannot read label ({type(exc).__name__}: {exc})"))
            return []
        if shape is None:
            return []
        if labels.shape != shape:
            reason = f"shape mismatch: image is {shape} but label {label.name} is {labels.shape} (RAS order)"
            self.problems.append(Problem(str(image), reason))
            return []
        if labels.min() < 0:
            self.problems.append(Problem(str(label), "negative label values"))
            return []
        if not labels.any():
            self.problems.append(Problem(str(label), "empty label volume: no foreground voxel"))
            return []
        self._spacing[i] = (zooms[1], zooms[0])  # display rows follow y, columns follow x
        n_ids = int(labels.max()) + 1
        entries = []
        for z in range(labels.shape[2]):
            areas = np.bincount(labels[:, :, z].ravel(), minlength=n_ids)
            for organ in np.flatnonzero(areas[1:] >= max(self.min_area, 1)) + 1:
                if self.organs is None or int(organ) in self.organs:
                    entries.append((i, z, int(organ)))
        return entries

    def _read_pair(self, pair: int) -> tuple[np.ndarray, np.ndarray]:
        _key, image_path, label_path = self.pairs[pair]
        return read_volume(image_path, self.window), read_labels(label_path)

    def _load(self, index: int) -> Sample:
        pair, z, organ = self._index[index]
        volume, labels = self._cache.get(pair, lambda: self._read_pair(pair))
        if volume.shape != labels.shape:
            raise DatasetError(f"{self.pairs[pair][1]} is {volume.shape} but its label is {labels.shape}")
        return Sample(
            image=to_display(volume[:, :, z]),
            mask=to_display(labels[:, :, z] == organ),
            source=f"{self.pairs[pair][1]}:z={z}:label={organ}",
            case_id=self._case_id(pair),
            spacing=self._spacing[pair],
            label_id=organ,
            label_name=self.label_names.get(organ),
        )

    def check_files(self) -> list[Problem]:
        """Read every CT volume in full: truncated or corrupt files and non-finite values show up here."""
        problems = []
        for i, (_key, image_path, _label) in enumerate(self.pairs):
            if i in self._bad_images:
                continue  # already reported while indexing
            try:
                read_volume(image_path, self.window)
            except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
                problems.append(Problem(str(image_path), f"cannot read image ({type(exc).__name__}: {exc})"))
        return problems
