"""Where the official SAM checkpoints come from, where they are cached, and how they are fetched.

No Qt, no napari, nothing happens at import: the cache folder is created only when a download starts.

Resolution order of :func:`resolve_checkpoint`: an explicit path, then the cache folder
(``$IMEDSAM_CACHE``, default ``platformdirs.user_cache_dir("napari-imedsam")/checkpoints``), then,
only with ``download=True``, a download. Without a file and without permission to download it
raises :class:`CheckpointNotFound` saying which file to put where, for machines without internet.

What the registry's numbers rest on (checked while writing this module):

* Addresses: the "Model Checkpoints" section of the segment-anything README (Meta).
* Sizes and SHA-256: Meta publishes neither. The same values are used for verification by several
  independent public projects that download these files (e.g. micro-sam's pooch registry, which
  refuses a file whose SHA-256 differs, and other download scripts listing byte sizes), and they
  agree with each other; not re-hashed here (no internet on the build machine).
* MD5: the same projects (IOPaint/lama-cleaner, and ``md5sum`` listings) give full MD5s whose
  first six hex digits are the suffix of each file name (01ec64, 0b3195, 4b8939), matching the
  SAM naming convention; we check the full MD5 too.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

ENV_CACHE = "IMEDSAM_CACHE"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CheckpointSpec:
    """One downloadable checkpoint: file name, address, size in bytes and hashes (None: unknown)."""

    name: str
    filename: str
    url: str
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None  # a full hex MD5 or a prefix of it


SAM_CHECKPOINTS: Mapping[str, CheckpointSpec] = MappingProxyType({
    "sam_vit_b": CheckpointSpec(
        "sam_vit_b", "sam_vit_b_01ec64.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        375042383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        "01ec64d29a2fca3f0661936605ae66f8"),
    "sam_vit_l": CheckpointSpec(
        "sam_vit_l", "sam_vit_l_0b3195.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        1249524607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        "0b3195507c641ddb6910d2bb5adee89c"),
    "sam_vit_h": CheckpointSpec(
        "sam_vit_h", "sam_vit_h_4b8939.pth",
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        2564550879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        "4b8939a88964f0f4ff5f5b2642c598a6"),
})


class CheckpointNotFound(FileNotFoundError):
    """The checkpoint is neither at the given path nor in the cache (and was not downloaded)."""


class OfflineError(CheckpointNotFound):
    """The download failed: server unreachable, timed out, HTTP error, or connection cut."""


class ChecksumError(ValueError):
    """A file's size or hash differs from the registry; it was not put in the cache."""


class CheckpointError(ValueError):
    """A checkpoint file is unusable before it is even loaded: empty, cut short, a folder, not a checkpoint."""


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """Cheap checks of a checkpoint file before it is loaded (nothing is unpickled, nothing big is read):
    it exists, is a file, is not empty, and a safetensors file holds every byte its header promises
    (a torch zip checkpoint: its zip directory is complete)."""
    p = Path(path).expanduser()
    if p.is_dir():
        inside = sorted(f.name for f in p.iterdir() if f.suffix in (".pth", ".pt", ".safetensors"))[:3]
        hint = f" It holds {inside}: pass one of them." if inside else ""
        raise CheckpointError(f"checkpoint {p} is a folder, not a file.{hint}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {p}")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); the download or copy did not finish.")
    with open(p, "rb") as fh:
        head = fh.read(8)
        if p.suffix == ".safetensors":
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or 8 + n > size:
                raise CheckpointError(f"checkpoint {p} is not a complete safetensors file ({size:,} bytes, header "
                                      f"length {n}); it is cut short or not a safetensors file.")
            try:
                header = json.loads(fh.read(n))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise CheckpointError(f"checkpoint {p} has a damaged safetensors header ({exc}).") from exc
            if 8 + n + end > size:
                raise CheckpointError(f"checkpoint {p} is cut short: its header promises {8 + n + end:,} bytes, the "
                                      f"file holds {size:,}. Copy or download it again.")
        elif head[:4] == b"PK\x03\x04":  # torch's zip format: a cut file has no central directory
            import zipfile

            try:
                zipfile.ZipFile(p).close()
            except zipfile.BadZipFile as exc:
                raise CheckpointError(f"checkpoint {p} is cut short or damaged ({size:,} bytes; {exc}). Copy or "
                                      "download it again.") from exc
    return p


def default_cache_dir() -> Path:
    """``$IMEDSAM_CACHE`` if set, else the per-user cache folder + ``checkpoints`` (not created here)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-imedsam")) / "checkpoints"


def checkpoint_spec(name: str, registry: Mapping[str, CheckpointSpec] | None = None) -> CheckpointSpec:
    """The registry entry for ``name`` (``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h``)."""
    registry = SAM_CHECKPOINTS if registry is None else registry
    try:
        return registry[name]
    except KeyError:
        raise ValueError(f"unknown checkpoint {name!r}; known: {sorted(registry)}") from None


def offline_message(spec: CheckpointSpec, cache_dir: Path) -> str:
    """Instructions to place the checkpoint by hand (for a machine without internet)."""
    size = f" ({spec.size:,} bytes)" if spec.size else ""
    return (f"SAM checkpoint '{spec.name}' not found. Place the file {spec.filename}{size} in the cache "
            f"folder {cache_dir} (i.e. {Path(cache_dir) / spec.filename}). On a machine with internet, "
            f"fetch it from {spec.url}. Set the environment variable {ENV_CACHE} to use another cache "
            "folder, pass the file's path explicitly, or allow the download.")


def resolve_checkpoint(name: str, path: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None, download: bool = False,
                       progress: Progress | None = None,
                       registry: Mapping[str, CheckpointSpec] | None = None) -> Path:
    """Path of checkpoint ``name``: explicit ``path``, else the cache, else (if allowed) a download."""
    if path is not None:
        return check_checkpoint_file(path)
    spec = checkpoint_spec(name, registry)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / spec.filename
    if target.is_file():
        actual = target.stat().st_size
        if spec.size is not None and actual != spec.size:
            raise ChecksumError(f"{target} has {actual:,} bytes, expected {spec.size:,}: it is incomplete or "
                                f"a different file. Delete it and place the right file (from {spec.url}).")
        return target
    if not download:
        raise CheckpointNotFound(offline_message(spec, cache))
    try:
        return download_file(spec.url, target, expected_size=spec.size, sha256=spec.sha256,
                             md5_prefix=spec.md5, progress=progress)
    except OfflineError as exc:
        raise OfflineError(f"{exc}\n{offline_message(spec, cache)}") from exc


def _hashes(path: Path, chunk_size: int = 1 << 20) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def verify_file(path: str | os.PathLike, expected_size: int | None = None, sha256: str | None = None,
                md5_prefix: str | None = None) -> None:
    """Raise :class:`ChecksumError` if the file's size, SHA-256 or MD5 (prefix) differs."""
    path = Path(path)
    actual = path.stat().st_size
    if expected_size is not None and actual != expected_size:
        raise ChecksumError(f"{path.name}: {actual:,} bytes, expected {expected_size:,}")
    if sha256 is None and md5_prefix is None:
        return
    sha, md5 = _hashes(path)
    if sha256 is not None and sha != sha256.lower():
        raise ChecksumError(f"{path.name}: SHA-256 {sha}, expected {sha256}")
    if md5_prefix is not None and not md5.startswith(md5_prefix.lower()):
        raise ChecksumError(f"{path.name}: MD5 {md5}, expected one starting with {md5_prefix}")


def _open(url: str, offset: int, timeout: float) -> Any:
    headers = {"User-Agent": "napari-imedsam"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def download_file(url: str, dest: str | os.PathLike, expected_size: int | None = None,
                  sha256: str | None = None, md5_prefix: str | None = None,
                  progress: Progress | None = None, chunk_size: int = 1 << 20,
                  timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it, verifying, then renaming.

    An existing ``.part`` is resumed with an HTTP Range request (a server that answers 200 instead
    of 206 restarts from zero). After a size/hash mismatch the ``.part`` is deleted (resuming a
    corrupt file would only fail again) and :class:`ChecksumError` is raised, so ``dest`` is never
    a bad file. Network failures raise :class:`OfflineError`; an interrupted transfer keeps the
    ``.part`` for the next call. ``progress(done_bytes, total_bytes)`` is called per chunk
    (total 0 when unknown).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        part.unlink()
        offset = 0
    done, total = offset, expected_size or 0
    if expected_size is None or offset < expected_size:
        try:
            try:
                resp = _open(url, offset, timeout)
            except urllib.error.HTTPError as exc:
                if exc.code != 416 or offset == 0:
                    raise
                part.unlink()  # range not satisfiable: the .part is stale, start over
                offset = done = 0
                resp = _open(url, 0, timeout)
            with resp:
                if offset > 0 and resp.status != 206:
                    offset = done = 0  # server ignored the Range header: restart from zero
                length = resp.headers.get("Content-Length")
                if length is not None:
                    total = offset + int(length)
                with open(part, "ab" if offset > 0 else "wb") as fh:
                    if progress is not None:
                        progress(done, total)
                    while True:
                        block = resp.read(chunk_size)
                        if not block:
                            break
                        fh.write(block)
                        done += len(block)
                        if progress is not None:
                            progress(done, total)
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or exc
            kept = f" {done:,} bytes are kept in {part} and the next call resumes." if part.exists() else ""
            raise OfflineError(f"could not download {url} ({reason}).{kept} Alternatively fetch it on a "
                               f"machine with internet and place it at {dest}.") from exc
        if total and done < total:
            raise OfflineError(f"the connection to {url} closed after {done:,} of {total:,} bytes; the "
                               f"partial file {part} is kept and the next call resumes it.")
    try:
        verify_file(part, expected_size, sha256, md5_prefix)
    except ChecksumError as exc:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"download of {url} failed verification ({exc}); the partial file was deleted. "
                            f"Try again, or place a verified copy at {dest}.") from exc
    os.replace(part, dest)
    return dest


class TqdmProgress:
    """A ``progress(done, total)`` callable that drives a tqdm bar (for the command line)."""

    def __init__(self, desc: str = "download") -> None:
        self.desc = desc
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total or None, initial=done, unit="B", unit_scale=True,
                             unit_divisor=1024, desc=self.desc)
        self._bar.update(done - self._bar.n)
        if total and done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def tqdm_progress(desc: str = "download") -> TqdmProgress:
    """A progress callback for :func:`download_file`/:func:`resolve_checkpoint` that shows a tqdm bar."""
    return TqdmProgress(desc)
