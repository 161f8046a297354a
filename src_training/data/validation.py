"""Check a whole dataset before training and report every bad file in one error."""

from __future__ import annotations

from pathlib import Path

from .sample import DatasetError, SampleDataset


def validate_dataset(
    dataset: str | Path | SampleDataset, *, deep: bool = True, **open_kwargs
) -> SampleDataset:
    """Return the dataset if it is usable, else raise one ``DatasetError`` listing every problem.

    Problems: names that do not pair (image without mask, mask without image), unreadable or corrupt
    files, empty masks, image / mask shape mismatches, and a dataset with no sample at all. With
    ``deep`` (default) every image is read in full, which finds truncated files; that takes one pass
    over the data. A path is opened with ``build_dataset(path, **open_kwargs)``.
    """
    if not isinstance(dataset, SampleDataset):
        from .layout import build_dataset

        dataset = build_dataset(dataset, **open_kwargs)
    problems = list(dataset.problems) + (dataset.check_files() if deep else [])
    if problems:
        raise DatasetError.from_problems(problems, dataset.root)
    if len(dataset) == 0:
        raise DatasetError(f"no sample in {dataset.root}: check the organ ids or min_area")
    return dataset
