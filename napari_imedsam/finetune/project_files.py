"""Records and file helpers of a fine-tuning project folder (see ``finetune.project``): pair and version
records, atomic writes, the folder lock, the safetensors header reader, default folder names.
Pure Python + numpy."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import struct
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: no advisory locks there; a second writer is not detected
    fcntl = None

LOCK_NAME = ".lock"



class ProjectError(Exception):
    """A project folder cannot be used or a pair cannot be added; the message says why and what to do."""

def user_projects_root() -> Path:
    """``<user data dir>/napari-imedsam/projects``: where projects go when the image has no folder."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-imedsam")) / "projects"


def safe_name(text: str) -> str:
    """A file-system friendly version of a layer name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._") or "project"


def default_project_dir(image_name: str, image_path: str | os.PathLike | None = None) -> Path:
    """Beside the image file when it has one (``<dir>/<stem>_imedsam``), else in the user data dir."""
    if image_path:
        p = Path(image_path)
        stem = p.name.split(".")[0] if p.is_file() else p.name
        return p.parent / f"{safe_name(stem)}_imedsam"
    return user_projects_root() / safe_name(image_name)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers only ever see the old or the complete new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_file(path: Path) -> None:
    """Delete ``path`` if it is there (every deletion of the project goes through here)."""
    path.unlink(missing_ok=True)


def new_txn() -> str:
    """A transaction id that sorts by time: every pair file written by one change of a slice carries it."""
    return f"{time.time_ns():016x}{os.urandom(2).hex()}"


def process_tag() -> str:
    return f"{os.getpid()} {socket.gethostname()} {now()}"


def tag_is_live(text: str, max_age_s: float = 7 * 86400.0, mtime: float | None = None) -> bool:
    """Whether the process named by a ``process_tag`` may still be running (other hosts: until it is old)."""
    try:
        pid, host = text.split()[:2]
        pid_num = int(pid)
    except ValueError:
        return False
    if mtime is not None and time.time() - mtime > max_age_s:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid_num, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class FolderLock:
    """An advisory lock (``fcntl.flock``) on ``<folder>/.lock``: one writer at a time, whether the others are
    threads with their own ``Project``, other viewers or scripts. The OS drops it when the holder dies."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds; ``TimeoutError(holder)`` when another writer keeps it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            deadline = time.monotonic() + max(0.0, float(timeout))
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        try:
                            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                        except OSError:
                            holder = []
                        os.close(fd)
                        who = (f"process {holder[0]} on {holder[1]} (since {holder[2]})" if len(holder) >= 3
                               else "another process")
                        raise TimeoutError(who) from None
                    time.sleep(0.02)
                except OSError:  # a file system without locks (some network shares): go on unlocked
                    break
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, process_tag().encode())
        except OSError:
            pass
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header (no torch needed)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file.")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ValueError(f"{path} has an implausible safetensors header ({n} bytes).")
        header = json.loads(f.read(n))
    return dict(header.get("__metadata__") or {})


@dataclass(frozen=True)
class PairInfo:
    """One training pair: object ``label_id`` of ``labels_layer`` on one slice of ``image_layer``."""

    id: str
    image_layer: str
    labels_layer: str
    slice: tuple[int, ...]  # indices of the leading (non-spatial) axes; () for a 2-D image
    label_id: int
    shape: tuple[int, int]
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (pixel edges), from the mask
    area: int
    window: tuple[float, float] | None
    image_file: str  # relative to the project folder
    file: str
    added: str = ""
    txn: str = ""  # the change that wrote it: all pairs of one slice are written (and committed) together

    @property
    def key(self) -> tuple:
        return (self.image_layer, self.labels_layer, self.slice, self.label_id)

    @property
    def case_id(self) -> str:
        """Pairs on one slice share a case: held-out splits never separate them."""
        return f"{self.image_layer}{list(self.slice)}"

    def describe(self) -> str:
        where = f"slice {', '.join(map(str, self.slice))}" if self.slice else "2-D"
        return f"{self.image_layer} {where}, label {self.label_id} ({self.area} px)"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> PairInfo:
        return cls(
            id=str(d["id"]), image_layer=str(d["image_layer"]), labels_layer=str(d["labels_layer"]),
            slice=tuple(int(v) for v in d["slice"]), label_id=int(d["label_id"]),
            shape=tuple(int(v) for v in d["shape"]), box=tuple(float(v) for v in d["box"]),
            area=int(d["area"]), window=None if d.get("window") is None else tuple(float(v) for v in d["window"]),
            image_file=str(d["image_file"]), file=str(d["file"]), added=str(d.get("added", "")),
            txn=str(d.get("txn", "")),
        )


@dataclass(frozen=True)
class VersionInfo:
    """One adapters file of the project (``kind``: "start", "trained" or "imported")."""

    version: int
    file: str
    created: str
    kind: str
    backbone: str = ""
    pairs: int = 0
    dice_before: float | None = None
    dice_after: float | None = None
    steps: int = 0
    parts: tuple[str, ...] = ()
    sha: str = ""
    note: str = ""

    def label(self) -> str:
        """E.g. "v3 trained 11-29 14:05, Dice 0.812"."""
        dice = f", Dice {self.dice_after:.3f}" if self.dice_after is not None else ""
        return f"v{self.version} {self.kind} {self.created[5:16].replace('T', ' ')}{dice}"

    @classmethod
    def from_json(cls, d: dict) -> VersionInfo:
        def num(v):
            return None if v in (None, "", "null") else float(v)

        return cls(version=int(d["version"]), file=str(d["file"]), created=str(d.get("created", "")),
                   kind=str(d.get("kind", "trained")), backbone=str(d.get("backbone", "")),
                   pairs=int(d.get("pairs") or 0), dice_before=num(d.get("dice_before")),
                   dice_after=num(d.get("dice_after")), steps=int(d.get("steps") or 0),
                   parts=tuple(json.loads(d["parts"]) if isinstance(d.get("parts"), str) else d.get("parts", ())),
                   sha=str(d.get("sha", "")), note=str(d.get("note", "")))


@dataclass
class AddReport:
    """What adding one slice did."""

    added: list[PairInfo] = field(default_factory=list)
    updated: list[PairInfo] = field(default_factory=list)
    removed: list[PairInfo] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.added)} added, {len(self.updated)} updated, {len(self.removed)} removed"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def ranges_text(values: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    out, start, prev = [], None, None
    for v in values + [None]:
        if start is not None and (v is None or v != prev + 1):
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if v is not None and start is None:
            start = v
        prev = v
    return ", ".join(out)
