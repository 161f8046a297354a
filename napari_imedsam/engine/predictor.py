"""``Predictor``: set an image once (its embedding is cached), then ask for masks of boxes at any output
resolution or window of the image, like segment-anything's ``SamPredictor`` but resolution-free."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..model.box_decoder import BoxFeatures
from ..model.device import resolve_device
from ..model.imedsam import IMedSAM
from ..model.preprocess import Prepared, prepare, validate_box
from .cache import EmbeddingCache
from .render import OUTSIDE_LOGIT, RenderStats, pixel_centres, render_logits

MAX_SIDE = 16384


def _device_of(model: IMedSAM) -> torch.device:
    return next(model.parameters()).device


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


class Predictor:
    """Box -> probability map in the image's own pixel frame (x right, y down).

    ``predict(box, out_shape=(h, w), region=(y0, x0, y1, x1))`` renders ``region`` (image pixels, may be
    fractional and extend past the image; default the whole image) at ``out_shape`` (default the region's
    size in pixels). Thread-safe: one lock around the model.

    ``device=None`` (the default) uses the model where it is and never moves it; naming a device
    (``"auto"``: cuda > mps > cpu, ``"cpu"``, ``"cuda:1"``) asks for the model to be moved there, in place as
    ``nn.Module.to`` does, now and whenever ``model`` is swapped. The model is put in eval mode."""

    def __init__(self, model: IMedSAM, device: str | torch.device | None = None, cache_bytes: int = 512 * 2**20,
                 chunk: int = 32768):
        self._moves_model = device is not None
        self.device = resolve_device(device) if device is not None else _device_of(model)
        self._model = self._placed(model)
        self.cache = EmbeddingCache(cache_bytes)
        self.chunk = int(chunk)
        self._lock = threading.RLock()
        self._prepared: Prepared | None = None
        self._embedding: torch.Tensor | None = None
        self._image_key: str | None = None
        self._boxes: OrderedDict[tuple, tuple[BoxFeatures, torch.Tensor | None]] = OrderedDict()
        self.last_stats: RenderStats | None = None

    # ---- model and image ---------------------------------------------------------------------------------
    @property
    def model(self) -> IMedSAM:
        return self._model

    @model.setter
    def model(self, model: IMedSAM) -> None:
        """Swap the model (e.g. new adapters); the current image is re-embedded on next use."""
        with self._lock:
            self._model = self._placed(model)
            self._embedding = None
            self._boxes.clear()

    def _placed(self, model: IMedSAM) -> IMedSAM:
        if self._moves_model:
            model = model.to(self.device)
        else:
            self.device = _device_of(model)
        return model.eval()

    @property
    def is_image_set(self) -> bool:
        return self._prepared is not None

    @property
    def image_hw(self) -> tuple[int, int]:
        return self._require_image().image_hw

    def _model_key(self) -> tuple[str, str]:
        return self._model.backbone_hash, self._model.encoder_adapter_hash()

    def _decoder_key(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in self._model.adapter_state_dict().items():
            if not name.startswith("encoder."):
                digest.update(tensor.float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def set_image(self, image: np.ndarray, window: tuple[float, float] | None = None) -> None:
        """2-D grey, HxWx3 RGB or HxWx4 RGBA, any numeric dtype; CT in HU with ``window=(lo, hi)``."""
        prep = prepare(image, self._model.image_size, window)
        key = hashlib.sha256(prep.tensor.numpy().tobytes()).hexdigest()
        with self._lock:
            self._prepared, self._image_key = prep, key
            self._embedding = None
            self._boxes.clear()
            self._ensure_embedding()

    def _ensure_embedding(self) -> torch.Tensor:
        self._require_image()
        if self._embedding is None:
            key = (self._image_key, *self._model_key())
            emb = self.cache.get(key)
            if emb is None:
                with torch.no_grad():
                    emb = self._model.encode(self._prepared.tensor.to(self.device))
                self.cache.put(key, emb)
            self._embedding = emb
        return self._embedding

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding (computed once per image and model, then cached), as SAM's."""
        with self._lock:
            return self._ensure_embedding()

    def reset_image(self) -> None:
        """Forget the current image (its cached embedding stays in ``cache`` for a later ``set_image``)."""
        with self._lock:
            self._prepared = self._image_key = self._embedding = None
            self._boxes.clear()

    def clear_prompt_cache(self) -> None:
        """Forget the per-box features, so the next query runs the box decoder again (benchmarks)."""
        with self._lock:
            self._boxes.clear()

    def transform_coords(self, xy) -> np.ndarray:
        """Points (N, 2) as (x, y) in the image's pixel frame -> the model input's pixel frame."""
        sy, sx = self._require_image().scale_yx
        return np.asarray(xy, dtype=np.float32).reshape(-1, 2) * np.array([sx, sy], dtype=np.float32)

    def transform_box(self, box) -> np.ndarray:
        """A box (x0, y0, x1, y1) in image pixels -> the model input's pixel frame, as ``decode_box`` takes."""
        return self.transform_coords(np.asarray(box, dtype=np.float32).reshape(2, 2)).reshape(4)

    def _require_image(self) -> Prepared:
        if self._prepared is None:
            raise RuntimeError("No image set: call set_image(image) first.")
        return self._prepared

    def invalidate(self) -> None:
        """Forget embeddings and box features (call after changing the model's weights in place)."""
        with self._lock:
            self.cache.clear()
            self._embedding = None
            self._boxes.clear()

    # ---- boxes -----------------------------------------------------------------------------------------
    def _box_state(self, box) -> tuple[BoxFeatures, torch.Tensor | None]:
        prep = self._require_image()
        clipped = validate_box(box, prep.image_hw)
        emb_key = self._model_key()
        key = (self._image_key, *emb_key, self._decoder_key(), tuple(round(v, 4) for v in clipped))
        if key in self._boxes:
            self._boxes.move_to_end(key)
            return self._boxes[key]
        emb = self._ensure_embedding()
        b = torch.from_numpy(self.transform_box(clipped)).to(self.device)[None]
        valid = torch.tensor([prep.valid_hw], device=self.device, dtype=torch.float32)
        with torch.no_grad():
            feats = self._model.decode_box(emb, b)
            tau = self._model.uncertainty_threshold(feats, valid)
        self._boxes[key] = (feats, tau)
        while len(self._boxes) > 32:
            self._boxes.popitem(last=False)
        return feats, tau

    def _points_to_input(self, xy: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.transform_coords(xy)).to(self.device)

    def _query(self, feats: BoxFeatures, tau, xy: np.ndarray, what: str) -> np.ndarray:
        valid = torch.tensor([self._prepared.valid_hw], device=self.device, dtype=torch.float32)
        out = np.empty(len(xy), dtype=np.float32)
        for s in range(0, len(xy), self.chunk):
            pts = self._points_to_input(xy[s : s + self.chunk]).unsqueeze(0)
            with torch.no_grad():
                if what == "backbone":
                    grid = (pts / self._model.image_size * 2 - 1).unsqueeze(2)
                    val = torch.nn.functional.grid_sample(feats.lowres_logit, grid, mode="bilinear",
                                                          padding_mode="border", align_corners=False)[0, 0, :, 0]
                elif what == "uncertainty":
                    x, base = self._model.point_inputs(feats, pts, valid)
                    val = self._model.mc_variance_of(x, base)[0]
                else:
                    val = self._model.query(feats, pts, valid, tau)[0][0]
            out[s : s + len(val)] = val.float().cpu().numpy()
        return out

    def _grid(self, region, out_shape) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
        h, w = self.image_hw
        region = (0.0, 0.0, float(h), float(w)) if region is None else tuple(float(v) for v in region)
        if len(region) != 4 or not np.isfinite(region).all() or region[2] <= region[0] or region[3] <= region[1]:
            raise ValueError(f"region must be (y0, x0, y1, x1) with y1 > y0 and x1 > x0, got {region}.")
        if out_shape is None:
            out_shape = (max(1, int(round(region[2] - region[0]))), max(1, int(round(region[3] - region[1]))))
        out_shape = tuple(int(v) for v in out_shape)
        if len(out_shape) != 2 or min(out_shape) < 1 or max(out_shape) > MAX_SIDE:
            raise ValueError(f"out_shape must be two positive sizes up to {MAX_SIDE}, got {out_shape}.")
        return region, out_shape

    # ---- public queries ----------------------------------------------------------------------------------
    def predict(self, box, out_shape: tuple[int, int] | None = None,
                region: tuple[float, float, float, float] | None = None, dense: bool = False,
                return_logits: bool = False) -> np.ndarray:
        """Probabilities (float32, ``out_shape``) of the object in ``box`` (x0, y0, x1, y1, image pixels).

        Adaptive rendering by default; ``dense=True`` queries every pixel (for checking).
        ``self.last_stats`` tells how many INR points were evaluated."""
        with self._lock:
            region, out_shape = self._grid(region, out_shape)
            feats, tau = self._box_state(box)
            logits, stats = render_logits(lambda xy: self._query(feats, tau, xy, "inr"), region, out_shape,
                                          self.image_hw, dense=dense)
            self.last_stats = stats
        return logits if return_logits else _sigmoid(logits)

    def predict_backbone(self, box, out_shape: tuple[int, int] | None = None,
                         region: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """The backbone decoder's own low-resolution mask, bilinearly resampled to the same grid: the
        discrete baseline the INR is compared against."""
        return self._dense(box, out_shape, region, "backbone", _sigmoid)

    def uncertainty(self, box, out_shape: tuple[int, int] | None = None,
                    region: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """MC-dropout variance of the coarse head's probability (0 outside the image)."""
        if not self._model.config.ugs:
            raise ValueError("This model has uncertainty-guided sampling switched off (config.ugs=False).")
        return self._dense(box, out_shape, region, "uncertainty", lambda v: v.astype(np.float32))

    def _dense(self, box, out_shape, region, what, finish) -> np.ndarray:
        with self._lock:
            region, out_shape = self._grid(region, out_shape)
            feats, tau = self._box_state(box)
            ys, xs = pixel_centres(region, out_shape)
            h, w = self.image_hw
            iy, ix = (ys >= 0) & (ys < h), (xs >= 0) & (xs < w)
            fill = OUTSIDE_LOGIT if what == "backbone" else 0.0
            out = np.full(out_shape, fill, dtype=np.float32)
            if iy.any() and ix.any():
                gy, gx = np.meshgrid(ys[iy], xs[ix], indexing="ij")
                vals = self._query(feats, tau, np.stack([gx.ravel(), gy.ravel()], -1), what)
                out[np.ix_(iy, ix)] = vals.reshape(gy.shape)
        return finish(out)
