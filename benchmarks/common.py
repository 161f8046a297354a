"""Shared pieces of the benchmarks: devices, timing (warm-up + median), peak memory, machine description,
markdown tables and JSON output.

Peak memory of one call
- CUDA: ``torch.cuda.max_memory_allocated()`` during the call minus ``memory_allocated()`` before it
  (the tensors the call needed on top of what was already there: activations, workspaces, outputs).
- CPU (Linux): the process's peak resident set size during the call minus its resident set size just
  before it. Before the call the garbage collector runs, ``malloc_trim(0)`` hands freed heap pages back
  to the kernel (so memory freed by earlier calls cannot hide new allocations) and the kernel's peak
  counter (``VmHWM``) is reset by writing ``5`` to ``/proc/self/clear_refs``; after the call ``VmHWM`` is
  read from ``/proc/self/status``. ``tracemalloc`` would miss torch's allocations, which is why it is not
  used. Elsewhere (no ``/proc``) CPU memory is reported as missing (None).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MiB = 2**20


# ---- devices --------------------------------------------------------------------------------------------
def devices_for(arg: str) -> list[torch.device]:
    """``auto``: the CPU always, plus CUDA when present; ``cpu`` or ``cuda[:i]``: that device only."""
    if arg == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    dev = torch.device(arg)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {arg}: CUDA is not available on this machine (use cpu or auto).")
    if dev.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {arg}: the benchmarks run on cpu and cuda only.")
    return [dev]


def precision(device: torch.device) -> str:
    """The arithmetic a benchmark row runs in: bf16 autocast on CUDA where supported, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16 autocast"
    return "fp32"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context matching :func:`precision`."""
    if precision(device) == "bf16 autocast":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- memory ----------------------------------------------------------------------------------------------
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def cpu_memory_supported() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


class PeakMemory:
    """Context manager: ``.peak`` is the extra memory (bytes) the enclosed code needed at its peak, or
    None where it cannot be measured (see the module docstring for the method)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: int | None = None
        self._before = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
        elif cpu_memory_supported():
            if _LIBC is not None:
                _LIBC.malloc_trim(0)
            self._before = _proc_status()["VmRSS"]
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._before
        elif cpu_memory_supported():
            self.peak = max(0, _proc_status()["VmHWM"] - self._before)


# ---- timing ----------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """Seconds of each timed repeat and the largest peak memory seen over them (bytes or None)."""

    times: list[float] = field(default_factory=list)
    peak: int | None = None
    result: object = None  # what the last call returned

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": min(self.times, default=math.nan), "times_s": self.times,
                "repeats": len(self.times),
                "peak_mib": None if self.peak is None else self.peak / MiB}


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1,
            setup: Callable[[], object] | None = None, memory: bool = True) -> Measurement:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls; ``setup`` runs untimed
    before every call (e.g. to clear a cache). Peak memory is measured around each timed call; the last
    call's return value is kept in ``result``."""
    out = Measurement()
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        synchronize(device)
        mem = PeakMemory(device) if memory and i >= warmup else contextlib.nullcontext()
        with mem:
            t0 = time.perf_counter()
            out.result = fn()
            synchronize(device)
            dt = time.perf_counter() - t0
        if i >= warmup:
            out.times.append(dt)
            if memory and mem.peak is not None:
                out.peak = mem.peak if out.peak is None else max(out.peak, mem.peak)
    return out


def measure_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int = 3,
                        warmup: int = 1, memory: bool = True) -> dict[str, Measurement]:
    """Like :func:`measure` for several functions, called in turn within each repeat, so that a drift of
    the machine's speed (other processes, thermal) hits all of them alike and their ratio stays fair. The
    order rotates from one repeat to the next, so that no function always runs first (on a warm or a cold
    cache, right after another's memory was freed)."""
    out = {name: Measurement() for name in fns}
    names = list(fns)
    for i in range(warmup + repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            fn = fns[name]
            synchronize(device)
            mem = PeakMemory(device) if memory and i >= warmup else contextlib.nullcontext()
            with mem:
                t0 = time.perf_counter()
                fn()
                synchronize(device)
                dt = time.perf_counter() - t0
            if i >= warmup:
                out[name].times.append(dt)
                if memory and mem.peak is not None:
                    prev = out[name].peak
                    out[name].peak = mem.peak if prev is None else max(prev, mem.peak)
    return out


# ---- test data -------------------------------------------------------------------------------------------
def box_test_image(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The box -> mask rows' image: a synthetic textured object (scene 3 of family 0: ~4 % of the image) and
    its exact mask, ``size`` x ``size``."""
    from src_training.synthetic import synthetic_scene

    return synthetic_scene(0, 3).render((size, size))


# ---- machine ---------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # no /proc (not Linux): fall back to what platform knows
        return platform.processor() or platform.machine()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """What the numbers were measured on."""
    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_memory_method": "VmHWM delta after malloc_trim" if cpu_memory_supported() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        import napari_imedsam

        info["napari_imedsam"] = napari_imedsam.__version__
    except (ImportError, AttributeError):
        info["napari_imedsam"] = None
    return info


def machine_line(info: dict) -> str:
    gpu = f", GPU {info['gpu']} (CUDA {info['cuda']})" if info.get("gpu") else ", no GPU"
    load = info.get("load_average_at_start")
    load_txt = f", load average {load[0]:.1f} at start" if load else ""
    return (f"{info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']} with "
            f"{info['torch_threads']} threads{gpu}{load_txt}")


# ---- output ----------------------------------------------------------------------------------------------
def fmt(value, digits: int = 2, scale: float = 1.0, suffix: str = "") -> str:
    """A table cell: numbers rounded, missing or non-finite values as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        v = float(value) * scale
        return f"{v:.{digits}f}{suffix}" if math.isfinite(v) else "-"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "not met")


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_json(path: str | Path, payload: dict) -> Path:
    """Strict JSON (NaN and inf become null), parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(payload), indent=2) + "\n")
    return path


#: Where a ``--quick`` run writes its JSON unless ``--json`` says otherwise: outside the repository, so that
#: tiny test settings never replace the real results in ``benchmarks/results/``.
QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "napari-imedsam-benchmarks"


class _BenchmarkParser(argparse.ArgumentParser):
    """Fills in ``--json`` after parsing: ``benchmarks/results/NAME.json``, or for ``--quick`` a file under
    :data:`QUICK_RESULTS_DIR`."""

    def parse_known_args(self, args=None, namespace=None):
        ns, rest = super().parse_known_args(args, namespace)
        if getattr(ns, "json", "") is None:
            folder = QUICK_RESULTS_DIR if getattr(ns, "quick", False) else RESULTS_DIR
            ns.json = folder / f"{self.benchmark_name}.json"
        return ns, rest


def base_parser(name: str, description: str, repeats: bool = True) -> argparse.ArgumentParser:
    p = _BenchmarkParser(prog=f"python -m benchmarks.{name}", description=description)
    p.benchmark_name = name
    p.add_argument("--quick", action="store_true",
                   help=f"tiny settings (for tests): seconds, not minutes; writes {QUICK_RESULTS_DIR}/{name}.json "
                        "unless --json is given, never benchmarks/results/")
    p.add_argument("--json", type=Path, default=None,
                   help=f"where to write the results (default benchmarks/results/{name}.json)")
    p.add_argument("--device", default="auto",
                   help="auto (CPU, plus CUDA rows when a GPU is present), cpu, or cuda")
    if repeats:
        p.add_argument("--repeats", type=int, default=None, help="timed repeats per row (after one warm-up)")
    return p


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    """Print progress to stderr, so that stdout holds only the tables."""
    import sys

    t0 = time.perf_counter()
    print(f"[benchmarks] {title} ...", file=sys.stderr, flush=True)
    yield
    print(f"[benchmarks] {title}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
