"""Keep torch from importing triton into a process whose OpenGL driver already loaded LLVM.

napari's canvas on Mesa (llvmpipe in VMs and headless X, radeonsi on AMD) maps ``libLLVM``; triton bundles
its own LLVM, and importing it afterwards segfaults the whole viewer (seen with torch 2.14 / Mesa LLVM 14-15:
``import torchvision`` -> ``torch._dynamo`` -> ``import triton``). The plugin never uses triton (no
``torch.compile``), so when an LLVM is already mapped and triton is not yet imported, torch is told that
triton is absent. Nothing changes anywhere else (other OSes, or triton already imported).

Applied by the model package on import, by ``build_model`` and by the training loop: the points where the
plugin first imports torch, torchvision and the optimizer's ``torch._dynamo``.
"""

from __future__ import annotations

import sys


def llvm_loaded() -> bool:
    """True when a shared LLVM library is mapped into this process (Linux only)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            return any("libLLVM" in line for line in fh)
    except OSError:
        return False


def apply() -> bool:
    """Block ``import triton`` if that would clash with a loaded LLVM; returns whether it was blocked."""
    if "triton" in sys.modules or not sys.platform.startswith("linux") or not llvm_loaded():
        return False
    sys.modules["triton"] = None  # importing it now raises ImportError, which torch treats as "no triton"
    return True

