"""A fine-tuning project folder: corrected training pairs, their manifest, and versioned adapters.

Layout (everything written atomically: temp file in the same folder, then ``os.replace``)::

    <project>/project.json              manifest (pairs, adapter versions, the active version)
    <project>/images/<sha>.npz          one image slice (raw values + window), shared by its pairs
    <project>/pairs/<id>.npz            one object: mask + its own metadata (enough to rebuild the manifest)
    <project>/adapters/v003.safetensors one fine-tuning result (metadata: time, pairs, held-out Dice)

Opening a folder validates the manifest against the files: entries whose files are gone are dropped,
files the manifest lacks are adopted, a corrupt manifest is rebuilt from the files. So a crash or a
closed viewer loses nothing that was added. Pure Python + numpy: no Qt, no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .project_files import (  # noqa: F401 - re-exported: the project API in one place
    AddReport,
    PairInfo,
    VersionInfo,
    atomic_write_bytes,
    default_project_dir,
    now,
    npz_bytes,
    ranges_text,
    safe_name,
    safetensors_metadata,
    user_projects_root,
)

MANIFEST = "project.json"
FORMAT = "napari-imedsam-project"
FORMAT_VERSION = 1


class ProjectError(Exception):
    """A project folder cannot be used or a pair cannot be added; the message says why and what to do."""


class Project:
    """A project folder; thread-safe (the training worker records versions while the GUI adds pairs)."""

    def __init__(self, root: str | os.PathLike, name: str | None = None, create: bool = True):
        self.root = Path(root).expanduser().absolute()
        self._lock = threading.RLock()
        self.problems: list[str] = []  # what validation found and repaired when the folder was opened
        if not self.root.exists():
            if not create:
                raise ProjectError(f"Project folder {self.root} does not exist.")
            try:
                self.root.mkdir(parents=True)
            except OSError as exc:
                raise ProjectError(f"Cannot create the project folder {self.root}: {exc.strerror or exc}. "
                                   "Choose a folder you can write to.") from exc
        if not self.root.is_dir():
            raise ProjectError(f"{self.root} is a file, not a folder; choose a folder for the project.")
        self._check_writable()
        self._data: dict = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name or self.root.name,
                            "created": now(), "pairs": [], "versions": [], "active": None, "timing": {}}
        self._load_and_validate()

    # ---- opening -----------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=self.root)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise ProjectError(f"The project folder {self.root} is not writable ({exc.strerror or exc}). "
                               "Choose another folder.") from exc

    def _load_and_validate(self) -> None:
        path = self.root / MANIFEST
        stored: dict | None = None
        if path.exists():
            try:
                stored = json.loads(path.read_text())
                if stored.get("format") != FORMAT:
                    raise ValueError(f"format {stored.get('format')!r}")
            except (OSError, ValueError) as exc:
                backup = path.with_name(f"{MANIFEST}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                shutil.copy2(path, backup)
                self.problems.append(f"The manifest could not be read ({exc}); rebuilt it from the files "
                                     f"(old one kept as {backup.name}).")
                stored = None
        if stored:
            for k in ("name", "created", "active", "timing"):
                if k in stored:
                    self._data[k] = stored[k]
        for stray in self.root.glob("**/.*.tmp"):  # a write interrupted by a crash
            stray.unlink(missing_ok=True)
        self._data["pairs"] = [p.to_json() for p in self._validate_pairs(stored)]
        self._data["versions"] = [asdict(v) for v in self._validate_versions(stored)]
        if self._data["active"] is not None and self._data["active"] not in {v["version"] for v in
                                                                              self._data["versions"]}:
            self.problems.append(f"Active adapters v{self._data['active']} are missing; none is active now.")
            self._data["active"] = None
        if stored != json.loads(json.dumps(self._data)):
            self._save_manifest()
        self._remove_unused_images()

    def _validate_pairs(self, stored: dict | None) -> list[PairInfo]:
        """Pair files are the truth (each carries its own metadata); the manifest is their index."""
        listed: dict[str, dict] = {}
        for entry in (stored or {}).get("pairs", []):
            if isinstance(entry, dict) and "file" in entry:
                listed[str(entry["file"])] = entry
        found: dict[str, PairInfo] = {}
        for f in sorted((self.root / "pairs").glob("*.npz")):
            rel = f"pairs/{f.name}"
            try:
                with np.load(f, allow_pickle=False) as z:
                    info = PairInfo.from_json(json.loads(str(z["meta"])))
                if not (self.root / info.image_file).is_file():
                    raise ValueError(f"its image {info.image_file} is missing")
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
                self.problems.append(f"Skipped unreadable pair file {rel}: {exc}")
                continue
            found[rel] = info
            if rel not in listed:
                self.problems.append(f"Recovered pair {info.describe()} missing from the manifest.")
        for rel, entry in listed.items():
            if rel not in found:
                self.problems.append(f"Pair {entry.get('image_layer', '?')} {entry.get('slice', '')} label "
                                     f"{entry.get('label_id', '?')} lost its file; dropped it.")
        order = {rel: i for i, rel in enumerate(listed)}  # manifest order, then recovered files by time
        pairs = sorted(found.values(), key=lambda p: (order.get(p.file, len(order)), p.added, p.id))
        newest: dict[tuple, PairInfo] = {}
        for p in pairs:  # one pair per (layers, slice, label): the newest wins
            if p.key not in newest or p.added >= newest[p.key].added:
                newest[p.key] = p
        return [p for p in pairs if newest[p.key] is p]

    def _validate_versions(self, stored: dict | None) -> list[VersionInfo]:
        found: dict[str, VersionInfo] = {}
        for entry in (stored or {}).get("versions", []):
            try:
                v = VersionInfo.from_json(entry)
            except (KeyError, TypeError, ValueError):
                continue
            if (self.root / v.file).is_file():
                found[v.file] = v
            else:
                self.problems.append(f"Adapters v{v.version} ({v.file}) are missing; dropped them.")
        for f in sorted((self.root / "adapters").glob("v*.safetensors")):
            rel = f"adapters/{f.name}"
            if rel in found:
                continue
            try:
                meta = safetensors_metadata(f)
                number = int(re.match(r"v(\d+)", f.name).group(1))
                found[rel] = VersionInfo.from_json({**meta, "version": number, "file": rel})
                self.problems.append(f"Recovered adapters {rel} missing from the manifest.")
            except Exception as exc:  # noqa: BLE001
                self.problems.append(f"Skipped unreadable adapters file {rel}: {exc}")
        return sorted(found.values(), key=lambda v: v.version)

    def _save_manifest(self) -> None:
        data = json.dumps(self._data, indent=1, sort_keys=True).encode()
        try:
            atomic_write_bytes(self.root / MANIFEST, data)
        except OSError as exc:
            raise ProjectError(f"Cannot write the project manifest in {self.root}: {exc.strerror or exc}.") from exc

    # ---- pairs -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._data["name"])

    @property
    def pairs(self) -> list[PairInfo]:
        with self._lock:
            return [PairInfo.from_json(p) for p in self._data["pairs"]]

    def __len__(self) -> int:
        return len(self._data["pairs"])

    def add_slice(self, image: np.ndarray, labels: np.ndarray, image_layer: str, labels_layer: str,
                  slice_index: Sequence[int] = (), window: tuple[float, float] | None = None) -> AddReport:
        """Every object id on one annotated slice becomes one pair (replacing that slice's earlier pairs).

        image: HxW or HxWxC slice (raw values); labels: HxW integer ids (0 = background)."""
        image, labels = np.asarray(image), np.asarray(labels)
        if labels.ndim != 2:
            raise ProjectError(f"A labels slice must be 2-D, got shape {labels.shape}.")
        if image.shape[:2] != labels.shape or image.ndim not in (2, 3):
            raise ProjectError(f"Labels layer '{labels_layer}' slice has shape {labels.shape} but image layer "
                               f"'{image_layer}' slice has shape {image.shape}; they must cover the same pixels.")
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
            raise ProjectError(f"Labels layer '{labels_layer}' holds {labels.dtype}, not integer ids.")
        ids = [int(v) for v in np.unique(labels) if v != 0]
        if not ids:
            where = f"slice {list(slice_index)}" if len(slice_index) else "the image"
            raise ProjectError(f"No objects on {where} of labels layer '{labels_layer}': paint or correct a "
                               "mask there first (label 0 is background).")
        slice_index = tuple(int(v) for v in slice_index)
        report = AddReport()
        with self._lock:
            image_file = self._write_image(image, window)
            old = {p.label_id: p for p in self.pairs
                   if p.key[:3] == (image_layer, labels_layer, slice_index)}
            for label_id in ids:
                prev = old.pop(label_id, None)
                info = self._write_pair(labels == label_id, image_layer, labels_layer, slice_index, label_id,
                                        window, image_file, prev.id if prev else None)
                (report.updated if prev else report.added).append(info)
            report.removed = list(old.values())
            for p in report.removed:  # files first: a crash in between can only drop them, never revive
                (self.root / p.file).unlink(missing_ok=True)
            gone = {p.id for p in report.removed}
            new = {p.key: p for p in report.added + report.updated}
            pairs = [new.pop(p.key, p) for p in self.pairs if p.id not in gone] + list(new.values())
            self._data["pairs"] = [p.to_json() for p in pairs]
            self._save_manifest()
            self._remove_unused_images()
        return report

    def _write_image(self, image: np.ndarray, window) -> str:
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
            raise ProjectError(f"The image holds {image.dtype} values; it must hold real numbers.")
        digest = hashlib.sha256(image.tobytes() + str(image.shape).encode() + str(image.dtype).encode())
        digest.update(json.dumps(window).encode())
        rel = f"images/{digest.hexdigest()[:20]}.npz"
        if not (self.root / rel).is_file():
            win = np.array(window if window is not None else [np.nan, np.nan], dtype=np.float64)
            self._write(rel, npz_bytes(image=np.ascontiguousarray(image), window=win))
        return rel

    def _write_pair(self, mask: np.ndarray, image_layer: str, labels_layer: str, slice_index: tuple[int, ...],
                    label_id: int, window, image_file: str, pair_id: str | None) -> PairInfo:
        if not mask.any():
            raise ProjectError(f"The mask of label {label_id} is empty; nothing to learn from.")
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        pair_id = pair_id or f"{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(4).hex()}"
        info = PairInfo(
            id=pair_id, image_layer=image_layer, labels_layer=labels_layer, slice=slice_index,
            label_id=label_id, shape=tuple(mask.shape), area=int(mask.sum()),
            box=(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)),
            window=None if window is None else (float(window[0]), float(window[1])),
            image_file=image_file, file=f"pairs/{pair_id}.npz", added=now(),
        )
        self._write(info.file, npz_bytes(mask=np.packbits(mask), meta=np.array(json.dumps(info.to_json()))))
        return info

    def _write(self, rel: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self.root / rel, data)
        except OSError as exc:
            raise ProjectError(f"Cannot write {rel} in the project folder {self.root}: {exc.strerror or exc}. "
                               "Choose a writable folder.") from exc

    def _remove_unused_images(self) -> None:
        used = {p.image_file for p in self.pairs}
        for f in (self.root / "images").glob("*.npz"):
            if f"images/{f.name}" not in used:
                f.unlink(missing_ok=True)

    def remove_pairs(self, ids: Sequence[str]) -> int:
        """Forget pairs (manifest first, then their files); returns how many were removed."""
        ids = set(ids)
        with self._lock:
            gone = [p for p in self.pairs if p.id in ids]
            for p in gone:
                (self.root / p.file).unlink(missing_ok=True)
            self._data["pairs"] = [p.to_json() for p in self.pairs if p.id not in ids]
            self._save_manifest()
            self._remove_unused_images()
        return len(gone)

    def load_pair(self, pair: PairInfo) -> tuple[np.ndarray, np.ndarray]:
        """(raw image slice, bool mask) of a pair."""
        try:
            with np.load(self.root / pair.image_file, allow_pickle=False) as z:
                image = z["image"]
            with np.load(self.root / pair.file, allow_pickle=False) as z:
                mask = np.unpackbits(z["mask"], count=pair.shape[0] * pair.shape[1]).reshape(pair.shape)
        except (OSError, ValueError, KeyError) as exc:
            raise ProjectError(f"Pair {pair.describe()} cannot be read ({exc}); remove it and add the slice "
                               "again.") from exc
        return image, mask.astype(bool)

    def summary(self) -> str:
        """E.g. "5 pairs: CT / Labels, slices 3-5, 9"."""
        pairs = self.pairs
        if not pairs:
            return "No training pairs yet."
        groups: dict[tuple[str, str], set] = {}
        for p in pairs:
            groups.setdefault((p.image_layer, p.labels_layer), set()).add(p.slice)
        parts = []
        for (img, lab), slices in groups.items():
            where = "2-D" if slices == {()} else f"slices {ranges_text(sorted(s[-1] for s in slices if s))}"
            parts.append(f"{img} / {lab}, {where}")
        return f"{len(pairs)} pair{'s' if len(pairs) != 1 else ''}: " + "; ".join(parts)

    # ---- adapter versions --------------------------------------------------------------------------------
    @property
    def versions(self) -> list[VersionInfo]:
        with self._lock:
            return [VersionInfo.from_json(v) for v in self._data["versions"]]

    @property
    def active(self) -> VersionInfo | None:
        with self._lock:
            return next((v for v in self.versions if v.version == self._data["active"]), None)

    def version(self, number: int) -> VersionInfo:
        for v in self.versions:
            if v.version == number:
                return v
        raise ProjectError(f"The project has no adapters v{number}.")

    def path_of(self, version: VersionInfo) -> Path:
        return self.root / version.file

    def new_version_path(self) -> Path:
        """Where the next adapters file goes (``adapters/vNNN.safetensors``); record it once written."""
        with self._lock:
            numbers = [v.version for v in self.versions]
            numbers += [int(m.group(1)) for f in (self.root / "adapters").glob("v*.safetensors")
                        if (m := re.match(r"v(\d+)", f.name))]
            (self.root / "adapters").mkdir(exist_ok=True)
            return self.root / "adapters" / f"v{max(numbers, default=0) + 1:03d}.safetensors"

    def record_version(self, path: str | os.PathLike, activate: bool = False, **info) -> VersionInfo:
        """Add an adapters file already written into ``adapters/`` to the manifest."""
        path = Path(path)
        number = int(re.match(r"v(\d+)", path.name).group(1))
        entry = VersionInfo.from_json({"created": now(), **info, "version": number,
                                       "file": f"adapters/{path.name}"})
        with self._lock:
            self._data["versions"] = [v for v in self._data["versions"] if v["version"] != number]
            self._data["versions"].append(asdict(entry))
            self._data["versions"].sort(key=lambda v: v["version"])
            if activate:
                self._data["active"] = number
            self._save_manifest()
        return entry

    def import_adapters(self, source: str | os.PathLike, **info) -> VersionInfo:
        """Copy an adapters file trained elsewhere into the project as a new version (not activated)."""
        source = Path(source)
        try:
            meta = safetensors_metadata(source)
            data = source.read_bytes()
        except (OSError, ValueError) as exc:
            raise ProjectError(f"Cannot read adapters {source}: {exc}") from exc
        with self._lock:
            dest = self.new_version_path()
            self._write(f"adapters/{dest.name}", data)
            fields = {k: meta[k] for k in ("backbone", "pairs", "dice_before", "dice_after", "steps", "parts",
                                           "sha") if k in meta}
            return self.record_version(dest, **{**fields, "kind": "imported", "note": f"from {source}", **info})

    def set_active(self, number: int | None) -> None:
        with self._lock:
            if number is not None:
                self.version(number)
            self._data["active"] = number
            self._save_manifest()

    # ---- timing (for the CPU estimate before a run) ------------------------------------------------------
    def seconds_per_step(self, key: str) -> float | None:
        value = self._data.get("timing", {}).get(key)
        return float(value) if value else None

    def set_seconds_per_step(self, key: str, seconds: float) -> None:
        with self._lock:
            self._data.setdefault("timing", {})[key] = round(float(seconds), 4)
            self._save_manifest()
