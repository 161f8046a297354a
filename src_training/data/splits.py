"""Train / validation / test splits by case (source image or volume), never by sample.

Either a seeded random split with given fractions (the paper's 60/20/20), or list files with one case
name per line (``train.txt``, ``val.txt``, ``test.txt``). Blank lines and ``#`` comments are ignored;
a line may carry a folder and an extension (``images/abc.png`` means case ``abc``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .nifti import NIFTI_EXTENSIONS
from .pairing import strip_suffix
from .reading import IMAGE_EXTENSIONS
from .sample import DatasetError, Sample, SampleDataset

SPLIT_NAMES = ("train", "val", "test")


class SampleSubset:
    """Some samples of a dataset, by index; behaves like the dataset (``len``, ``[i]``, ``case_ids``)."""

    def __init__(self, dataset: SampleDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, [int(i) for i in indices]
        self.root = dataset.root

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset[self.indices[index]]

    def __iter__(self) -> Iterator[Sample]:
        for i in self.indices:
            yield self.dataset[i]

    def __repr__(self) -> str:
        return f"SampleSubset({len(self.cases())} cases, {len(self)} samples of {self.dataset!r})"

    @property
    def case_ids(self) -> list[str]:
        all_ids = self.dataset.case_ids
        return [all_ids[i] for i in self.indices]

    def cases(self) -> list[str]:
        return sorted(set(self.case_ids))

    def indices_by_case(self) -> dict[str, list[int]]:
        """Positions in this subset grouped by case."""
        groups: dict[str, list[int]] = {}
        for i, case in enumerate(self.case_ids):
            groups.setdefault(case, []).append(i)
        return groups


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Cases per split: largest remainders, and at least one for every positive fraction when n allows."""
    counts = [math.floor(f * n) for f in fractions]
    remainders = sorted(range(len(fractions)), key=lambda i: (-(fractions[i] * n - counts[i]), i))
    for i in remainders[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0 and max(counts) > 1:
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    return counts


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    valid = len(fractions) == len(SPLIT_NAMES) and min(fractions) >= 0 and math.isclose(sum(fractions), 1)
    if not valid:
        raise ValueError(f"fractions must be 3 numbers >= 0 (train, val, test) summing to 1, got {fractions}")
    return fractions


def random_case_split(cases: Sequence[str], seed: int, fractions: Sequence[float]) -> dict[str, list[str]]:
    """Shuffle the sorted case names with ``seed`` and cut them by ``fractions``."""
    fractions = _check_fractions(fractions)
    order = sorted(set(cases))
    perm = np.random.default_rng(seed).permutation(len(order))
    shuffled = [order[i] for i in perm]
    out, start = {}, 0
    for name, count in zip(SPLIT_NAMES, split_counts(len(order), fractions)):
        out[name] = shuffled[start : start + count]
        start += count
    return out


def _case_name(line: str) -> str:
    name = Path(line.strip()).name
    return strip_suffix(name, (*NIFTI_EXTENSIONS, *IMAGE_EXTENSIONS)) or name


def read_list_file(path: str | Path) -> list[str]:
    """The case names in a list file (one per line; blank lines and ``#`` comments skipped)."""
    lines = Path(path).read_text().splitlines()
    return [_case_name(line) for line in lines if line.strip() and not line.strip().startswith("#")]


def find_list_files(folder: str | Path) -> dict[str, Path]:
    """``train.txt`` / ``val.txt`` / ``test.txt`` present in ``folder``."""
    folder = Path(folder)
    return {name: folder / f"{name}.txt" for name in SPLIT_NAMES if (folder / f"{name}.txt").is_file()}


def list_case_split(lists: Mapping[str, str | Path], known_cases: Sequence[str]) -> dict[str, list[str]]:
    """Case names per split from list files; unknown names and names in two lists are errors."""
    known = set(known_cases)
    out: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    seen: dict[str, str] = {}
    errors = []
    for split, path in lists.items():
        if split not in SPLIT_NAMES:
            raise ValueError(f"split names are {SPLIT_NAMES}, got {split!r}")
        try:
            names = read_list_file(path)
        except OSError as exc:
            raise DatasetError(f"cannot read split list {path}: {exc}") from exc
        for name in names:
            if name not in known:
                errors.append(f"{path}: {name!r} is not a case of the dataset")
            elif name in seen and seen[name] != split:
                errors.append(f"{path}: {name!r} is also in the {seen[name]} list")
            elif name not in seen:
                seen[name] = split
                out[split].append(name)
    if errors:
        examples = ", ".join(sorted(known)[:3])
        raise DatasetError(
            f"{len(errors)} problem(s) in the split lists:\n  - "
            + "\n  - ".join(errors)
            + f"\nCase names are image / volume file names without extension (e.g. {examples})."
        )
    return out


def split_dataset(
    dataset: SampleDataset,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    lists: Mapping[str, str | Path] | str | Path | None = None,
) -> dict[str, SampleSubset]:
    """Split ``dataset`` into {"train", "val", "test"} subsets by case.

    ``lists``: None looks for train.txt / val.txt / test.txt in the dataset's root folder and uses
    them when present, else makes a seeded random split by ``fractions``; a folder means the list files
    in it; a mapping gives {split name: list file}. With list files, cases listed nowhere are left out.
    The random split depends only on the sorted case names and the seed, not on file-system order.
    """
    lists_found: Mapping[str, Any]
    if lists is None:
        lists_found = find_list_files(dataset.root)
    elif isinstance(lists, str | Path):
        lists_found = find_list_files(lists)
        if not lists_found:
            raise DatasetError(f"no train.txt, val.txt or test.txt in {lists}")
    else:
        lists_found = lists
    cases = dataset.case_ids
    if lists_found:
        by_split = list_case_split(lists_found, cases)
    else:
        by_split = random_case_split(cases, seed, fractions)
    split_of = {case: split for split, names in by_split.items() for case in names}
    indices: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for i, case in enumerate(cases):
        if case in split_of:
            indices[split_of[case]].append(i)
    return {name: SampleSubset(dataset, indices[name]) for name in SPLIT_NAMES}
