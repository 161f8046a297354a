"""A synthetic abdominal CT phantom in Hounsfield units with its ground-truth organ labels.

Deterministic for a given ``seed`` (which also jitters the organs a little, so several seeds give
several "patients"). Organs are smooth ellipsoid-like shapes whose size and position vary along z,
defined in coordinates relative to the field of view, so any shape holds every organ.

Array order is napari's (z, y, x) = (S, P, L) as in :mod:`napari_imedsam.io.volumes`: slice 0 is
the most inferior, rows run anterior -> posterior and columns from the patient's right to left
(liver on the left of the screen, spleen on the right).

Labels use the BCV (Synapse) ids: 1 spleen, 2 right kidney, 3 left kidney, 6 liver, 8 aorta.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

SPLEEN, RIGHT_KIDNEY, LEFT_KIDNEY, LIVER, AORTA = 1, 2, 3, 6, 8
ORGAN_IDS = {"spleen": SPLEEN, "right_kidney": RIGHT_KIDNEY, "left_kidney": LEFT_KIDNEY,
             "liver": LIVER, "aorta": AORTA}
#: Physical field of view (z, y, x) in mm: an adult upper abdomen, 10 cm of it along z.
FIELD_OF_VIEW_MM = (100.0, 360.0, 360.0)

HU = {"air": -1000.0, "fat": -100.0, "muscle": 40.0, "liver": 60.0, "spleen": 50.0,
      "kidney_medulla": 30.0, "kidney_cortex": 150.0, "aorta": 180.0, "bone": 700.0,
      "marrow": 250.0, "disc": 80.0}


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float,
             angle: float = 0.0) -> np.ndarray:
    """Normalised radius (<1 inside) of a rotated ellipse on the (u, v) grid."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    return ((c * du + s * dv) / au) ** 2 + ((-s * du + c * dv) / av) ** 2


def _profile(w: float, lo: float, hi: float) -> float:
    """Size factor along z: 0 outside [lo, hi], a smooth dome inside."""
    if not lo < w < hi:
        return 0.0
    t = (w - lo) / (hi - lo)
    return float(np.sqrt(np.sin(np.pi * t)))


def _slice(u: np.ndarray, v: np.ndarray, w: float, jitter: np.ndarray, bowel: np.ndarray,
           ny: int) -> tuple[np.ndarray, np.ndarray]:
    """HU image and labels of the axial slice at relative height ``w`` (0 inferior, 1 superior)."""
    wave = np.sin(2 * np.pi * w)
    img = np.full(u.shape, HU["air"], np.float32)
    lab = np.zeros(u.shape, np.uint8)
    au, av = 0.86 + 0.02 * wave + jitter[0], 0.62 + jitter[1]
    body = _ellipse(u, v, 0.0, 0.05, au, av)
    wall = _ellipse(u, v, 0.0, 0.05, au - 0.05, av - 0.05)
    cavity = _ellipse(u, v, 0.0, 0.05, au - 0.09, av - 0.09)
    img[body < 1] = HU["fat"]  # subcutaneous fat
    img[wall < 1] = HU["muscle"]  # abdominal wall and back muscles
    img[cavity < 1] = -40.0 + 70.0 * bowel[cavity < 1]  # visceral fat and bowel loops
    for side in (-1, 1):  # psoas / paraspinal muscles
        img[_ellipse(u, v, side * 0.18, 0.36, 0.07, 0.09) < 1] = HU["muscle"]
        img[(_ellipse(u, v, side * 0.14, 0.54, 0.09, 0.07) < 1) & (wall < 1)] = HU["muscle"]
    # Spine: vertebral bodies (cortical ring, marrow) alternating with discs along z.
    vert = _ellipse(u, v, 0.0, 0.36, 0.12, 0.11)
    if (w * 4.0 + jitter[2]) % 1.0 > 0.78:
        img[vert < 1] = HU["disc"]
    else:
        img[vert < 1] = HU["bone"]
        img[vert < 0.6] = HU["marrow"]
    img[_ellipse(u, v, 0.0, 0.54, 0.035, 0.08) < 1] = HU["bone"]  # spinous process
    for side in (-1, 1):
        img[_ellipse(u, v, side * 0.11, 0.48, 0.05, 0.03, side * 0.5) < 1] = HU["bone"]  # laminae
    allowed = (cavity < 1) & (vert >= 1.15)
    # Stomach (superior, anterior left): wall, fluid and an anterior gas bubble.
    s = _profile(w, 0.55, 1.3)
    if s > 0:
        stomach = _ellipse(u, v, 0.28, -0.22, 0.20 * s, 0.14 * s, 0.4)
        img[(stomach < 1) & allowed] = HU["muscle"]
        img[(stomach < 0.7) & allowed] = 15.0
        img[(stomach < 0.7) & (v < -0.27) & allowed] = HU["air"]
    # Liver: the patient's right (screen left), largest superiorly, a left lobe reaching across.
    s = _profile(w, 0.15 + jitter[3], 1.35)
    if s > 0:
        m = _ellipse(u, v, -0.38 + 0.04 * wave, -0.05, 0.40 * s, 0.44 * s, -0.3) < 1
        s2 = _profile(w, 0.55, 1.4)
        if s2 > 0:
            m |= _ellipse(u, v, -0.05, -0.30, 0.30 * s2, 0.13 * s2, 0.2) < 1
        m &= _ellipse(u, v, 0.05, 0.39, 0.22, 0.22) >= 1  # leave room for the IVC and spine
        lab[m & allowed] = LIVER
    # Spleen: posterior on the patient's left.
    s = _profile(w, 0.40 + jitter[4], 1.05)
    if s > 0:
        lab[(_ellipse(u, v, 0.56 + jitter[5], 0.14, 0.14 * s, 0.24 * s, 0.6) < 1) & allowed] = SPLEEN
    # Kidneys: posterolateral to the spine, the left one a little higher.
    for label, cu, lo, hi in ((RIGHT_KIDNEY, -0.33, -0.05, 0.55), (LEFT_KIDNEY, 0.33, 0.05, 0.65)):
        s = _profile(w, lo + jitter[6], hi + jitter[7])
        if s > 0:
            r = _ellipse(u, v, cu + jitter[8], 0.31, 0.12 * s, 0.17 * s, np.sign(cu) * 0.5)
            lab[(r < 1) & allowed] = label
    # Aorta: anterior to the spine, slightly to the patient's left, in every slice.
    lab[(_ellipse(u, v, 0.07, 0.16 + 0.01 * wave, 0.055, 0.055) < 1) & (cavity < 1)] = AORTA
    for name, label in (("liver", LIVER), ("spleen", SPLEEN), ("aorta", AORTA)):
        img[lab == label] = HU[name]
    for label in (RIGHT_KIDNEY, LEFT_KIDNEY):
        kidney = lab == label
        if kidney.any():
            img[kidney] = HU["kidney_cortex"]
            medulla = ndimage.binary_erosion(kidney, iterations=max(1, round(5 * ny / 256)))
            img[medulla] = HU["kidney_medulla"]
    return img, lab


def make_ct_phantom(shape: Sequence[int] = (40, 256, 256), seed: int = 0,
                    noise_hu: float = 12.0) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Return ``(hu, labels, spacing)``: float32 HU (z, y, x), uint8 BCV labels, spacing in mm.

    The spacing is the field of view (10 x 36 x 36 cm) divided by ``shape``; the default
    (40, 256, 256) gives (2.5, 1.406, 1.406) mm.
    """
    nz, ny, nx = (int(n) for n in shape)
    if min(nz, ny, nx) < 1 or ny < 16 or nx < 16:
        raise ValueError(f"shape must be (z, y, x) with y, x >= 16, got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-1.0, 1.0, size=16) * 0.04  # small per-seed anatomical variation
    spacing = tuple(f / n for f, n in zip(FIELD_OF_VIEW_MM, (nz, ny, nx)))
    v, u = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    # Bowel loops and mesentery: a smooth random texture between fat and soft tissue.
    bowel = ndimage.gaussian_filter(rng.standard_normal((nz, ny, nx)).astype(np.float32),
                                    (1.5, 6.0 * ny / 256, 6.0 * nx / 256))
    bowel = np.clip(bowel / (bowel.std() + 1e-6), -1.0, 1.0)
    hu = np.empty((nz, ny, nx), np.float32)
    labels = np.zeros((nz, ny, nx), np.uint8)
    for k in range(nz):
        w = (k + 0.5) / nz  # 0 = inferior, 1 = superior
        hu[k], labels[k] = _slice(u, v, w, jitter, bowel[k], ny)
    sigma = (0.5, 0.8 * ny / 256, 0.8 * nx / 256)  # partial-volume blur of the edges
    hu = ndimage.gaussian_filter(hu, sigma).astype(np.float32)
    if noise_hu > 0:
        body_mask = hu > -900
        hu += (rng.standard_normal(hu.shape) * noise_hu * body_mask).astype(np.float32)
    return hu, labels, spacing
