"""``Predictor``: set an image once (its embedding is cached), then ask for masks of boxes at any output
resolution or window of the image, like segment-anything's ``SamPredictor`` but resolution-free."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch

from ..io.export import RequestTooLarge, check_request_size  # noqa: F401 - RequestTooLarge: callers catch it here
from ..model.box_decoder import BoxFeatures
from ..model.device import resolve_device
from ..model.imedsam import IMedSAM
from ..model.preprocess import Prepared, prepare
from .cache import EmbeddingCache
from .click_merge import merge_click
from .prompts import make_prompt, mask_input
from .render import OUTSIDE_LOGIT, RenderStats, pixel_centres, render_logits

MAX_SIDE = 16384
CHUNK_BYTES = 24 * 2**20  # activations of one model call over a chunk of query points
BACKBONE_CHUNK = 2**18  # points per call for the backbone's own logit (a bilinear lookup: 8 bytes a point)
#: Working memory of one render per output pixel (logits, estimates, masks, interpolation temporaries, result).
RENDER_BYTES_PER_PIXEL = 40
#: Default bound on one request's working memory (``Predictor.max_request_bytes``): 4 GiB, ~10k x 10k pixels.
MAX_REQUEST_BYTES = 4 * 2**30


class PredictorError(ValueError, RuntimeError):
    """The predictor is not ready for the call (e.g. ``predict`` before ``set_image``). A ``ValueError`` like
    every other bad-argument error of the API (and a ``RuntimeError`` for code written before it existed)."""


def _whole(value, what: str) -> int:
    """An integer given as an int or an integral float (not a bool, not inf/NaN)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be an integer, got {value!r}.")
    if not np.isfinite(value) or float(value) != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}.")
    return int(value)


def _device_of(model: IMedSAM) -> torch.device:
    return next(model.parameters()).device


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 probabilities, computed in one buffer (a full-size map at 4x zoom is 16 MB per temporary)."""
    y = np.clip(np.asarray(x, dtype=np.float32), -60, 60)
    np.negative(y, out=y)
    np.exp(y, out=y)
    y += 1
    return np.reciprocal(y, out=y)


class Predictor:
    """Box -> probability map in the image's own pixel frame (x right, y down).

    ``predict(box, out_shape=(h, w), region=(y0, x0, y1, x1))`` renders ``region`` (image pixels, may be
    fractional and extend past the image; default the whole image) at ``out_shape`` (default the region's
    size in pixels). Thread-safe: one lock around the model.

    ``device=None`` (the default) uses the model where it is and never moves it; naming a device
    (``"auto"``: cuda > mps > cpu, ``"cpu"``, ``"cuda:1"``) asks for the model to be moved there, in place as
    ``nn.Module.to`` does, now and whenever ``model`` is swapped. The model is put in eval mode.

    Clicks refine progressively (``progressive_clicks=True``, the default): each click changes only the
    region it points at, merged into the mask of the clicks before it (``click_merge``), so clicks are an
    ordered list; ``False`` decodes box + all clicks at once, as SAM does."""

    def __init__(self, model: IMedSAM, device: str | torch.device | None = None, cache_bytes: int = 512 * 2**20,
                 chunk: int = 32768, max_request_bytes: float = MAX_REQUEST_BYTES,
                 progressive_clicks: bool = True):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "encode"):
            raise ValueError(f"Predictor needs an I-MedSAM model (from load_model), got {type(model).__name__}.")
        if device is not None:
            if not isinstance(device, (str, torch.device)):
                raise ValueError(f"device must be None (use the model where it is), 'auto', 'cpu', 'cuda', 'cuda:N', "
                                 f"'mps' or a torch.device; got {device!r}.")
            try:
                parsed = device if isinstance(device, torch.device) or device == "auto" else torch.device(device)
            except RuntimeError as exc:
                raise ValueError(f"Unknown device {device!r}; use 'auto', 'cuda', 'cuda:N', 'mps' or 'cpu'.") from exc
            if isinstance(parsed, torch.device) and parsed.type == "cuda" and parsed.index is not None \
                    and torch.cuda.is_available() and parsed.index >= torch.cuda.device_count():
                raise ValueError(f"Device {device!r} is not available: this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s).")
        self.chunk = _whole(chunk, "chunk (points per INR query)")
        if self.chunk < 1:
            raise ValueError(f"chunk (points per INR query) must be at least 1, got {chunk!r}.")
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, (int, float, np.integer, np.floating)) \
                or not cache_bytes >= 0 or not np.isfinite(cache_bytes):
            raise ValueError(f"cache_bytes must be a size in bytes >= 0, got {cache_bytes!r}.")
        if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, (int, float)) \
                or not max_request_bytes > 0:
            raise ValueError(f"max_request_bytes must be a positive size in bytes, got {max_request_bytes!r}.")
        self.max_request_bytes = max_request_bytes
        #: Each click only changes the region it points at (``click_merge``); False: SAM's way, every click
        #: re-decodes the whole object from box + all clicks.
        self.progressive_clicks = bool(progressive_clicks)
        self._moves_model = device is not None
        self.device = resolve_device(device) if device is not None else _device_of(model)
        self._model = self._placed(model)
        self.cache = EmbeddingCache(int(cache_bytes))
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
        return self._model.backbone_hash, self._model.fingerprint("encoder")

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
            raise PredictorError("No image set: call set_image(image) first.")
        return self._prepared

    def invalidate(self) -> None:
        """Forget embeddings and box features (call after changing the model's weights in place)."""
        with self._lock:
            self.cache.clear()
            self._embedding = None
            self._boxes.clear()

    # ---- prompts ---------------------------------------------------------------------------------------
    def _prompt_state(self, box, points=None, point_labels=None, mask_prompt=None, merge: bool = True
                      ) -> tuple[BoxFeatures, torch.Tensor | None]:
        """The decoder's features and UGS threshold for a prompt, cached by the prompt's key. With
        ``progressive_clicks`` (and ``merge``) the last click is merged into the state of the clicks before it
        (``click_merge``), which the cache holds from the previous click."""
        prep = self._require_image()
        prompt = make_prompt(box, points, point_labels, mask_prompt, prep.image_hw)
        merge = merge and self.progressive_clicks and prompt.points is not None \
            and (prompt.box is not None or len(prompt.points) > 1)
        emb_key = self._model_key()
        key = (self._image_key, *emb_key, self._model.fingerprint("decoder"), prompt.key(), merge)
        if key in self._boxes:
            self._boxes.move_to_end(key)
            return self._boxes[key]
        emb = self._ensure_embedding()
        dev = self.device
        b = None if prompt.box is None else torch.from_numpy(self.transform_box(prompt.box)).to(dev)[None]
        pts = lab = mask = xy = None
        if prompt.points is not None:
            xy = self.transform_coords(prompt.points)  # input pixels; the last one is the click a merge places
            pts = torch.from_numpy(xy).to(dev)[None]
            lab = torch.from_numpy(prompt.labels).to(dev)[None]
        if prompt.mask is not None:
            mask = mask_input(prompt.mask, prep, self._model.box_decoder.mask_input_size, self._model.image_size, dev)
        valid = torch.tensor([prep.valid_hw], device=dev, dtype=torch.float32)
        with torch.no_grad():
            feats = self._model.decode_prompt(emb, b, pts, lab, mask)
        if merge:
            before = prompt.points[:-1] if len(prompt.points) > 1 else None
            labels_before = prompt.labels[:-1] if before is not None else None
            previous, _ = self._prompt_state(prompt.box, before, labels_before, mask_prompt)
            feats = merge_click(previous, feats, xy[-1], bool(prompt.labels[-1] == 1), self._model.image_size)
        with torch.no_grad():
            tau = self._model.uncertainty_threshold(feats, valid)
        self._boxes[key] = (feats, tau)
        while len(self._boxes) > 32:
            self._boxes.popitem(last=False)
        return feats, tau

    def _points_to_input(self, xy: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.transform_coords(xy)).to(self.device)

    def _points_per_chunk(self) -> int:
        """Points per model call: ``chunk``, fewer when the heads are wide, so that one call's activations
        (the MC-dropout passes hold ``mc_samples`` copies of the widest layer) stay near ``CHUNK_BYTES``."""
        cfg = self._model.config
        widest = max((*cfg.coarse_hidden, *cfg.fine_hidden, self._model.point_dim))
        per_point = 4 * (self._model.point_dim + (cfg.mc_samples + 2) * widest)
        return max(256, min(self.chunk, CHUNK_BYTES // per_point))

    def _query(self, feats: BoxFeatures, tau, xy: np.ndarray, what: str, counts: dict | None = None
               ) -> np.ndarray:
        """The model's values at image-pixel points xy (N, 2): "inr" logits, "uncertainty" or "backbone".

        For the heads, the points whose answer is settled (``IMedSAM.settled``: the backbone's logit beyond
        the correction's bound) are sorted out first, from the backbone's logit alone, so that the heads'
        chunks hold only points they run on (an adaptive render's levels are mostly settled points: chunks
        sized for the heads then held a few hundred each, and their per-call cost dominated). The values are
        the same: every point's answer depends on that point alone."""
        if what != "backbone" and len(xy):
            base = self._query(feats, tau, xy, "backbone")
            settled = self._model.settled(torch.from_numpy(base))
            if settled is not None:
                need = np.flatnonzero(~settled.numpy())
                out = base if what == "inr" else np.zeros(len(xy), dtype=np.float32)
                if need.size:
                    out[need] = self._query_chunks(feats, tau, xy[need], what, counts)
                return out
        return self._query_chunks(feats, tau, xy, what, counts)

    def _query_chunks(self, feats: BoxFeatures, tau, xy: np.ndarray, what: str, counts: dict | None = None
                      ) -> np.ndarray:
        valid = torch.tensor([self._prepared.valid_hw], device=self.device, dtype=torch.float32)
        out = np.empty(len(xy), dtype=np.float32)
        step = BACKBONE_CHUNK if what == "backbone" else self._points_per_chunk()
        for s in range(0, len(xy), step):
            pts = self._points_to_input(xy[s : s + step]).unsqueeze(0)
            with torch.no_grad():
                if what == "backbone":
                    val = self._model.base_logit(feats, pts)[0]
                elif what == "uncertainty":
                    val = self._model.variance(feats, pts, valid)[0]
                else:
                    val = self._model.query(feats, pts, valid, tau, counts=counts)[0][0]
            out[s : s + len(val)] = val.float().cpu().numpy()
        return out

    def _grid(self, region, out_shape) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
        """Checked (region, out_shape); a request whose render would need more than ``max_request_bytes`` is
        refused (``RequestTooLarge``, a ValueError) before anything is allocated."""
        h, w = self.image_hw
        if region is None:
            region = (0.0, 0.0, float(h), float(w))
        else:
            raw = np.asarray(region) if not isinstance(region, (str, bytes, dict)) else np.asarray(None)
            if raw.dtype.kind not in "iuf":
                raise ValueError(f"region must be 4 real numbers (y0, x0, y1, x1) in image pixels, got {region!r}.")
            region = tuple(float(v) for v in raw.reshape(-1))
        if len(region) != 4 or not np.isfinite(region).all() or region[2] <= region[0] or region[3] <= region[1]:
            raise ValueError(f"region must be (y0, x0, y1, x1) with y1 > y0 and x1 > x0, got {region}.")
        if out_shape is None:
            out_shape = (max(1, int(round(region[2] - region[0]))), max(1, int(round(region[3] - region[1]))))
        try:
            n = len(out_shape)
        except TypeError:
            n = None
        if isinstance(out_shape, (str, bytes)) or n != 2:
            raise ValueError(f"out_shape must be two sizes (height, width) in pixels, got {out_shape!r}.")
        out_shape = tuple(_whole(v, "out_shape") for v in out_shape)
        if min(out_shape) < 1 or max(out_shape) > MAX_SIDE:
            raise ValueError(f"out_shape must be two positive sizes up to {MAX_SIDE}, got {out_shape}.")
        check_request_size(out_shape, RENDER_BYTES_PER_PIXEL, self.max_request_bytes, "A render (out_shape)",
                           "render a smaller region or at a lower resolution (e.g. tile the output), or raise "
                           "Predictor.max_request_bytes.")
        return region, out_shape

    # ---- public queries ----------------------------------------------------------------------------------
    def predict(self, box, out_shape: tuple[int, int] | None = None,
                region: tuple[float, float, float, float] | None = None, dense: bool = False,
                return_logits: bool = False, *, points=None, point_labels=None, mask_prompt=None) -> np.ndarray:
        """Probabilities (float32, ``out_shape``) of the object in ``box`` (x0, y0, x1, y1, image pixels).

        Clicks refine it: ``points`` [[x, y], ...] in image pixels with ``point_labels`` (1 object, 0
        background); ``box=None`` segments from the clicks alone. ``mask_prompt``: the previous prediction's
        logits on the image grid (``return_logits=True``), SAM's mask input for iterative clicking.
        Adaptive rendering by default; ``dense=True`` queries every pixel (for checking).
        ``self.last_stats`` tells how many INR points were evaluated."""
        with self._lock:
            region, out_shape = self._grid(region, out_shape)
            feats, tau = self._prompt_state(box, points, point_labels, mask_prompt)
            counts: dict = {}
            logits, stats = render_logits(lambda xy: self._query(feats, tau, xy, "inr", counts), region, out_shape,
                                          self.image_hw, dense=dense)
            stats.inr_points, stats.fine_points = counts.get("inr", 0), counts.get("fine", 0)
            self.last_stats = stats
        return logits if return_logits else _sigmoid(logits)

    def predict_backbone(self, box, out_shape: tuple[int, int] | None = None,
                         region: tuple[float, float, float, float] | None = None, **prompt) -> np.ndarray:
        """The backbone decoder's own low-resolution mask, bilinearly resampled to the same grid: the
        discrete baseline the INR is compared against. Takes the prompts ``predict`` takes, decoded all at
        once as SAM does (no progressive merge of clicks)."""
        return self._dense(box, out_shape, region, "backbone", _sigmoid, prompt)

    def uncertainty(self, box, out_shape: tuple[int, int] | None = None,
                    region: tuple[float, float, float, float] | None = None, **prompt) -> np.ndarray:
        """MC-dropout variance of the coarse head's probability (0 outside the image and where the answer is
        settled). Takes the prompts ``predict`` takes."""
        if not self._model.config.ugs:
            raise ValueError("This model has uncertainty-guided sampling switched off (config.ugs=False).")
        return self._dense(box, out_shape, region, "uncertainty", lambda v: v.astype(np.float32), prompt)

    def _dense(self, box, out_shape, region, what, finish, prompt: dict) -> np.ndarray:
        unknown = set(prompt) - {"points", "point_labels", "mask_prompt"}
        if unknown:
            raise TypeError(f"Unknown prompt arguments {sorted(unknown)}; use points, point_labels, mask_prompt.")
        with self._lock:
            region, out_shape = self._grid(region, out_shape)
            feats, tau = self._prompt_state(box, **prompt, merge=what != "backbone")
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
