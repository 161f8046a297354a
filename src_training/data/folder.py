"""2-D datasets stored as two folders of files with matching stems.

Kvasir-SEG / Kvasir-Sessile use ``images/`` + ``masks/``; CVC-ClinicDB uses ``Original/`` +
``Ground Truth/``. Any of png, jpg, jpeg, tif, tiff, bmp on either side. Each mask yields one sample per
object (see :mod:`.reading` for how masks become objects); objects smaller than ``min_area`` pixels
are ignored as annotation noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .pairing import pair_files
from .reading import IMAGE_EXTENSIONS, JPEG_EXTENSIONS, MaskMode, mask_objects, read_image, read_mask
from .sample import DatasetError, LRUCache, Problem, Sample, SampleDataset


class FolderPairDataset(SampleDataset):
    """One sample per object of every mask in ``mask_dir`` paired with the same stem in ``image_dir``.

    Indexing reads every mask once (to know which objects exist); images are read on access. Files
    that cannot be used are left out and listed in ``problems`` (see ``validate_dataset``).
    """

    def __init__(
        self,
        image_dir: str | Path,
        mask_dir: str | Path,
        *,
        min_area: int = 16,
        mask_mode: MaskMode = "auto",
        mask_suffix: str = "",
        cache_size: int = 2,
        root: str | Path | None = None,
    ) -> None:
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)
        self.root = Path(root) if root is not None else self.image_dir.parent
        self.min_area, self.mask_mode = int(min_area), mask_mode
        for d in (self.image_dir, self.mask_dir):
            if not d.is_dir():
                raise DatasetError(f"{d} is not a folder")

        def mask_key(stem: str) -> str:
            return stem[: -len(mask_suffix)] if mask_suffix and stem.endswith(mask_suffix) else stem

        pairs, self.problems = pair_files(self.image_dir, self.mask_dir, IMAGE_EXTENSIONS, str, mask_key)
        self.pairs: list[tuple[str, Path, Path]] = pairs
        self._mask_shapes: dict[int, tuple[int, int]] = {}
        self._modes: dict[int, str] = {}
        self._index: list[tuple[int, int]] = []  # (pair, object id)
        self._case_ids = []
        for i, (stem, _image, mask) in enumerate(pairs):
            try:
                objects = self._objects(mask)
            except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
                self.problems.append(Problem(str(mask), f"cannot read mask ({type(exc).__name__}: {exc})"))
                continue
            self._mask_shapes[i] = objects.labels.shape
            if objects.foreground_px == 0:
                self.problems.append(Problem(str(mask), "empty mask: no foreground pixel"))
                continue
            if not objects.ids:
                reason = f"no object of at least {self.min_area} px (largest has {objects.largest_px} px)"
                self.problems.append(Problem(str(mask), reason))
                continue
            self._modes[i] = objects.mode
            self._index += [(i, obj) for obj in objects.ids]
            self._case_ids += [stem] * len(objects.ids)
        self._cache = LRUCache(cache_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self.pairs)} pairs, {len(self)} objects)"

    def _objects(self, mask_path: Path):
        jpeg = mask_path.suffix.lower() in JPEG_EXTENSIONS
        return mask_objects(read_mask(mask_path), jpeg=jpeg, mode=self.mask_mode, min_area=self.min_area)

    def _read_pair(self, pair: int) -> tuple[np.ndarray, np.ndarray]:
        _stem, image_path, mask_path = self.pairs[pair]
        image = read_image(image_path)
        labels = self._objects(mask_path).labels
        if image.shape[:2] != labels.shape:
            raise DatasetError(
                f"{image_path} is {image.shape[:2]} but its mask {mask_path} is {labels.shape}; "
                "run validate_dataset to list every such file"
            )
        return image, labels

    def _load(self, index: int) -> Sample:
        pair, obj = self._index[index]
        stem, image_path, _mask = self.pairs[pair]
        image, labels = self._cache.get(pair, lambda: self._read_pair(pair))
        instance = self._modes[pair] == "instance"
        return Sample(
            image=image.copy(),  # the cached array stays untouched whatever the caller does
            mask=labels == obj,
            source=f"{image_path}#{'id' if instance else 'object'}{obj}",
            case_id=stem,
            spacing=None,
            label_id=obj if instance else 1,
            label_name=None,
        )

    def check_files(self) -> list[Problem]:
        """Read every paired image: unreadable files, non-finite values, shape different from the mask."""
        problems = []
        for i, (_stem, image_path, mask_path) in enumerate(self.pairs):
            try:
                image = read_image(image_path)
            except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
                problems.append(Problem(str(image_path), f"cannot read image ({type(exc).__name__}: {exc})"))
                continue
            shape = self._mask_shapes.get(i)
            if shape is not None and image.shape[:2] != shape:
                reason = f"shape mismatch: image is {image.shape[:2]} but mask {mask_path.name} is {shape}"
                problems.append(Problem(str(image_path), reason))
        return problems
