"""Training checkpoints (``last.ckpt``): everything needed to continue a run exactly.

Written atomically (temp file in the same folder, then ``os.replace``) with ``torch.save``, and read
back with ``torch.load(..., weights_only=True)`` only: the payload holds tensors, numbers, strings, lists
and dicts (configs and the python RNG state as JSON strings), never arbitrary objects.

Exact resumption does not hinge on RNG snapshots: the data order (``batching.IndexStream``), each sample's
box jitter and points (``batching.sample_rngs``) and each step's dropout draws (torch re-seeded per step
and rank) are pure functions of (seed, step, ...). The torch / python RNG states are stored as well.
"""

from __future__ import annotations

import csv
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "imedsam-train-checkpoint-v1"
CHECKPOINT_NAME = "last.ckpt"


def capture_rng(device: torch.device) -> dict[str, Any]:
    """torch (CPU and the training CUDA device) and python ``random`` states, weights_only-safe."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate())}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomic ``torch.save``: a crash leaves the previous checkpoint intact, never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights_only; CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint to resume from at {path}; start without --resume.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt or foreign files
        raise ValueError(f"{path} is not a readable training checkpoint ({type(exc).__name__}: {exc}).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an I-MedSAM training checkpoint (expected format {FORMAT}).")
    return payload


def write_json(path: str | Path, data: Any) -> Path:
    """Atomic JSON write; NaN and inf become null so the file is strict JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=False))
    os.replace(tmp, path)
    return path


def write_csv(path: str | Path, rows: list[dict]) -> Path | None:
    """Atomic CSV of dict rows (columns: every key seen, in order of appearance); nothing for no rows."""
    if not rows:
        return None
    path = Path(path)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
