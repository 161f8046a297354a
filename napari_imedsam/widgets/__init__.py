"""Qt widgets (thin, over the engine). Importing them happens after napari's canvas exists, which is when
triton must be kept away from Mesa's LLVM (see ``_triton_guard``)."""

from . import _triton_guard

_triton_guard.apply()
