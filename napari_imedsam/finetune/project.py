"""A fine-tuning project folder: corrected training pairs, their manifest, and versioned adapters.

Layout (every file written atomically: temp file in the same folder, fsync, then ``os.replace``)::

    <project>/project.json              manifest (pairs, adapter versions, the active version): the commit point
    <project>/.lock                     advisory lock (``fcntl.flock``) held while one writer changes the folder
    <project>/images/<sha>.npz          one image slice (raw values + window), shared by its pairs
    <project>/pairs/<id>.<txn>.npz      one object: mask + its own metadata (enough to rebuild the manifest)
    <project>/adapters/v003.safetensors one fine-tuning result (metadata: time, pairs, held-out Dice)
    <project>/quarantine/               files that failed their check on opening (moved, never deleted)

Guarantees (tests/test_project_crash.py kills a change after every file operation):

* Every change is atomic: ``add_slice``, ``remove_pairs``, ``record_version``, ``set_active`` first write new
  files under new names, then replace the manifest in one ``os.replace`` (the commit), then delete the files
  nothing references any more. A crash at any point reopens as the state before or after, never a mix:
  pair files the manifest does not list are an unfinished change and are discarded on opening.
* One writer at a time: each change holds the folder lock and first adopts what other writers committed, so
  two ``Project`` objects on one folder (two viewers, a viewer and a script) see each other's pairs and never
  delete each other's files; a writer that cannot get the lock within ``lock_timeout`` gets a ProjectError
  naming the process that holds it.
* Opening validates: a manifest that is unreadable or has the wrong shape is kept as
  ``project.json.broken-<time>`` and rebuilt from the pair files (which carry their own metadata); entries
  whose files are gone are dropped; each pair file is checked cheaply (size, zip CRCs, metadata against its
  mask and image) and a bad one is moved to ``quarantine/``. Everything repaired is listed in ``problems``.

Pure Python + numpy: no Qt, no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .project_check import clean_strays, keep_broken_manifest, manifest_problem, validate_pairs, validate_versions
from .project_files import (  # noqa: F401 - re-exported: the project API in one place
    AddReport,
    FolderLock,
    PairInfo,
    ProjectError,
    VersionInfo,
    atomic_write_bytes,
    default_project_dir,
    new_txn,
    now,
    npz_bytes,
    process_tag,
    ranges_text,
    remove_file,
    safe_name,
    safetensors_metadata,
    user_projects_root,
)
from .project_versions import ProjectVersions

MANIFEST = "project.json"
FORMAT = "napari-imedsam-project"
FORMAT_VERSION = 2  # 2: pair files carry the id of the change that wrote them; unlisted ones are uncommitted
LOCK_TIMEOUT = 10.0  # seconds a writer waits for another one to finish its change


class Project(ProjectVersions):
    """A project folder. Thread-safe (the training worker records versions while the GUI adds pairs) and
    safe against other writers on the same folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, name: str | None = None, create: bool = True,
                 lock_timeout: float = LOCK_TIMEOUT):
        self.root = Path(root).expanduser().absolute()
        self.lock_timeout = float(lock_timeout)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of _writing() in this object
        self._sig: tuple | None = None  # identity of the manifest file we last read or wrote
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
        self._folder_lock = FolderLock(self.root)
        self._data: dict = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": name or self.root.name,
                            "created": now(), "pairs": [], "versions": [], "active": None, "timing": {}}
        with self._writing(refresh=False):
            self._load_and_validate()

    # ---- locking and the manifest ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self, refresh: bool = True) -> Iterator[None]:
        """Hold the folder lock (other writers wait) and work on what is committed on disk now."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                try:
                    self._folder_lock.acquire(self.lock_timeout)
                except TimeoutError as exc:
                    raise ProjectError(
                        f"The project folder {self.root} is being changed by {exc}; waited {self.lock_timeout:g} s. "
                        "Wait for it to finish (or close the other viewer or script using this folder) and try "
                        "again.") from None
                except OSError as exc:
                    raise ProjectError(f"Cannot lock the project folder {self.root}: {exc.strerror or exc}.") from exc
            self._depth += 1
            try:
                if outer and refresh:
                    self._refresh()
                yield
            finally:
                self._depth -= 1
                if outer:
                    self._folder_lock.release()

    def _manifest_sig(self) -> tuple | None:
        try:
            st = os.stat(self.root / MANIFEST)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read_manifest(self) -> tuple[dict | None, str | None]:
        """(manifest, None), (None, None) when there is none, or (None, why it cannot be used)."""
        path = self.root / MANIFEST
        if not path.exists():
            return None, None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        problem = manifest_problem(stored, FORMAT)
        return (None, problem) if problem else (stored, None)

    def _adopt(self, stored: dict) -> None:
        """Take over a manifest another writer committed (it validated the files)."""
        pairs = [PairInfo.from_json(p).to_json() for p in stored.get("pairs", [])]
        versions = [asdict(VersionInfo.from_json(v)) for v in stored.get("versions", [])]
        self._data = {**self._data, **{k: stored[k] for k in ("name", "created", "timing") if k in stored},
                      "pairs": pairs, "versions": versions, "active": stored.get("active")}

    def _refresh(self) -> None:
        """Under the lock: adopt what other writers committed since we last read or wrote the manifest."""
        sig = self._manifest_sig()
        if sig == self._sig:
            return
        stored, _problem = self._read_manifest()
        try:
            if stored is None:
                raise ValueError("no usable manifest")
            self._adopt(stored)
            self._sig = sig
        except (KeyError, TypeError, ValueError):
            self._load_and_validate()

    def _peek(self) -> None:
        """For readers: adopt a newer manifest of another writer if it is usable (no repairs without the lock)."""
        if self._depth:
            return
        sig = self._manifest_sig()
        if sig is None or sig == self._sig:
            return
        stored, _problem = self._read_manifest()
        if stored is not None:
            # a manifest another writer is replacing may be mid-change: keep ours and look again at the next
            # change (under the lock, where a broken manifest is rebuilt from the files and reported)
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self._adopt(stored)
                self._sig = sig

    def _commit(self, **changes) -> None:
        """Write the manifest with ``changes`` in one atomic replace; memory follows only once it is on disk."""
        data = {**self._data, **changes, "format": FORMAT, "format_version": FORMAT_VERSION}
        text = json.dumps(data, indent=1, sort_keys=True).encode()
        try:
            atomic_write_bytes(self.root / MANIFEST, text)
        except OSError as exc:
            raise ProjectError(f"Cannot write the project manifest in {self.root}: {exc.strerror or exc}.") from exc
        self._data = json.loads(text)
        self._sig = self._manifest_sig()

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
        stored, problem = self._read_manifest()
        if problem:
            self.problems.append(f"The manifest {MANIFEST} is unusable ({problem}); rebuilt it from the pair and "
                                 f"adapter files (the old one {keep_broken_manifest(self.root, MANIFEST)}).")
        if stored:
            for k in ("name", "created", "active", "timing"):
                if k in stored:
                    self._data[k] = stored[k]
        clean_strays(self.root)
        pairs = [p.to_json() for p in validate_pairs(self.root, stored, self.problems)]
        versions = [asdict(v) for v in validate_versions(self.root, stored, self.problems)]
        active = self._data["active"]
        if active is not None and active not in {v["version"] for v in versions}:
            self.problems.append(f"Active adapters v{active} are missing; none is active now.")
            active = None
        self._data.update(pairs=pairs, versions=versions, active=active, format_version=FORMAT_VERSION)
        if stored != json.loads(json.dumps(self._data)):
            self._commit()
        else:
            self._sig = self._manifest_sig()
        self._remove_unused_images()

    # ---- pairs -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._data["name"])

    @property
    def pairs(self) -> list[PairInfo]:
        with self._lock:
            self._peek()
            return [PairInfo.from_json(p) for p in self._data["pairs"]]

    def __len__(self) -> int:
        return len(self.pairs)

    def add_slice(self, image: np.ndarray, labels: np.ndarray, image_layer: str, labels_layer: str,
                  slice_index: Sequence[int] = (), window: tuple[float, float] | None = None) -> AddReport:
        """Every object id on one annotated slice becomes one pair (replacing that slice's earlier pairs).

        image: HxW or HxWxC slice (raw values); labels: HxW integer ids (0 = background). Atomic as a whole:
        the new pair files (new names, one change id) are written first, the manifest is swapped in one
        step, and only then are the replaced files removed."""
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
        with self._writing():
            txn = new_txn()
            image_file = self._write_image(image, window)
            old = {p.label_id: p for p in self.pairs if p.key[:3] == (image_layer, labels_layer, slice_index)}
            replaced: list[str] = []
            for label_id in ids:
                prev = old.pop(label_id, None)
                info = self._write_pair(labels == label_id, image_layer, labels_layer, slice_index, label_id,
                                        window, image_file, prev.id if prev else None, txn=txn)
                (report.updated if prev else report.added).append(info)
                if prev:
                    replaced.append(prev.file)
            report.removed = list(old.values())
            replaced += [p.file for p in report.removed]
            gone = {p.id for p in report.removed}
            new = {p.key: p for p in report.added + report.updated}
            pairs = [new.pop(p.key, p) for p in self.pairs if p.id not in gone] + list(new.values())
            self._commit(pairs=[p.to_json() for p in pairs])
            for rel in replaced:  # after the commit: nothing references them any more
                remove_file(self.root / rel)
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
                    label_id: int, window, image_file: str, pair_id: str | None, txn: str = "") -> PairInfo:
        """Write one pair file under a new name (``<id>.<txn>.npz``): an older version of it stays intact."""
        if not mask.any():
            raise ProjectError(f"The mask of label {label_id} is empty; nothing to learn from.")
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        pair_id = pair_id or f"{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(4).hex()}"
        txn = txn or new_txn()
        info = PairInfo(
            id=pair_id, image_layer=image_layer, labels_layer=labels_layer, slice=slice_index,
            label_id=label_id, shape=tuple(mask.shape), area=int(mask.sum()),
            box=(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)),
            window=None if window is None else (float(window[0]), float(window[1])),
            image_file=image_file, file=f"pairs/{pair_id}.{txn}.npz", added=now(), txn=txn,
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
        """Under the lock, after the manifest was refreshed: images no committed pair uses."""
        used = {p["image_file"] for p in self._data["pairs"]}
        for f in (self.root / "images").glob("*.npz"):
            if f"images/{f.name}" not in used:
                remove_file(f)

    def remove_pairs(self, ids: Sequence[str]) -> int:
        """Forget pairs (manifest first, then their files); returns how many were removed."""
        ids = set(ids)
        with self._writing():
            gone = [p for p in self.pairs if p.id in ids]
            self._commit(pairs=[p.to_json() for p in self.pairs if p.id not in ids])
            for p in gone:
                remove_file(self.root / p.file)
            self._remove_unused_images()
        return len(gone)

    def load_pair(self, pair: PairInfo) -> tuple[np.ndarray, np.ndarray]:
        """(raw image slice, bool mask) of a pair; a file that is unreadable or disagrees with the pair's
        metadata is a ProjectError naming the pair."""
        import zipfile
        import zlib

        try:
            with np.load(self.root / pair.image_file, allow_pickle=False) as z:
                image = z["image"]
            with np.load(self.root / pair.file, allow_pickle=False) as z:
                packed = z["mask"]
            h, w = pair.shape
            if packed.dtype != np.uint8 or packed.size * 8 < h * w:
                raise ValueError(f"the mask holds {packed.size} bytes, too few for {h}x{w}")
            mask = np.unpackbits(packed, count=h * w).reshape(pair.shape)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ProjectError(f"Pair {pair.describe()} cannot be read ({type(exc).__name__}: {exc}); remove it "
                               "and add the slice again.") from exc
        if image.shape[:2] != tuple(pair.shape):
            raise ProjectError(f"Pair {pair.describe()}: its image {pair.image_file} is {image.shape[:2]} but its "
                               f"mask is {tuple(pair.shape)}; remove it and add the slice again.")
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
