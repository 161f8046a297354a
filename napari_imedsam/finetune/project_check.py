"""What opening a fine-tuning project folder checks and repairs (see ``finetune.project``): the manifest's
shape, each pair file (size, zip CRCs, metadata against its mask and image), uncommitted files of an
interrupted change, adapter files the manifest lacks. Bad files go to ``quarantine/``, never deleted.
Pure Python + numpy."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import time
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from .project_files import PairInfo, VersionInfo, remove_file, safetensors_metadata, tag_is_live

QUARANTINE = "quarantine"


def quarantine(root: Path, rel: str) -> str:
    """Move a bad file of the project to ``quarantine/`` (never deleted: the user may want it back)."""
    src = root / rel
    dest_dir = root / QUARANTINE
    dest_dir.mkdir(exist_ok=True)
    dest, n = dest_dir / src.name, 1
    while dest.exists():
        dest, n = dest_dir / f"{src.name}.{n}", n + 1
    os.replace(src, dest)
    return f"{QUARANTINE}/{dest.name}"


class BadFileError(ValueError):
    """A project file fails its integrity check; the message says what is wrong with it."""


def npz_headers(path: Path, members: tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Cheap integrity check of an ``.npz``: not empty, a complete zip whose CRCs match, holding ``members``.
    Returns each member's (shape, dtype) from its ``.npy`` header."""
    size = path.stat().st_size
    if size == 0:
        raise BadFileError("the file is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise BadFileError(f"its member {bad} fails the CRC check (the file is corrupt)")
            out = {}
            names = set(zf.namelist())
            for m in members:
                if f"{m}.npy" not in names:
                    raise BadFileError(f"it lacks the array '{m}' (holds {sorted(names)})")
                with zf.open(f"{m}.npy") as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _fortran, dtype = read(fh)
                out[m] = (tuple(int(v) for v in shape), np.dtype(dtype))
            return out
    except BadFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error) as exc:
        raise BadFileError(f"it is not a complete .npz file ({type(exc).__name__}: {exc}); "
                           f"{size} bytes, probably cut short") from exc


def check_pair_file(root: Path, rel: str, images: dict[str, object]) -> PairInfo:
    """The pair stored in ``root/rel`` after checking it cheaply: the zip's CRCs, its metadata, and that the
    metadata agrees with its mask (shape, area, box) and with its image (present, intact, same size).
    ``images`` caches image checks (image file -> shape or the BadFileError). Raises BadFileError."""
    path = root / rel
    heads = npz_headers(path, ("mask", "meta"))
    try:
        with np.load(path, allow_pickle=False) as z:
            info = PairInfo.from_json(json.loads(str(z["meta"])))
            packed = z["mask"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadFileError(f"its metadata cannot be read ({type(exc).__name__}: {exc})") from exc
    info = replace(info, file=rel)
    h, w = info.shape if len(info.shape) == 2 else (0, 0)
    if h < 1 or w < 1:
        raise BadFileError(f"its metadata gives the impossible mask shape {info.shape}")
    if heads["mask"][1] != np.uint8 or heads["mask"][0] != (math.ceil(h * w / 8),):
        raise BadFileError(f"its mask array ({heads['mask'][0]}, {heads['mask'][1]}) does not hold the "
                           f"{h}x{w} mask its metadata describes")
    mask = np.unpackbits(packed, count=h * w).reshape(h, w).astype(bool)
    area = int(mask.sum())
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)) if area else None
    if area != info.area or box != tuple(info.box):
        raise BadFileError(f"its metadata (area {info.area} px, box {info.box}) disagrees with its mask "
                           f"(area {area} px, box {box})")
    if info.image_file not in images:
        try:
            if not (root / info.image_file).is_file():
                raise BadFileError(f"its image {info.image_file} is missing")
            shape = npz_headers(root / info.image_file, ("image", "window"))["image"][0]
            if len(shape) not in (2, 3):
                raise BadFileError(f"its image {info.image_file} has shape {shape}, not HxW or HxWxC")
            images[info.image_file] = shape
        except BadFileError as exc:
            images[info.image_file] = exc
    image = images[info.image_file]
    if isinstance(image, BadFileError):
        raise BadFileError(str(image) if "its image" in str(image) else f"its image {info.image_file}: {image}")
    if tuple(image[:2]) != (h, w):
        raise BadFileError(f"its mask is {h}x{w} but its image {info.image_file} is {image[0]}x{image[1]}")
    return info


def manifest_problem(stored: object, fmt: str) -> str | None:
    """Why a parsed ``project.json`` cannot be used as the index of the folder, or None if it can."""
    if not isinstance(stored, dict):
        return f"it holds {type(stored).__name__}, not a JSON object"
    if stored.get("format") != fmt:
        return f"format {stored.get('format')!r}, expected {fmt!r}"
    for key, kind in (("pairs", list), ("versions", list), ("timing", dict)):
        value = stored.get(key, kind())
        if not isinstance(value, kind):
            return f"'{key}' holds {type(value).__name__}, not a {kind.__name__}"
    for key in ("pairs", "versions"):
        for entry in stored.get(key, []):
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
                return f"an entry of '{key}' is {entry!r}, not a record with a file"
    active = stored.get("active")
    if active is not None and (isinstance(active, bool) or not isinstance(active, int)):
        return f"'active' holds {active!r}, not a version number"
    version = stored.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        return f"'format_version' holds {version!r}"
    return None



def keep_broken_manifest(root: Path, manifest: str) -> str:
    """Copy an unusable manifest aside as ``<manifest>.broken-<time>``; says where (or why not)."""
    path = root / manifest
    backup = path.with_name(f"{manifest}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while backup.exists():
        backup, n = path.with_name(f"{manifest}.broken-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    try:
        shutil.copy2(path, backup)
    except OSError as exc:
        return f"not kept: {exc.strerror or exc}"
    return f"kept as {backup.name}"


def clean_strays(root: Path) -> None:
    """Temp files of interrupted writes, and version numbers reserved by writers that are gone."""
    for stray in root.glob("**/.*.tmp"):  # a write interrupted by a crash
        remove_file(stray)
    for marker in root.glob("adapters/.v*.reserved"):  # version numbers of writers that are gone
        try:
            live = tag_is_live(marker.read_text(), mtime=marker.stat().st_mtime)
        except OSError:
            live = False
        if not live:
            remove_file(marker)


def validate_pairs(root: Path, stored: dict | None, problems: list[str]) -> list[PairInfo]:
    """Pair files are the truth (each carries its own metadata); the manifest is their index and the commit
    record: with a current manifest, a pair file it does not list is an unfinished change."""
    listed: dict[str, dict] = {str(e["file"]): e for e in (stored or {}).get("pairs", [])}
    strict = stored is not None and int(stored.get("format_version", 1)) >= 2
    found: dict[str, PairInfo] = {}
    images: dict[str, object] = {}
    quarantined: set[str] = set()
    discarded = 0
    for f in sorted((root / "pairs").glob("*.npz")):
        rel = f"pairs/{f.name}"
        try:
            info = check_pair_file(root, rel, images)
        except (BadFileError, OSError) as exc:
            quarantined.add(rel)
            try:
                where = f"moved it to {quarantine(root, rel)}"
            except OSError as move_exc:
                where = f"could not move it aside ({move_exc.strerror or move_exc})"
            problems.append(f"Pair file {rel} is unusable ({exc}); {where}. Add that slice again.")
            continue
        if rel not in listed:
            if strict and info.txn:
                remove_file(f)  # written by a change that crashed before its commit
                discarded += 1
                continue
            problems.append(f"Recovered pair {info.describe()} missing from the manifest.")
        found[rel] = info
    if discarded:
        problems.append(f"Discarded {discarded} pair file(s) of a change that was interrupted before it "
                        "was saved; the project is as it was before that change.")
    for rel, entry in listed.items():
        if rel not in found and rel not in quarantined:
            problems.append(f"Pair {entry.get('image_layer', '?')} {entry.get('slice', '')} label "
                            f"{entry.get('label_id', '?')} lost its file; dropped it.")
    for image_file, result in images.items():
        if isinstance(result, BadFileError) and (root / image_file).is_file():
            try:
                problems.append(f"Image file {image_file} is unusable ({result}); moved it to "
                                f"{quarantine(root, image_file)}.")
            except OSError as exc:
                problems.append(f"Image file {image_file} is unusable ({result}) and could not be moved aside: {exc}.")
    pairs = list(found.values())
    if stored is None:  # rebuilding: per slice, only the newest complete change counts
        newest_txn: dict[tuple, str] = {}
        for p in pairs:
            if p.txn:
                newest_txn[p.key[:3]] = max(newest_txn.get(p.key[:3], ""), p.txn)
        pairs = [p for p in pairs if p.key[:3] not in newest_txn or p.txn == newest_txn[p.key[:3]]]
    order = {rel: i for i, rel in enumerate(listed)}  # manifest order, then recovered files by time
    pairs.sort(key=lambda p: (order.get(p.file, len(order)), p.added, p.txn, p.id))
    newest: dict[tuple, PairInfo] = {}
    for p in pairs:  # one pair per (layers, slice, label): the newest wins
        if p.key not in newest or (p.added, p.txn) >= (newest[p.key].added, newest[p.key].txn):
            newest[p.key] = p
    return [p for p in pairs if newest[p.key] is p]


def validate_versions(root: Path, stored: dict | None, problems: list[str]) -> list[VersionInfo]:
    """Manifest entries whose files exist, plus adapter files written but never recorded (from their metadata)."""
    found: dict[str, VersionInfo] = {}
    for entry in (stored or {}).get("versions", []):
        try:
            v = VersionInfo.from_json(entry)
        except (KeyError, TypeError, ValueError):
            problems.append(f"Dropped an unreadable adapters entry of the manifest: {entry!r:.120}")
            continue
        if (root / v.file).is_file():
            found[v.file] = v
        else:
            problems.append(f"Adapters v{v.version} ({v.file}) are missing; dropped them.")
    for f in sorted((root / "adapters").glob("v*.safetensors")):
        rel = f"adapters/{f.name}"
        if rel in found:
            continue
        try:
            meta = safetensors_metadata(f)
            number = int(re.match(r"v(\d+)", f.name).group(1))
            found[rel] = VersionInfo.from_json({**meta, "version": number, "file": rel})
            problems.append(f"Recovered adapters {rel} missing from the manifest.")
        except Exception as exc:  # noqa: BLE001
            problems.append(f"Skipped unreadable adapters file {rel}: {exc}")
    return sorted(found.values(), key=lambda v: v.version)
