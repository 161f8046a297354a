"""Samples -> training tensors: the same ``prepare`` as inference, jittered boxes, query points and labels.

Conventions (DESIGN.md "Training"):

- The image goes through ``model.preprocess.prepare`` with ``window=(0, 1)``: samples are already in
  [0, 1] (windowed CT, /255 photos), so the window is the identity and nothing is re-normalised.
- Boxes are made from the *original* mask (pixel-edge xyxy, jittered outwards by 0..``jitter`` px per side
  in mask pixels, or by up to ``jitter_fraction`` of the box's size when set, capped by ``jitter``) and
  converted to encoder-input pixels with ``scale_yx`` (x uses ``scale_yx[1]``).
- Points are in encoder-input pixels inside the valid (unpadded) region: ``points=None`` is every pixel
  centre of the training grid ((j + 0.5, i + 0.5) for i < valid_h, j < valid_w); ``points=N`` is N
  continuous points drawn by ``sampling.PointMix`` (in and around the box, along the mask's edge, and a
  uniform share of the image). Labels are the ORIGINAL-resolution mask at the point's image-pixel location
  (nearest:
  ``mask[floor(y / sy), floor(x / sx)]``), so targets keep the native resolution's sub-pixel detail.
- Whole grids of images with different aspect ratios have different sizes: the batch is padded to the
  largest N by repeating points with ``weight = 0`` (losses are weighted, so padding never counts).

Randomness comes from one numpy Generator per sample slot, derived from (seed, step, micro-step, slot) by
the trainer, so a batch does not depend on how it is sharded across processes, and resuming needs no state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from napari_imedsam.model.preprocess import prepare

from .clicks import truth_on_grid
from .data.boxes import box_from_mask, mask_to_box
from .data.sample import Sample
from .sampling import PointMix, sample_points

UNIT_WINDOW = (0.0, 1.0)


@dataclass
class PreparedSample:
    """One sample, resized and padded for the encoder, with its original-resolution mask."""

    index: int  # position in the training sequence
    image: torch.Tensor  # (3, S, S) in [0, 1]
    mask: np.ndarray  # HxW bool, original resolution
    valid_hw: tuple[int, int]
    scale_yx: tuple[float, float]
    key: tuple = ()  # identity of the encoder input (image content, flips): the embedding-cache key
    factor: int = 1  # mask pixels per image pixel (a finer ground truth for sub-pixel training)

    def __post_init__(self) -> None:
        if not self.key:
            self.key = (content_key(self.image), False, False, False)


def content_key(image: torch.Tensor) -> str:
    """Identity of an encoder input by its pixels: the objects of one slice share one embedding."""
    return hashlib.sha1(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass
class Batch:
    """Tensors for ``IMedSAM.forward_train`` plus targets; ``weights`` is 0 on padding points."""

    images: torch.Tensor  # (B, 3, S, S)
    boxes: torch.Tensor  # (B, 4) xyxy in input pixels
    points: torch.Tensor  # (B, N, 2) (x, y) in input pixels
    labels: torch.Tensor  # (B, N) float {0, 1}
    weights: torch.Tensor  # (B, N) float {0, 1}
    valid_hw: torch.Tensor  # (B, 2) float
    keys: list[tuple]  # embedding-cache keys of the encoder inputs
    click_truth: torch.Tensor | None = None  # (B, g, g) bool: the masks on the model's low-res grid (clicks)

    def to(self, device: torch.device | str) -> Batch:
        move = {k: getattr(self, k).to(device, non_blocking=True)
                for k in ("images", "boxes", "points", "labels", "weights", "valid_hw")}
        truth = None if self.click_truth is None else self.click_truth.to(device)
        return Batch(**move, keys=self.keys, click_truth=truth)


def prepare_sample(sample: Sample, size: int, index: int = -1) -> PreparedSample:
    """Resize/pad ``sample.image`` exactly as inference does; keep the original mask for labels."""
    mask = np.asarray(sample.mask, dtype=bool)
    ih, iw = np.shape(sample.image)[:2]
    factor = mask.shape[0] // ih if ih else 0
    if factor < 1 or mask.shape != (ih * factor, iw * factor):
        raise ValueError(f"{sample.source}: mask {mask.shape} must have the image's size {(ih, iw)} or an "
                         "integer multiple of it (a finer ground truth for sub-pixel training)")
    if not mask.any():
        raise ValueError(f"{sample.source}: empty mask, nothing to segment")
    prep = prepare(sample.image, size, window=UNIT_WINDOW)
    # scale_yx maps *mask* pixels to input pixels: boxes and labels are read from the (possibly finer) mask
    scale = (prep.scale_yx[0] / factor, prep.scale_yx[1] / factor)
    return PreparedSample(index, prep.tensor[0], mask, prep.valid_hw, scale, factor=factor)


def grid_points(valid_hw: tuple[int, int]) -> np.ndarray:
    """Every pixel centre of the valid region, (N, 2) as (x, y) in input pixels, row-major."""
    h, w = valid_hw
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5,
                         indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def labels_at(mask: np.ndarray, points: np.ndarray, scale_yx: tuple[float, float]) -> np.ndarray:
    """Nearest lookup of the original mask at input-pixel points: mask[floor(y / sy), floor(x / sx)]."""
    h, w = mask.shape
    col = np.clip(np.floor(points[:, 0] / scale_yx[1]).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(points[:, 1] / scale_yx[0]).astype(np.int64), 0, h - 1)
    return mask[row, col].astype(np.float32)


def box_jitter_px(mask: np.ndarray, jitter: int, fraction: float) -> int:
    """Largest shift per side: ``jitter`` px, or ``fraction`` of the box's longer side (>= 1 px, <= jitter)."""
    if fraction <= 0 or jitter == 0:
        return int(jitter)
    x0, y0, x1, y1 = mask_to_box(mask)
    return int(min(jitter, max(1, round(fraction * max(x1 - x0, y1 - y0)))))


def input_box(mask: np.ndarray, scale_yx: tuple[float, float], jitter: int,
              rng: np.random.Generator | None, jitter_fraction: float = 0.0) -> np.ndarray:
    """The (jittered) box of ``mask`` in mask pixels, converted to encoder-input pixels."""
    box = box_from_mask(mask, jitter=box_jitter_px(mask, jitter, jitter_fraction), rng=rng)
    sy, sx = scale_yx
    return (box * np.array([sx, sy, sx, sy], dtype=np.float32)).astype(np.float32)


def flip(item: PreparedSample, horizontal: bool, vertical: bool, transpose: bool = False) -> PreparedSample:
    """Mirror and/or transpose the image (inside its valid region: the padding stays right/bottom) and the
    mask: the 8 symmetries of the square."""
    if not (horizontal or vertical or transpose):
        return item
    h, w = item.valid_hw
    region, mask = item.image[:, :h, :w], item.mask
    if horizontal:
        region, mask = region.flip(-1), mask[:, ::-1]
    if vertical:
        region, mask = region.flip(-2), mask[::-1]
    valid, scale = item.valid_hw, item.scale_yx
    if transpose:
        region, mask = region.transpose(-1, -2), mask.T
        valid, scale = (w, h), (scale[1], scale[0])
    image = torch.zeros_like(item.image)
    image[:, : valid[0], : valid[1]] = region
    key = (item.key[0], bool(horizontal), bool(vertical), bool(transpose))
    return PreparedSample(item.index, image, np.ascontiguousarray(mask), valid, scale, key, item.factor)


def collate(items: Sequence[PreparedSample], rngs: Sequence[np.random.Generator], jitter: int,
            points: int | None, augment: bool = False, mix: PointMix | None = None,
            jitter_fraction: float = 0.0, click_grid: int | None = None) -> Batch:
    """Stack prepared samples into a :class:`Batch` (see the module docstring for the conventions).

    ``augment``: a random symmetry of the square (horizontal flip, vertical flip, transpose, each with
    probability 1/2, drawn first from the sample's rng). With few training images this keeps the INR
    from memorising absolute positions. ``mix``: where ``points`` are drawn (default ``PointMix()``).
    ``click_grid``: also the masks on that low-resolution grid, for simulated clicks."""
    if len(items) != len(rngs) or not items:
        raise ValueError("collate needs one rng per item and at least one item")
    if augment:
        items = [flip(it, *(rng.random(3) < 0.5)) for it, rng in zip(items, rngs)]
    mix = mix or PointMix()
    boxes, pts, labels = [], [], []
    for item, rng in zip(items, rngs):
        box = input_box(item.mask, item.scale_yx, jitter, rng, jitter_fraction)
        boxes.append(box)
        if points is None:
            p = grid_points(item.valid_hw)
        else:
            p = sample_points(item.mask, box, item.valid_hw, item.scale_yx, points, mix, rng, item.factor)
        pts.append(p)
        labels.append(labels_at(item.mask, p, item.scale_yx))
    n = max(len(p) for p in pts)
    weights = np.zeros((len(items), n), dtype=np.float32)
    for i, p in enumerate(pts):
        weights[i, : len(p)] = 1.0
        if len(p) < n:  # pad by repeating real points; weight 0 keeps them out of the loss
            reps = np.resize(np.arange(len(p)), n)
            pts[i], labels[i] = p[reps], labels[i][reps]
    return Batch(
        images=torch.stack([it.image for it in items]),
        boxes=torch.from_numpy(np.stack(boxes)),
        points=torch.from_numpy(np.stack(pts)),
        labels=torch.from_numpy(np.stack(labels)),
        weights=torch.from_numpy(weights),
        valid_hw=torch.tensor([it.valid_hw for it in items], dtype=torch.float32),
        keys=[it.key for it in items],
        click_truth=None if click_grid is None else truth_on_grid(
            [it.mask for it in items], [it.valid_hw for it in items], items[0].image.shape[-1], click_grid),
    )


def sample_rngs(seed: int, step: int, micro: int, slots: Sequence[int]) -> list[np.random.Generator]:
    """One generator per slot of a global batch, a pure function of its coordinates (resume- and
    shard-independent)."""
    return [np.random.default_rng([int(seed), int(step), int(micro), int(s)]) for s in slots]


# ---- data order ----------------------------------------------------------------------------------------
def case_groups(samples: Sequence[Sample]) -> list[list[int]] | None:
    """Sample positions grouped by case when the sequence knows its cases (datasets, subsets)."""
    by_case = getattr(samples, "indices_by_case", None)
    if by_case is None:
        return None
    return [list(v) for v in by_case().values()]


class IndexStream:
    """The endless, seeded sequence of training indices: epoch ``e`` is a permutation drawn from
    ``default_rng([seed, e])``, so any position can be recomputed after a restart.

    With ``groups`` (cases) of many samples each (CT volumes: reading one costs ~1 s), an epoch shuffles
    the cases and then the samples within windows of ``window`` consecutive cases, so every volume is read
    about once per epoch while batches still mix two volumes."""

    def __init__(self, n: int, seed: int, groups: list[list[int]] | None = None, window: int = 2):
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.seed, self.window = int(n), int(seed), int(window)
        grouped = groups is not None and len(groups) > 0 and n / len(groups) > 4
        self.groups = groups if grouped else None
        self._epoch, self._order = -1, np.empty(0, dtype=np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(epoch)])
        if self.groups is None:
            return rng.permutation(self.n)
        cases = [self.groups[i] for i in rng.permutation(len(self.groups))]
        out = []
        for start in range(0, len(cases), self.window):
            block = np.concatenate([np.asarray(c, dtype=np.int64) for c in cases[start : start + self.window]])
            out.append(block[rng.permutation(len(block))])
        return np.concatenate(out)

    def take(self, position: int, count: int) -> list[int]:
        """``count`` indices starting at global stream position ``position``."""
        out = []
        while len(out) < count:
            epoch, offset = divmod(position + len(out), self.n)
            if epoch != self._epoch:
                self._epoch, self._order = epoch, self.epoch_order(epoch)
            out.extend(int(i) for i in self._order[offset : offset + count - len(out)])
        return out


CACHE_BYTES = 256 * 2**20


class PreparedView(torch.utils.data.Dataset):
    """Map-style view (also used by DataLoader workers): index -> PreparedSample.

    Samples held in memory (a list, as the fine-tune widget and ``--synthetic`` pass) are prepared once
    when all of them fit in ``CACHE_BYTES``; datasets that read files are prepared on every access."""

    def __init__(self, samples: Sequence[Sample], size: int):
        self.samples, self.size = samples, int(size)
        fits = isinstance(samples, list | tuple) and len(samples) * 12 * self.size**2 <= CACHE_BYTES
        self._cache: dict[int, PreparedSample] | None = {} if fits else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> PreparedSample:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        item = prepare_sample(self.samples[index], self.size, index)
        if self._cache is not None:
            self._cache[index] = item
        return item


def _identity(batch):
    return batch


def prepared_batches(samples: Sequence[Sample], size: int, index_lists: Iterator[list[int]],
                     workers: int = 0) -> Iterator[list[PreparedSample]]:
    """Prepared samples for each index list, in order; ``workers > 0`` loads them in background
    processes (a torch DataLoader), which matters for datasets that decode files on access."""
    view = PreparedView(samples, size)
    if workers <= 0:
        for idx in index_lists:
            yield [view[i] for i in idx]
        return
    own_rng = torch.Generator().manual_seed(0)  # worker seeds must not consume the training's global RNG
    loader = torch.utils.data.DataLoader(view, batch_sampler=_Sampler(index_lists), num_workers=workers,
                                         collate_fn=_identity, prefetch_factor=2, generator=own_rng)
    yield from loader


class _Sampler(torch.utils.data.Sampler):
    def __init__(self, index_lists: Iterator[list[int]]):
        self.index_lists = index_lists

    def __iter__(self):
        return iter(self.index_lists)
