"""The adapter versions of a project folder (each fine-tuning run or import is a ``vNNN.safetensors`` file and
a manifest entry; one may be active) and the measured seconds per step; mixed into ``Project``."""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path

from .project_files import ProjectError, VersionInfo, now, process_tag, remove_file, safetensors_metadata


class ProjectVersions:
    """Needs the project's ``root``, ``_lock``, ``_data``, ``_peek()``, ``_writing()``, ``_commit()`` and
    ``_write()`` (see ``project.Project``)."""

    # ---- adapter versions --------------------------------------------------------------------------------
    @property
    def versions(self) -> list[VersionInfo]:
        with self._lock:
            self._peek()
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
        """Where the next adapters file goes (``adapters/vNNN.safetensors``); record it once written. The
        number is reserved (``adapters/.vNNN.reserved``) so that another writer picks the next one."""
        with self._writing():
            folder = self.root / "adapters"
            folder.mkdir(exist_ok=True)
            numbers = [v.version for v in self.versions]
            numbers += [int(m.group(1)) for f in folder.glob("v*.safetensors") if (m := re.match(r"v(\d+)", f.name))]
            numbers += [int(m.group(1)) for f in folder.glob(".v*.reserved") if (m := re.match(r"\.v(\d+)", f.name))]
            number = max(numbers, default=0) + 1
            (folder / f".v{number:03d}.reserved").write_text(process_tag())
            return folder / f"v{number:03d}.safetensors"

    def record_version(self, path: str | os.PathLike, activate: bool = False, **info) -> VersionInfo:
        """Add an adapters file already written into ``adapters/`` to the manifest."""
        path = Path(path)
        match = re.match(r"v(\d+)", path.name)
        if match is None:
            raise ProjectError(f"{path.name} is not an adapters file name of the project (vNNN.safetensors); "
                               "use new_version_path() or import_adapters().")
        number = int(match.group(1))
        entry = VersionInfo.from_json({"created": now(), **info, "version": number,
                                       "file": f"adapters/{path.name}"})
        with self._writing():
            versions = [v for v in self._data["versions"] if v["version"] != number] + [asdict(entry)]
            versions.sort(key=lambda v: v["version"])
            self._commit(versions=versions, **({"active": number} if activate else {}))
            remove_file(path.with_name(f".v{number:03d}.reserved"))
        return entry

    def import_adapters(self, source: str | os.PathLike, **info) -> VersionInfo:
        """Copy an adapters file trained elsewhere into the project as a new version (not activated)."""
        source = Path(source)
        try:
            meta = safetensors_metadata(source)
            data = source.read_bytes()
        except (OSError, ValueError) as exc:
            raise ProjectError(f"Cannot read adapters {source}: {exc}") from exc
        with self._writing():
            dest = self.new_version_path()
            self._write(f"adapters/{dest.name}", data)
            fields = {k: meta[k] for k in ("backbone", "pairs", "dice_before", "dice_after", "steps", "parts",
                                           "sha") if k in meta}
            return self.record_version(dest, **{**fields, "kind": "imported", "note": f"from {source}", **info})

    def set_active(self, number: int | None) -> None:
        with self._writing():
            if number is not None:
                self.version(number)
            self._commit(active=number)

    # ---- timing (for the CPU estimate before a run) ------------------------------------------------------
    def seconds_per_step(self, key: str) -> float | None:
        with self._lock:
            self._peek()
            value = self._data.get("timing", {}).get(key)
        return float(value) if value else None

    def set_seconds_per_step(self, key: str, seconds: float) -> None:
        with self._writing():
            self._commit(timing={**self._data.get("timing", {}), key: round(float(seconds), 4)})
