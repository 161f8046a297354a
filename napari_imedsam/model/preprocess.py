"""Image -> encoder input: validation, CT windowing, [0, 1] scaling, resize of the long side, padding.

``Prepared`` remembers the mapping so that predictions come back in the image's own pixel frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Prepared:
    tensor: torch.Tensor  # (1, 3, S, S) in [0, 1], image top-left, zero padding right/bottom
    image_hw: tuple[int, int]  # original size
    valid_hw: tuple[int, int]  # resized image size inside the padded input
    scale_yx: tuple[float, float]  # input pixels per image pixel, per axis

    def to_input(self, xy: np.ndarray | torch.Tensor):
        """Image-pixel (x, y) coordinates -> encoder-input pixels."""
        return xy * xy.new_tensor([self.scale_yx[1], self.scale_yx[0]]) if torch.is_tensor(xy) else \
            xy * np.array([self.scale_yx[1], self.scale_yx[0]])


_F32_SAFE = float(np.finfo(np.float32).max) / 4  # below this, differences of values stay finite in float32


def as_numpy(value, what: str) -> np.ndarray:
    """``value`` as a numpy array; torch tensors (on any device, requiring grad or not) are detached first."""
    if torch.is_tensor(value):
        value = value.detach()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be an array of numbers; got {type(value).__name__} ({exc}).") from exc


def validate_window(window) -> tuple[float, float]:
    """A display/CT window ``(low, high)`` of two finite real numbers with high > low."""
    try:
        n = len(window)
    except TypeError:
        n = None
    if isinstance(window, (str, bytes, dict)) or n != 2:
        raise ValueError(f"Window must be two numbers (low, high), e.g. window=(-125, 275) for CT in HU; got "
                         f"{window!r}.")
    try:
        if any(isinstance(v, (bool, np.bool_, str, bytes)) or np.iscomplexobj(v) for v in window):
            raise TypeError("not a real number")
        lo, hi = float(window[0]), float(window[1])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Window must be two real numbers (low, high); got {window!r} ({exc}).") from exc
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"Window must be (low, high) with finite values and high > low, got {window!r}.")
    return lo, hi


def rescale_unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(arr - lo) / (hi - lo) as float32, without overflow for any finite values (float64 where float32 would
    overflow, e.g. near ``finfo(float32).max``)."""
    span = hi - lo
    if max(abs(lo), abs(hi), span) < _F32_SAFE:
        work = arr.astype(np.float32, copy=False)
        return (work - np.float32(lo)) / np.float32(span)
    scale = max(abs(lo), abs(hi))  # divide first: near float64's maximum even hi - lo overflows
    low, high = lo / scale, hi / scale
    return ((arr.astype(np.float64) / scale - low) / (high - low)).astype(np.float32)


def image_to_unit(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Any 2-D grey / HxWx3 RGB / HxWx4 RGBA numeric image -> HxWx3 float32 in [0, 1].

    With ``window=(lo, hi)`` (CT in Hounsfield units) values are clipped to the window and rescaled;
    otherwise the image is min-max scaled. A constant image becomes all zeros (documented, not an error).
    The scaling is exact for any finite values, up to the dtype's maximum (computed in float64 where
    float32 would overflow). Torch tensors are accepted (detached, copied to the CPU)."""
    arr = as_numpy(image, "Image")
    if arr.dtype == bool:
        arr = arr.astype(np.float32)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"Image must hold real numbers, got dtype {arr.dtype}.")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(
            f"Expected a 2-D grey image (H, W), RGB (H, W, 3) or RGBA (H, W, 4); got shape {arr.shape}. "
            "For a volume pass one slice; for other channel layouts pick or merge channels first."
        )
    if min(arr.shape[:2]) < 2:
        raise ValueError(f"Image is too small to segment: shape {arr.shape}.")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            raise ValueError(
                f"Image has {int((~finite).sum())} NaN or infinite pixels; replace them first "
                "(e.g. numpy.nan_to_num(image, nan=image_min)) so that the model sees defined values."
            )
    data_lo, data_hi = float(arr.min()), float(arr.max())
    if not (np.isfinite(data_lo) and np.isfinite(data_hi)):
        raise ValueError(f"Image values reach {data_lo:g}..{data_hi:g}, beyond float64; rescale the image first.")
    if window is not None:
        lo, hi = validate_window(window)
        out = np.clip(rescale_unit(arr, lo, hi), 0.0, 1.0)
    elif data_hi > data_lo:
        out = np.clip(rescale_unit(arr, data_lo, data_hi), 0.0, 1.0)
    else:
        out = np.zeros(arr.shape, np.float32)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def prepare(image: np.ndarray, size: int, window: tuple[float, float] | None = None) -> Prepared:
    """Scale the long side to ``size`` (antialiased bilinear) and pad to a square, as SAM does."""
    unit = image_to_unit(image, window)
    h, w = unit.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    t = torch.from_numpy(unit).permute(2, 0, 1).unsqueeze(0)
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    t = F.pad(t, (0, size - nw, 0, size - nh))
    return Prepared(t.contiguous(), (h, w), (nh, nw), (nh / h, nw / w))


def validate_box(box, image_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) in image pixels, clipped to the image. Zero-area, non-finite or wholly
    outside boxes are a ``ValueError`` that says what was wrong."""
    if isinstance(box, (str, bytes, dict)) or box is None:
        raise ValueError(f"A box is 4 numbers (x0, y0, x1, y1) in image pixels; got {type(box).__name__} {box!r:.80}.")
    raw = as_numpy(box, "A box")
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"A box is 4 real numbers (x0, y0, x1, y1) in image pixels; got {raw.dtype} values "
                         f"{raw.tolist()!r:.80}.")
    arr = raw.astype(np.float64).reshape(-1)
    if arr.size != 4:
        raise ValueError(f"A box is 4 numbers (x0, y0, x1, y1) in image pixels; got {arr.size}.")
    if not np.isfinite(arr).all():
        raise ValueError(f"Box has non-finite coordinates: {arr.tolist()}.")
    x0, x1 = sorted((arr[0], arr[2]))
    y0, y1 = sorted((arr[1], arr[3]))
    h, w = image_hw
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise ValueError(f"Box {arr.tolist()} has zero area; draw a box with a width and a height.")
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"Box {arr.tolist()} lies wholly outside the {w}x{h} image.")
    return float(cx0), float(cy0), float(cx1), float(cy1)
