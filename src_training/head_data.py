"""The default head's training data: scenes this project makes, rendered for cross-resolution training.

Three families, all generated here (never a benchmark's test image), each object one :class:`Sample`:

- **cells**: fluorescence-like microscopy fields of many small nuclei (ellipses and lobed blobs, touching
  neighbours, inner texture, uneven background, blur and noise; a quarter with dark objects on a light
  background), the kind of scene where a 256-px encoder sees an object as a few embedding cells;
- **ct**: slices of the CT phantom (:mod:`napari_imedsam.samples.phantom`) at seeds from 200 (no demo or
  benchmark uses them), all organs, windowed as a user would (W400/L40);
- **shapes**: :mod:`src_training.synthetic` scenes (one textured shape and distractors).

Every image is made at its full size and also downsampled by 2 and 4 (anti-aliased, as the accuracy
benchmark does), while the mask stays at the full size: the model learns sub-pixel boundaries from a
coarse input, the INR's job. Images are min-max scaled (``image_to_unit``) exactly as ``Predictor.set_image``
does for a microscopy image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .data.sample import Sample

FACTORS = (1, 2, 4)
CT_WINDOW = (-160.0, 240.0)  # W400 / L40 soft tissue


@dataclass(frozen=True)
class HeadMix:
    """How much of each family: ``cells`` fields (``per_image`` objects each), CT phantom seeds (``ct_slices``
    slices each) and synthetic shapes; ``size`` is the full-resolution side."""

    cells: int = 30
    per_image: int = 16
    ct_seeds: int = 3
    ct_slices: int = 6
    shapes: int = 16
    size: int = 512
    factors: tuple[int, ...] = FACTORS

    def scaled(self, scale: float) -> HeadMix:
        """The same mix with every count times ``scale`` (at least one of each)."""
        def k(n: int) -> int:
            return max(1, int(round(n * scale)))
        return HeadMix(k(self.cells), self.per_image, k(self.ct_seeds), self.ct_slices, k(self.shapes), self.size,
                       self.factors)


def _unit(image: np.ndarray) -> np.ndarray:
    from napari_imedsam.model.preprocess import image_to_unit

    return image_to_unit(image)


def ct_unit(hu: np.ndarray) -> np.ndarray:
    """A CT slice in HU through the soft-tissue window, grey in [0, 1] (``image_to_unit``'s windowing)."""
    from napari_imedsam.model.preprocess import image_to_unit

    return image_to_unit(hu, CT_WINDOW)[..., 0]


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Anti-aliased reduction by an integer ``factor`` (the accuracy benchmark's cross-resolution input)."""
    if factor == 1:
        return image
    from skimage.transform import resize

    h, w = image.shape[:2]
    out_shape = (h // factor, w // factor) + image.shape[2:]
    return resize(image.astype(np.float32), out_shape, anti_aliasing=True, preserve_range=True).astype(np.float32)


def _nucleus_inside(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, a: float, b: float, ang: float,
                    lobes: float, k: int, ph: float) -> np.ndarray:
    """Points inside a rotated ellipse with ``lobes`` of ``k``-fold radial modulation (pixel units)."""
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(ang), np.sin(ang)
    u, v = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    rad = 1.0 + lobes * np.cos(k * np.arctan2(v, u) + ph)
    return u * u + v * v < rad * rad


def cell_field(seed: int, index: int, size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(image HxW float32, labels HxW int32) of one fluorescence-like field of nuclei; deterministic."""
    rng = np.random.default_rng([int(seed), int(index), 1871])
    h = w = int(size)
    scale = size / 512.0
    n = int(rng.integers(30, 220))
    r_lo, r_hi = sorted(rng.uniform(4.0, 16.0, 2) * scale)
    r_hi = max(r_hi, r_lo + 2.0 * scale)
    labels = np.zeros((h, w), np.int32)
    cover = np.zeros((h, w), np.float32)
    level = np.zeros((h, w), np.float32)
    ss = 4
    drawn = []
    for i in range(1, n + 1):
        r = rng.uniform(r_lo, r_hi)
        a, b = r * rng.uniform(1.0, 1.35), r * rng.uniform(0.6, 1.0)
        ang = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        lobes = rng.uniform(0.0, 0.18) if rng.random() < 0.4 else 0.0
        k, ph = int(rng.integers(2, 5)), rng.uniform(0, 2 * np.pi)
        pad = int(np.ceil(a * (1 + lobes))) + 2
        x0, x1 = max(0, int(cx) - pad), min(w, int(cx) + pad + 1)
        y0, y1 = max(0, int(cy) - pad), min(h, int(cy) + pad + 1)
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue

        shape = (cx, cy, a, b, ang, lobes, k, ph)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
        centre = _nucleus_inside(xs, ys, *shape)
        offs = (np.arange(ss) + 0.5) / ss
        sub_y = (np.arange(y0, y1)[:, None] + offs[None]).ravel()
        sub_x = (np.arange(x0, x1)[:, None] + offs[None]).ravel()
        sx, sy = np.meshgrid(sub_x, sub_y, indexing="xy")
        cov = _nucleus_inside(sx, sy, *shape).reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3)).astype(np.float32)
        if centre.sum() < 4:
            continue
        bright = rng.lognormal(-1.0, 0.4) * (rng.uniform(2.0, 4.0) if rng.random() < 0.06 else 1.0)
        tex = ndimage.gaussian_filter(rng.standard_normal(cov.shape), rng.uniform(0.8, 2.5) * scale + 0.3)
        tex = 1.0 + rng.uniform(0.05, 0.3) * tex / (tex.std() + 1e-6)
        win = (slice(y0, y1), slice(x0, x1))
        level[win] = cov * bright * tex + (1 - cov) * level[win]
        cover[win] = np.maximum(cover[win] * (1 - cov), cov)
        labels[win][centre] = i
        drawn.append((i, int(centre.sum())))
    bg = ndimage.gaussian_filter(rng.standard_normal((h, w)), 40 * scale) if size >= 16 else np.zeros((h, w))
    bg = rng.uniform(0.02, 0.15) + rng.uniform(0.0, 0.06) * bg / (bg.std() + 1e-6)
    image = bg * (1 - cover) + level
    blur = rng.uniform(0.4, 2.2) * scale
    image = ndimage.gaussian_filter(image, blur)
    image = image + rng.normal(0.0, rng.uniform(0.005, 0.04), image.shape)
    if rng.random() < 0.25:  # dark objects on a light background (e.g. stained tissue)
        image = 1.0 - image
    # keep objects still mostly visible after occlusion by later ones
    visible = np.bincount(labels.ravel(), minlength=n + 1)
    hidden = [i for i, area in drawn if visible[i] < 0.6 * area]
    labels[np.isin(labels, hidden)] = 0
    return image.astype(np.float32), labels


def _objects(labels: np.ndarray, min_area: int) -> list[int]:
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    return [int(i) for i, c in zip(ids, counts) if c >= min_area]


def _per_factor(image: np.ndarray, masks: Sequence[tuple[np.ndarray, int, str | None]], factors: Sequence[int],
                source: str, case: str, spacing: tuple[float, float] | None = None) -> list[Sample]:
    """One sample per (factor, object): the image reduced by the factor, the mask kept at full size."""
    out = []
    h, w = image.shape[:2]
    for f in factors:
        if h % f or w % f:
            raise ValueError(f"image {image.shape[:2]} is not divisible by the factor {f}")
        small = _unit(downsample(image, f))
        sp = None if spacing is None else (spacing[0] * f, spacing[1] * f)
        for mask, label, name in masks:
            out.append(Sample(image=small, mask=mask, source=f"{source} object {label} input 1/{f}",
                              case_id=f"{case}-f{f}", spacing=sp, label_id=label, label_name=name))
    return out


def cell_samples(n: int, seed: int, per_image: int, size: int, factors: Sequence[int]) -> list[Sample]:
    out = []
    min_area = max(4, int(12 * (size / 512) ** 2))
    for index in range(n):
        image, labels = cell_field(seed, index, size)
        ids = _objects(labels, min_area)
        rng = np.random.default_rng([seed, index, 2])
        chosen = rng.choice(ids, size=min(per_image, len(ids)), replace=False) if ids else []
        masks = [(labels == i, int(i), "nucleus") for i in chosen]
        out += _per_factor(image, masks, factors, f"head-data cells seed {seed} field {index}",
                           f"cells-{seed}-{index}")
    return out


def ct_samples(seeds: Sequence[int], slices: int, size: int, factors: Sequence[int]) -> list[Sample]:
    from napari_imedsam.samples.phantom import ORGAN_IDS, make_ct_phantom

    names = {v: k for k, v in ORGAN_IDS.items()}
    out = []
    for seed in seeds:
        hu, labels, spacing = make_ct_phantom((3 * slices, size, size), seed=int(seed))
        for z in range(1, 3 * slices, 3):
            image = ct_unit(hu[z])
            min_area = max(16, int(30 * (size / 512) ** 2))
            masks = [(labels[z] == i, i, names.get(i)) for i in _objects(labels[z], min_area)]
            out += _per_factor(image, masks, factors, f"head-data CT phantom seed {seed} slice {z}",
                               f"ct-{seed}-{z}", spacing[1:])
    return out


def shape_samples(n: int, seed: int, size: int, factors: Sequence[int]) -> list[Sample]:
    from .synthetic import synthetic_scene

    out = []
    for index in range(n):
        scene = synthetic_scene(seed, index)
        hw = scene.shape_at(size)
        hw = (hw[0] - hw[0] % max(factors), hw[1] - hw[1] % max(factors))
        image, mask = scene.render(hw)
        out += _per_factor(image, [(mask, 1, scene.target.kind)], factors,
                           f"head-data shapes seed {seed} scene {index}", f"shapes-{seed}-{index}")
    return out


#: The phantom patients of the head's data start here: seeds 0-199 stay unseen (the demo shows seed 0; the
#: volume, clicks and accuracy benchmarks score seeds 0-3 and 100-).
CT_SEED_BASE = 200


def head_samples(mix: HeadMix, seed: int = 0) -> list[Sample]:
    """The training (seed 0) or validation (another seed) samples of ``mix``; CT patients are seeds
    ``CT_SEED_BASE + 10 * seed`` onwards."""
    first = CT_SEED_BASE + 10 * seed
    return (cell_samples(mix.cells, seed, mix.per_image, mix.size, mix.factors)
            + ct_samples(range(first, first + mix.ct_seeds), mix.ct_slices, mix.size, mix.factors)
            + shape_samples(mix.shapes, seed, mix.size, mix.factors))


def head_splits(scale: float = 1.0, size: int = 512, seed: int = 0) -> dict[str, list[Sample]]:
    """Train and validation samples of the default head's recipe: the mix times ``scale``; validation is a
    small mix of other seeds (family ``seed + 1``)."""
    mix = HeadMix(size=size).scaled(scale)
    val_mix = HeadMix(cells=2, per_image=6, ct_seeds=1, ct_slices=2, shapes=4, size=size)
    return {"train": head_samples(mix, seed), "val": head_samples(val_mix, seed + 1)}
