"""Synthetic shapes: analytic objects with texture, blur and noise, and an exact mask at any resolution.

Used by tests, benchmarks, ``imedsam-train --synthetic N`` and the training of the default heads. A scene
is defined in a continuous frame (the long side has length 1), so the same scene renders at any pixel
size: the mask of a pixel is whether its *centre* lies inside the analytic shape (exact, no resampling),
and the image blends foreground and background textures by the pixel's area coverage, measured by
supersampling (``ss`` x ``ss`` sub-pixels), then blurs (sigma in frame units) and adds pixel noise.

Shapes: rotated ellipses, rounded polygons (a polygon offset by a radius) and blobs (a star-shaped
radius r(phi) = r0 (1 + sum_k a_k cos(k phi + phi_k))). Distractor shapes (not in the mask) may lie
elsewhere in the frame, so the box prompt matters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .data.sample import Sample, SampleDataset

SHAPES = ("ellipse", "polygon", "blob")


@dataclass(frozen=True)
class Shape:
    """One analytic shape: ``kind`` in SHAPES, centre (x, y) in frame units, and kind-specific params."""

    kind: str
    centre: tuple[float, float]
    params: dict = field(default_factory=dict)

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Boolean: frame points (x, y) inside the shape."""
        dx, dy = x - self.centre[0], y - self.centre[1]
        p = self.params
        if self.kind == "ellipse":
            c, s = np.cos(p["angle"]), np.sin(p["angle"])
            u, v = (c * dx + s * dy) / p["a"], (-s * dx + c * dy) / p["b"]
            return u * u + v * v < 1.0
        if self.kind == "blob":
            phi = np.arctan2(dy, dx)
            r = np.full_like(phi, 1.0)
            for k, a, ph in zip(p["k"], p["amp"], p["phase"]):
                r = r + a * np.cos(k * phi + ph)
            return np.hypot(dx, dy) < p["r0"] * r
        if self.kind == "polygon":
            return _polygon_distance(dx, dy, np.asarray(p["vertices"])) < p["round"]
        raise ValueError(f"unknown shape kind {self.kind!r}; choose from {SHAPES}")


def _polygon_distance(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance to a simple polygon (negative inside), vectorised over points."""
    d = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        (x0, y0), (x1, y1) = verts[i], verts[(i + 1) % n]
        ex, ey = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * ex + (y - y0) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.minimum(d, np.hypot(x - x0 - t * ex, y - y0 - t * ey))
        crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / (y1 - y0 + 1e-300) + x0)
        inside ^= crosses
    return np.where(inside, -d, d)


@dataclass(frozen=True)
class Texture:
    """A smooth colour field: base RGB plus a sum of sinusoids (frequencies in cycles per frame unit)."""

    rgb: tuple[float, float, float]
    freqs: tuple[tuple[float, float], ...]
    phases: tuple[float, ...]
    amps: tuple[float, ...]
    tint: tuple[float, float, float]

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        t = np.zeros(x.shape, dtype=np.float64)
        for (fx, fy), ph, a in zip(self.freqs, self.phases, self.amps):
            t += a * np.sin(2 * np.pi * (fx * x + fy * y) + ph)
        return np.stack([c + tc * t for c, tc in zip(self.rgb, self.tint)], axis=-1)


@dataclass(frozen=True)
class SyntheticScene:
    """A target shape, distractors and textures in a frame of size (fh, fw), max(fh, fw) = 1."""

    frame_hw: tuple[float, float]
    target: Shape
    distractors: tuple[Shape, ...]
    foreground: Texture
    background: Texture
    distractor_texture: Texture
    blur: float  # Gaussian sigma in frame units
    noise: float  # pixel noise standard deviation
    seed: int
    index: int

    def shape_at(self, long_side: int) -> tuple[int, int]:
        """Pixel size (h, w) of the rendering whose long side is ``long_side``."""
        fh, fw = self.frame_hw
        return max(2, int(round(long_side * fh))), max(2, int(round(long_side * fw)))

    def _coords(self, hw: tuple[int, int], ss: int = 1) -> tuple[np.ndarray, np.ndarray]:
        h, w = hw
        offs = (np.arange(ss) + 0.5) / ss
        ys = ((np.arange(h)[:, None] + offs[None]).ravel()) * self.frame_hw[0] / h
        xs = ((np.arange(w)[:, None] + offs[None]).ravel()) * self.frame_hw[1] / w
        return np.meshgrid(xs, ys, indexing="xy")

    def mask(self, hw: tuple[int, int]) -> np.ndarray:
        """Exact ground truth at (h, w): pixel centres inside the target shape."""
        x, y = self._coords(hw)
        return self.target.inside(x, y)

    def image(self, hw: tuple[int, int], ss: int = 4) -> np.ndarray:
        """HxWx3 float32 in [0, 1]: coverage-weighted textures, blur, then noise (seeded per size)."""
        h, w = hw
        x, y = self._coords(hw)
        fg, bg, dt = self.foreground(x, y), self.background(x, y), self.distractor_texture(x, y)
        xs, ys = self._coords(hw, ss)

        def coverage(shape: Shape) -> np.ndarray:
            return shape.inside(xs, ys).reshape(h, ss, w, ss).mean(axis=(1, 3))[..., None]

        img = bg
        for d in self.distractors:
            cov = coverage(d)
            img = cov * dt + (1 - cov) * img
        cov = coverage(self.target)
        img = cov * fg + (1 - cov) * img
        sigma = self.blur * max(h, w)
        if sigma > 0.3:
            img = ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest")
        rng = np.random.default_rng([self.seed, self.index, h, w])
        img = img + rng.normal(0.0, self.noise, img.shape)
        return np.clip(img, 0.0, 1.0).astype(np.float32)

    def render(self, hw: tuple[int, int], ss: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) at (h, w)."""
        return self.image(hw, ss), self.mask(hw)


def _random_shape(rng: np.random.Generator, centre: tuple[float, float], size: float,
                  kinds: Sequence[str] = SHAPES, rotate: bool = True) -> Shape:
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "ellipse":
        a = size * rng.uniform(0.6, 1.0)
        angle = rng.uniform(0, np.pi)
        params = dict(a=a, b=a * rng.uniform(0.45, 1.0), angle=angle if rotate else 0.0)
    elif kind == "blob":
        n = int(rng.integers(2, 4))
        params = dict(r0=size * 0.8, k=tuple(int(k) for k in rng.choice([2, 3, 4, 5], n, replace=False)),
                      amp=tuple(float(a) for a in rng.uniform(0.05, 0.35 / n, n)),
                      phase=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, n)))
    else:
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n)) if n > 3 else np.arange(3) * 2 * np.pi / 3
        angles = angles + rng.uniform(0, 2 * np.pi)
        rr = size * rng.uniform(0.55, 0.8, n)
        rnd = size * rng.uniform(0.05, 0.2)
        params = dict(vertices=tuple((float(r * np.cos(t)), float(r * np.sin(t))) for r, t in zip(rr, angles)),
                      round=float(rnd))
    return Shape(kind, (float(centre[0]), float(centre[1])), params)


def _random_texture(rng: np.random.Generator, rgb: np.ndarray, strength: float) -> Texture:
    m = 4
    freqs = tuple((float(fx), float(fy)) for fx, fy in rng.uniform(-12, 12, (m, 2)))
    return Texture(tuple(float(c) for c in np.clip(rgb, 0.05, 0.95)), freqs,
                   tuple(float(p) for p in rng.uniform(0, 2 * np.pi, m)),
                   tuple(float(a) for a in rng.uniform(0.2, 1.0, m) * strength / m),
                   tuple(float(t) for t in rng.uniform(0.5, 1.0, 3)))


def synthetic_scene(seed: int, index: int, aspect: tuple[float, float] = (1.0, 1.0),
                    distractors: int = 1, noise: tuple[float, float] = (0.02, 0.06),
                    kinds: Sequence[str] = SHAPES, rotate: bool = True) -> SyntheticScene:
    """Scene ``index`` of the family ``seed`` (deterministic). ``aspect``: range of h / w; ``kinds``: the
    target's possible shapes; ``rotate=False`` keeps ellipses axis-aligned (then the tight box determines
    the ellipse: an easy family for models without a pretrained encoder)."""
    bad = set(kinds) - set(SHAPES)
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {SHAPES}, got {kinds}")
    rng = np.random.default_rng([int(seed), int(index)])
    ratio = float(rng.uniform(*aspect)) if aspect[1] > aspect[0] else float(aspect[0])
    fh, fw = (1.0, 1.0 / ratio) if ratio >= 1 else (ratio, 1.0)
    short = min(fh, fw)
    size = short * rng.uniform(0.15, 0.32)
    centre = (rng.uniform(size * 1.1, fw - size * 1.1), rng.uniform(size * 1.1, fh - size * 1.1))
    target = _random_shape(rng, centre, size, tuple(kinds), rotate)
    others = []
    for _ in range(int(rng.integers(0, distractors + 1))):
        s = short * rng.uniform(0.08, 0.18)
        for _try in range(20):  # place away from the target (outside its box plus a margin)
            c = (rng.uniform(s, fw - s), rng.uniform(s, fh - s))
            if max(abs(c[0] - centre[0]), abs(c[1] - centre[1])) > size + s + 0.05:
                others.append(_random_shape(rng, c, s))
                break
    base_bg = rng.uniform(0.15, 0.55, 3)
    delta = rng.uniform(0.2, 0.4) * rng.choice([-1.0, 1.0])
    base_fg = base_bg + delta * rng.uniform(0.6, 1.0, 3)
    return SyntheticScene(
        frame_hw=(fh, fw), target=target, distractors=tuple(others),
        foreground=_random_texture(rng, base_fg, 0.12), background=_random_texture(rng, base_bg, 0.15),
        distractor_texture=_random_texture(rng, base_fg * 0.7 + base_bg * 0.3, 0.12),
        blur=float(rng.uniform(0.0, 0.006)), noise=float(rng.uniform(*noise)), seed=int(seed), index=int(index),
    )


def sample_from_scene(scene: SyntheticScene, size: int, spacing: tuple[float, float] | None = None,
                      mask_scale: int = 1) -> Sample:
    """The scene rendered with long side ``size`` as a training/evaluation :class:`Sample`; with
    ``mask_scale=k`` the exact mask is rendered k times finer than the image (sub-pixel supervision)."""
    hw = scene.shape_at(size)
    image = scene.image(hw)
    mask = scene.mask((hw[0] * mask_scale, hw[1] * mask_scale))
    return Sample(image=image, mask=mask, source=f"synthetic:seed={scene.seed}:index={scene.index}",
                  case_id=f"synthetic-{scene.seed}-{scene.index:05d}", spacing=spacing, label_id=1,
                  label_name=scene.target.kind)


def scene_for_sample(sample: Sample, **options) -> SyntheticScene:
    """The scene a synthetic sample was rendered from (to render its mask at another resolution)."""
    try:
        _, seed, index = sample.source.split(":")
        return synthetic_scene(int(seed.split("=")[1]), int(index.split("=")[1]), **options)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{sample.source!r} is not the source of a synthetic sample") from exc


def make_synthetic_samples(n: int, size: int = 96, seed: int = 0, start: int = 0,
                           spacing: tuple[float, float] | None = None, mask_scale: int = 1,
                           **options) -> list[Sample]:
    """``n`` synthetic samples (scenes ``start`` .. ``start + n - 1`` of family ``seed``), long side ``size``.

    ``options`` go to :func:`synthetic_scene` (aspect, distractors, noise); pass the same ones to
    :func:`scene_for_sample` to re-render a sample's mask at another resolution."""
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    return [sample_from_scene(synthetic_scene(seed, start + i, **options), size, spacing, mask_scale)
            for i in range(n)]


class SyntheticDataset(SampleDataset):
    """``n`` synthetic scenes as a lazily rendered dataset (one case per scene), e.g. for ``--synthetic``."""

    def __init__(self, n: int, size: int = 96, seed: int = 0, **options) -> None:
        from pathlib import Path

        self.n, self.size, self.seed, self.options = int(n), int(size), int(seed), options
        self.root = Path(".")
        self.problems = []
        self._case_ids = [f"synthetic-{seed}-{i:05d}" for i in range(self.n)]

    def __repr__(self) -> str:
        return f"SyntheticDataset(n={self.n}, size={self.size}, seed={self.seed})"

    def _load(self, index: int) -> Sample:
        return sample_from_scene(synthetic_scene(self.seed, index, **self.options), self.size)


def synthetic_splits(n_train: int, size: int = 96, seed: int = 0, n_val: int | None = None,
                     n_test: int | None = None, mask_scale: int = 1, **options) -> dict[str, Sequence[Sample]]:
    """Disjoint train / val / test synthetic samples (different scene indices of the same family)."""
    n_val = max(2, n_train // 4) if n_val is None else n_val
    n_test = n_val if n_test is None else n_test
    out, start = {}, 0
    for name, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        out[name] = make_synthetic_samples(count, size=size, seed=seed, start=start,
                                           mask_scale=mask_scale if name == "train" else 1, **options)
        start += count
    return out
