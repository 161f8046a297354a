"""Pair image files with mask / label files by name, reporting everything that does not pair."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .sample import Problem


def strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """The file name without its (case-insensitive) extension, or None if it has none of ``suffixes``."""
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):  # ".nii.gz" before ".gz"-like suffixes
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def list_by_key(
    directory: Path, suffixes: Sequence[str], key: Callable[[str], str]
) -> tuple[dict[str, Path], set[str], list[Problem]]:
    """Files of ``directory`` with one of ``suffixes`` by key, ambiguous keys, and their problems.

    Hidden files are ignored. Files whose keys collide are reported and left out, since it is unclear
    which one is meant.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = strip_suffix(path.name, suffixes)
        if stem is None:
            continue
        found.setdefault(key(stem), []).append(path)
    files, ambiguous, problems = {}, set(), []
    for k, paths in found.items():
        if len(paths) == 1:
            files[k] = paths[0]
            continue
        ambiguous.add(k)
        names = ", ".join(p.name for p in paths)
        reason = f"several files share the name {k!r} ({names}); keep one"
        problems += [Problem(str(p), reason) for p in paths]
    return files, ambiguous, problems


def pair_files(
    image_dir: Path,
    mask_dir: Path,
    suffixes: Sequence[str],
    image_key: Callable[[str], str],
    mask_key: Callable[[str], str],
    what: tuple[str, str] = ("image", "mask"),
) -> tuple[list[tuple[str, Path, Path]], list[Problem]]:
    """(key, image, mask) for every name present on both sides, plus a problem for each unpaired file."""
    images, ambiguous_images, problems = list_by_key(image_dir, suffixes, image_key)
    masks, ambiguous_masks, mask_problems = list_by_key(mask_dir, suffixes, mask_key)
    problems += mask_problems
    for k in ambiguous_images:  # already reported: not also "without image" / "without mask"
        masks.pop(k, None)
    for k in ambiguous_masks:
        images.pop(k, None)
    if not images and not problems:
        problems.append(Problem(str(image_dir), f"no {what[0]} files ({', '.join(suffixes)}) in this folder"))
    pairs = [(k, images[k], masks[k]) for k in sorted(images) if k in masks]
    image, mask = what
    for k in sorted(set(images) - set(masks)):
        reason = f"{image} without {mask}: no {mask} named {k!r} in {mask_dir}"
        problems.append(Problem(str(images[k]), reason))
    for k in sorted(set(masks) - set(images)):
        reason = f"{mask} without {image}: no {image} named {k!r} in {image_dir}"
        problems.append(Problem(str(masks[k]), reason))
    return pairs, problems
