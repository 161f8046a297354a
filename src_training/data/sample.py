"""The record every dataset returns, the error raised for bad data, and the dataset base class.

Datasets here are plain indexable sequences of :class:`Sample` (``len`` and ``ds[i]``), with no torch
dependency, so the training loop decides how to batch, resize and augment them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, eq=False)
class Sample:
    """One object in one 2-D image: what the training loop and the evaluation consume.

    image: HxW or HxWx3 float32 in [0, 1], already windowed / normalised.
    mask: HxW bool, exactly one object (one connected component, instance id or organ).
    source: where it came from, for messages and logs (file path plus object id or slice and label).
    case_id: the image or volume the sample belongs to; splits never separate samples of one case.
    spacing: in-plane pixel size (sy, sx) in mm, or None when unknown (2-D photographs).
    label_id: class or instance id of the object (1 for objects of a binary mask).
    label_name: human-readable class name when known (e.g. "liver"), else None.
    """

    image: np.ndarray
    mask: np.ndarray
    source: str
    case_id: str
    spacing: tuple[float, float] | None = None
    label_id: int = 1
    label_name: str | None = None


@dataclass(frozen=True)
class Problem:
    """One offending file and why it cannot be used."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class DatasetError(ValueError):
    """A dataset cannot be used as it is; ``problems`` lists every offending file when known."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[Problem, ...] = tuple(problems)

    @classmethod
    def from_problems(cls, problems: Iterable[Problem], where: str | Path) -> DatasetError:
        """One error listing every problem, so that all bad files can be fixed in one go."""
        problems = list(problems)
        lines = [f"{len(problems)} problem(s) in the dataset at {where}:"]
        lines += [f"  - {p}" for p in problems]
        lines.append("Fix or remove these files, or open the dataset with validate=False to skip them.")
        return cls("\n".join(lines), problems)


class LRUCache:
    """A tiny least-recently-used cache owned by one dataset (no global state)."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"cache size must be >= 0, got {size}")
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key, load):
        """Return the cached value for ``key``, calling ``load()`` on a miss."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        if self.size > 0:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class SampleDataset(ABC):
    """Base class: an indexable sequence of samples plus the problems found while indexing.

    Subclasses fill ``self.root`` (the dataset folder, where split list files are looked for),
    ``self.problems`` (files skipped while indexing) and ``self._case_ids`` (one per sample).
    """

    root: Path
    problems: list[Problem]
    _case_ids: list[str]

    def __len__(self) -> int:
        return len(self._case_ids)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not isinstance(index, int | np.integer):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return self._load(int(index) % n)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self._load(i)

    @property
    def case_ids(self) -> list[str]:
        """The case (source image or volume) of every sample, without loading any pixel."""
        return list(self._case_ids)

    def cases(self) -> list[str]:
        """The distinct cases, sorted."""
        return sorted(set(self._case_ids))

    def indices_by_case(self) -> dict[str, list[int]]:
        """Sample indices grouped by case, in order: iterate case by case to read each file once."""
        groups: dict[str, list[int]] = {}
        for i, case in enumerate(self._case_ids):
            groups.setdefault(case, []).append(i)
        return groups

    def check_files(self) -> list[Problem]:
        """Read what indexing did not read (e.g. the images) and report problems; [] when fine."""
        return []

    @abstractmethod
    def _load(self, index: int) -> Sample:
        """Load sample ``index`` (0 <= index < len)."""
