"""3-D propagation (no Qt): from a mask on one slice, prompt the next slice with the previous mask's box.

``propagate`` is a generator so that a worker can report progress after every slice and be cancelled
between slices (``close()`` the generator: every step yielded before stays valid). It stops when the mask
vanishes, leaks (grows too fast), or stops looking like the seed slice's object (the stop rules of
:class:`PropagationSettings`, calibrated on real volumes: docs/benchmarks.md, "3-D propagation"), or at the
slice limit / the user's end slice / the volume's end. :func:`propagate_volume` runs it both ways from a
Predictor or Segmenter and a volume; :mod:`.interpolation` fills between annotated slices.

Everything is in the volume's own pixel grid: slice index z, boxes (x0, y0, x1, y1) in the slice's pixels.
napari's layer ``scale`` (e.g. 5 mm slices, 0.7 mm pixels) only changes how the result is displayed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from src_training.data.boxes import mask_to_box

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class PropagationSettings:
    """When to stop (``None`` switches a rule off) and how to prompt the next slice.

    Chosen on oracle traces (propagation that never stops, labelled by the ground truth; LiteMedSAM) of the
    stardist 3-D nuclei (47 nuclei with >= 5 slices) and the CT phantom's 5 organs (4 seeds, 5 and 2.5 mm
    slices), replaying every rule set on the same logits; docs/benchmarks.md ("3-D propagation") has the
    distributions. Shares below: slices inside the object / the first slice past its end that fail the rule,
    nuclei then phantom.

    - ``min_stability`` (absolute; the first release's 0.75) is off: on nuclei 67 % of the right slices are
      below 0.75 (77 % past the end): it separates nothing and stopped every nucleus after ~2 slices.
    - Doubts, none decisive alone, a slice fails when ``doubts`` (2) of them hold: ``doubt_overlap`` (< 0.8
      of the mask inside the previous slice's mask: 25 % / 35 %, 2 % / 45 %), ``doubt_relative_stability``
      (stability < 0.9 x the seed slice's: 39 % / 61 %, 7 % / 90 %), ``doubt_relative_contrast`` (inside minus
      a 3-px ring < 0.5 x the seed's: 15 % / 61 %, 10 % / 100 %). Two or more: 19 % / 53 %, 3 % / 90 %.
    - ``patience`` 2: stop after 2 doubtful slices in a row (a doubtful slice followed by a passing one is
      kept): one doubtful slice inside a nucleus is common, two in a row mostly happen past its end.
    - Hard rules, one failing slice stops: ``max_growth`` (leak); ``min_overlap`` (< 0.3 inside the previous
      mask: jumped to another object; 1 % / 0 %, 0 % / 5 %); ``max_seed_shift`` / ``max_seed_gain`` (mean
      intensity more than 2 / 1.5 seed contrasts from the seed's, towards / away from the background: guards
      against other tissue, 1 % / 1 % and 3 % / 1 % on nuclei); ``max_regrowth`` (after shrinking, the area
      grows 1.5x over its smallest since the seed: 5 % / 14 % on nuclei, 41 % further out: the next nucleus
      of a z-stack); ``max_contrast_recovery`` (after fading below 0.5 of the seed's contrast, it comes back
      by 0.3: 2 % / 5 %, 2 % / 50 %).
    - ``max_intensity_shift`` (vs the previous slice; the first release's 0.5) is off: medians 0.13 inside,
      0.16 past the end on nuclei.
    - ``box_intensity``: the next box is the box of the mask's pixels at least half-way from the seed's
      surroundings to its inside in (smoothed) intensity, so that the box shrinks as a nucleus fades out
      (LiteMedSAM fills about half of any box at a faint end): 3-D Dice with an ideal stop 0.673 -> 0.693 on
      nuclei, 0.895 -> 0.896 on the phantom. A mask prompt (the previous slice's logits as SAM's mask input,
      with the box) lowered it to 0.588: LiteMedSAM was trained with boxes only.

    Re-chosen for the trained default head (its masks stay confident past an object's end, so the rules
    above let nuclei run on into the next nucleus of the stack: 3-D Dice 0.633, 2.0 slices past an end on
    average, up to 17), by replaying rule sets on the same cached logits (nuclei; phantom seeds 0 and 3):
    ``max_regrowth`` 1.5 -> 1.1 (0.633 -> 0.657 at 1.3, 0.668 at 1.2), ``max_seed_shift`` 2 -> 1 (phantom:
    at most 1 slice past an end instead of 3), ``doubt_relative_contrast`` 0.5 -> 0.6. Together: nuclei
    0.633 -> 0.689 (slices covered 90 -> 87 %, past an end 2.0 -> 0.9 on average), phantom 0.947 -> 0.951.
    Stricter stability doubts (0.95) reach 0.698 but cover 83 %; box prompts without the intensity rule lose
    (0.604).

    Boxes re-chosen on the same replays (nuclei; phantom seeds 0 and 3; docs/benchmarks.md): ``min_margin``
    2 -> 1 px (a nucleus is ~12 px across: 2 px per side made the box a third too big, and LiteMedSAM fills
    what it is given; with the object's extent marked 0.773 -> 0.805) and ``box_intensity`` 0.5 -> 0.8 (the
    box shrinks onto the bright core as a nucleus fades, and off the next nucleus of the stack). Together
    (the benchmark's full run): nuclei 0.689 -> 0.765 (covered 87 -> 92 %, most past one end 10 -> 8),
    phantom 0.958 -> 0.968 (covered 97 -> 99 %) but one organ end of 40 runs 6 slices on into brighter
    tissue (at most 1 before), MRI 0.295 -> 0.440 (covered 54 -> 75 %). Tried and not kept: refitting each
    slice's box to its own mask (nuclei 0.689 -> 0.606), ``box_intensity`` 0.7 / 0.9 (0.754 / 0.758),
    ``max_seed_gain`` 0.5 (phantom at most 2 past, but nuclei covered 87 %). Interpolation keeps 2 px
    (``interpolation.INTERPOLATION_SETTINGS``).

    Ends re-chosen on the same replays (all nuclei, phantom and MRI objects; docs/benchmarks.md). With the
    boxes above, 39 of the nuclei's 94 ends stopped on the right slice, 26 one slice early (the faint last
    slice doubtful, then the first slice past it) and 27 late, 17 of them by 2-8 slices: the next nucleus
    of the stack, as confident as the object, reached after one or two dimmer gap slices.
    ``max_intensity_recovery`` (0.2 seed contrasts after the mean fell ``intensity_dip`` 0.15 below its
    highest since the seed) stops at the next nucleus: the gap is a dip in intensity, the area and the
    contrast need not come back. ``doubt_relative_area`` (< 0.4 of the seed's area: inside p5 0.36, 1 slice
    past median 0.34 on nuclei) is a third doubt, and ``keep_first_doubtful`` keeps the first doubtful
    slice when it stops. Together: nuclei 0.765 -> 0.768 (covered 92 -> 93 %, most past one end 8 -> 2,
    ends with at most one past 82 -> 96 %), phantom 0.968 -> 0.965 (most past one end 6 -> 1), MRI 0.440 ->
    0.468 (covered 75 -> 81 %, 3 -> 1). Tried: dropping the held slice when a hard rule stops (nuclei
    0.775 but covered 91 %, MRI 78 %); ``intensity_dip`` 0.1 (nuclei at most 1 past but covered 89 %);
    ``patience`` 3 (worse everywhere); shrinking each box by the area's trend (0.765 -> 0.692; LiteMedSAM
    fills what it is given, and under-fills a tight box); cutting the mask to the seed's intensity
    (0.805 -> 0.803 with the extent marked).

    Ends re-chosen again on the same replays. 5 nuclei ends stopped 2-3 slices early by the intensity rule:
    a dip and a recovery right after the seed, with the mask as large as the seed's (the nucleus's own
    texture; the gap before the next nucleus comes as the mask shrinks: relative area 0.3-0.6 there).
    ``dip_max_area`` 0.95: a dip counts only on a slice whose area is below 0.95 of the seed's (nuclei
    0.768 -> 0.781, covered 93 -> 97 %). With that coverage to spare, the intensity rule is made stricter
    (``max_intensity_recovery`` 0.2 -> 0.1, ``intensity_dip`` 0.15 -> 0.1) and a hard rule's stop drops the
    doubtful slice it held (``keep_doubtful_at_hard_stop`` False: before the next object that slice is
    more often the gap than the object's last). Together: nuclei 0.768 -> 0.789 (covered 93 -> 94 %, most
    past one end 2 -> 1), phantom 0.965 -> 0.964 (99 -> 97 %, most past 1), MRI 0.468 -> 0.475 (81 -> 78 %,
    most past 1 -> 0). Tried: ``dip_max_area`` 0.9 (the same on nuclei, one MRI end 2 past) and 1.0 (nuclei
    0.783 / 92 %); recovery 0.15 (nuclei at most 2 past); each doubt's threshold, patience 3, regrowth 1.05
    / 1.2 on top: 0.784-0.790, none better on every dataset.
    """

    limit: int | None = None  # at most this many slices per direction
    margin: float = 0.1  # the next box is the mask's box grown by this fraction of its size per side
    min_margin: float = 1.0  # ... and by at least this many pixels
    min_area: int = 4  # pixels; a smaller mask counts as vanished
    box_intensity: float | None = 0.8  # the box follows the mask's part that is this far towards the seed's intensity
    # hard rules: one failing slice stops it
    max_growth: float | None = 2.0  # the area grows more than this factor from one slice to the next (leak)
    min_overlap: float | None = 0.3  # share of the mask inside the previous slice's mask (jumped elsewhere)
    max_seed_shift: float | None = 1.0  # mean intensity's drift from the seed's towards the background (contrasts)
    max_seed_gain: float | None = 1.5  # ... and away from the background (brighter than a bright seed)
    max_regrowth: float | None = 1.1  # after shrinking, the area grows this factor over its smallest (new object)
    max_contrast_recovery: float | None = 0.3  # after fading below 0.5, the contrast comes back by this much
    max_intensity_recovery: float | None = 0.1  # after a dip, the mean intensity comes back by this (seed contrasts)
    intensity_dip: float = 0.1  # ... a dip: the mean this far below its highest since the seed (seed contrasts)
    dip_max_area: float | None = 0.95  # ... on a slice whose area is below this share of the seed's
    min_stability: float | None = None  # IoU of the masks at logit > +1 and logit > -1 (first release: 0.75)
    max_intensity_shift: float | None = None  # |mean - previous slice's mean| in seed contrasts (first release: 0.5)
    # doubts: a slice fails when at least `doubts` of them hold
    doubt_overlap: float | None = 0.8
    doubt_relative_stability: float | None = 0.9  # stability / the seed slice's
    doubt_relative_contrast: float | None = 0.6  # (inside - ring) / the seed's, in the seed's polarity
    doubt_relative_area: float | None = 0.4  # area / the seed slice's
    doubts: int = 2
    patience: int = 2  # stop after this many doubtful slices in a row (they are kept if a passing one follows)
    keep_first_doubtful: bool = True  # ... and keep the first of them (often the object's faint last slice)
    keep_doubtful_at_hard_stop: bool = False  # ... also when a hard rule stops it (else that slice goes too)

    def without_stop_rules(self) -> PropagationSettings:
        """Only vanish and leak stop (inside an extent the user marked)."""
        return replace(self, min_overlap=None, max_seed_shift=None, max_seed_gain=None, min_stability=None,
                       max_intensity_shift=None, max_regrowth=None, max_contrast_recovery=None,
                       max_intensity_recovery=None, doubt_overlap=None, doubt_relative_stability=None,
                       doubt_relative_contrast=None, doubt_relative_area=None, patience=1)


@dataclass
class Step:
    slice: int
    mask: np.ndarray  # bool (H, W)
    box: Box  # the prompt used on this slice
    area: int
    stability: float
    direction: int = 0
    signals: dict[str, float] = field(default_factory=dict)  # the measured values the stop rules look at


def stability(logits: np.ndarray, offset: float = 1.0) -> float:
    """SAM's stability score: |logit > +offset| / |logit > -offset| (1 for a crisp mask)."""
    loose = int((logits > -offset).sum())
    return float((logits > offset).sum()) / loose if loose else 0.0


def _inside_ring(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean inside the mask and in a 3-px ring around it."""
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    inside = float(image[mask].mean())
    return inside, float(image[ring].mean()) if ring.any() else inside


@dataclass
class _Reference:
    """What the seed slice looked like: area, stability, intensity inside, contrast and its sign."""

    area: int
    stability: float | None = None
    mean: float | None = None
    contrast: float = 0.0  # |inside - ring|, 0 when too faint to use
    polarity: float = 1.0  # +1: the object is brighter than its surroundings
    ring: float | None = None


def _reference(segment, image, start: int, seed: np.ndarray, s: PropagationSettings) -> _Reference:
    ref = _Reference(int(seed.sum()))
    if s.doubt_relative_stability is not None:
        ref.stability = stability(np.asarray(segment(start, _next_box(seed, s))))
    if image is not None:
        img = np.asarray(image(start), dtype=np.float32)
        inside, ring = _inside_ring(img, seed)
        lo, hi = np.percentile(img, (1, 99))
        ref.mean, ref.ring, ref.polarity = inside, ring, (1.0 if inside >= ring else -1.0)
        ref.contrast = abs(inside - ring) if abs(inside - ring) > 0.02 * max(hi - lo, 1e-12) else 0.0
    return ref


def _next_box(mask: np.ndarray, s: PropagationSettings) -> Box:
    return tuple(float(v) for v in mask_to_box(mask, s.margin, s.min_margin))


def slice_signals(logits: np.ndarray, mask: np.ndarray, prev: np.ndarray, ref: _Reference,
                  image: np.ndarray | None = None, prev_mean: float | None = None) -> dict[str, float]:
    """The values the stop rules look at for one slice (also what the benchmark's calibration measures)."""
    area, prev_area = int(mask.sum()), int(prev.sum())
    out = {"area": float(area), "growth": area / max(prev_area, 1), "relative_area": area / max(ref.area, 1),
           "stability": stability(logits)}
    if ref.stability is not None:
        out["relative_stability"] = out["stability"] / ref.stability if ref.stability > 0 else 0.0
    if area:
        out["overlap"] = float((mask & prev).sum()) / area  # share of the mask inside the previous one
        inside = logits[mask]
        out["mean_logit"] = float(np.clip(inside, -30, 30).mean())
    if image is not None and area and ref.mean is not None:
        mean, ring = _inside_ring(image, mask)
        out["mean"] = mean
        if ref.contrast > 0:
            out["seed_shift"] = ref.polarity * (mean - ref.mean) / ref.contrast  # < 0: towards the background
            out["relative_contrast"] = ref.polarity * (mean - ring) / ref.contrast
            if prev_mean is not None:
                out["step_shift"] = abs(mean - prev_mean) / ref.contrast
    return out


def _failed_rule(sig: dict[str, float], s: PropagationSettings) -> tuple[str | None, bool]:
    """Why this slice does not look like the object (None: it does), and whether a hard rule said so (stop
    now) or the doubts did (``patience`` applies). Vanish and leak are checked apart."""
    if s.min_overlap is not None and sig.get("overlap", 1.0) < s.min_overlap:
        return f"the mask jumped elsewhere (only {sig['overlap']:.0%} of it inside the previous mask)", True
    if s.min_stability is not None and sig["stability"] < s.min_stability:
        return f"the mask became uncertain (stability {sig['stability']:.2f})", True
    shift = sig.get("seed_shift")
    if s.max_seed_shift is not None and shift is not None and -shift > s.max_seed_shift:
        return (f"the mask moved to different tissue (intensity {-shift:.2f} seed contrasts towards the "
                "background)"), True
    if s.max_seed_gain is not None and shift is not None and shift > s.max_seed_gain:
        return (f"the mask moved to different tissue (intensity {shift:.2f} seed contrasts away from the "
                "background)"), True
    step = sig.get("step_shift")
    if s.max_intensity_shift is not None and step is not None and step > s.max_intensity_shift:
        return "the mask moved to different tissue", True
    regrowth = sig.get("regrowth")
    if s.max_regrowth is not None and regrowth is not None and regrowth > s.max_regrowth:
        return f"another object seems to start (the mask grew {regrowth:.1f}x over its smallest)", True
    back = sig.get("intensity_recovery")
    if s.max_intensity_recovery is not None and back is not None and back > s.max_intensity_recovery:
        return f"another object seems to start (the intensity came back by {back:.2f} seed contrasts)", True
    recovery = sig.get("contrast_recovery")
    if s.max_contrast_recovery is not None and recovery is not None and recovery > s.max_contrast_recovery:
        return f"another object seems to start (the contrast came back by {recovery:.2f} of the seed's)", True
    doubts = []
    ra = sig.get("relative_area")
    if s.doubt_relative_area is not None and ra is not None and ra < s.doubt_relative_area:
        doubts.append(f"area {ra:.2f} of the seed's")
    if s.doubt_overlap is not None and sig.get("overlap", 1.0) < s.doubt_overlap:
        doubts.append(f"overlap {sig['overlap']:.2f}")
    rs = sig.get("relative_stability")
    if s.doubt_relative_stability is not None and rs is not None and rs < s.doubt_relative_stability:
        doubts.append(f"stability {rs:.2f} of the seed's")
    rc = sig.get("relative_contrast")
    if s.doubt_relative_contrast is not None and rc is not None and rc < s.doubt_relative_contrast:
        doubts.append(f"contrast {rc:.2f} of the seed's")
    if doubts and len(doubts) >= max(1, s.doubts):
        return "the mask no longer looks like the seed's object (" + ", ".join(doubts) + ")", False
    return None, False


def _box_source(mask: np.ndarray, img: np.ndarray | None, ref: _Reference, s: PropagationSettings) -> np.ndarray:
    """The part of ``mask`` the next box is made from (see ``box_intensity``)."""
    if s.box_intensity is None or img is None or ref.contrast <= 0 or ref.ring is None:
        return mask
    level = ref.ring + ref.polarity * s.box_intensity * ref.contrast
    core = mask & (ref.polarity * (ndimage.gaussian_filter(img, 1.0) - level) > 0)
    return core if int(core.sum()) >= s.min_area else mask


def _stop(held: list[tuple[Step, str]], s: PropagationSettings, reason: str, final: bool = False,
          hard: bool = False) -> Generator[Step, None, str]:
    """Propagation stops holding doubtful slices (each with why it was doubtful): yield those it keeps (the
    first, with ``keep_first_doubtful``; none when a ``hard`` rule stopped it, unless
    ``keep_doubtful_at_hard_stop``) and return why it stopped: ``reason`` when ``final`` (a hard rule, the
    limit), else the first dropped slice's doubt, else ``reason``."""
    n = 1 if s.keep_first_doubtful and (s.keep_doubtful_at_hard_stop or not hard) else 0
    for step, _ in held[:n]:
        yield step
    dropped = held[n:]
    return dropped[0][1] if dropped and not final else reason


def propagate(
    segment: Callable[[int, Box], np.ndarray],
    start: int,
    seed_mask: np.ndarray,
    n_slices: int,
    direction: int,
    settings: PropagationSettings = PropagationSettings(),
    image: Callable[[int], np.ndarray] | None = None,
    until: int | None = None,
) -> Generator[Step, None, str]:
    """Yield a :class:`Step` per accepted slice from ``start + direction`` on; return why it stopped.

    ``segment(z, box)`` gives the logits (H, W) of slice ``z`` for ``box``; ``image(z)`` (optional) the
    slice's intensities (any scale; the same for every slice) for the intensity rules. ``until``: the slice
    the user marked as the object's end in this direction: propagation goes up to it (inclusive), skips
    slices where the model finds nothing, and only a leak stops it earlier (the user said the object is
    there)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 (up) or -1 (down), got {direction}.")
    s = settings
    if until is not None:
        s = s.without_stop_rules()
    prev = np.asarray(seed_mask, dtype=bool)
    if int(prev.sum()) < s.min_area:
        return "the seed mask is empty"
    ref = _reference(segment, image, start, prev, s)
    prev_mean = ref.mean
    box_mask = prev  # the first box: the seed's own
    low_area, low_contrast = ref.area, 1.0  # the smallest area and contrast since the seed
    peak_shift, dip_shift = 0.0, None  # the highest mean since the seed (seed contrasts), the lowest after it
    held: list[tuple[Step, str]] = []  # doubtful slices waiting for a passing one (patience > 1), and why
    skipped: list[int] = []  # marked extent: slices where the model found nothing
    z, done = start + direction, 0
    while 0 <= z < n_slices and (until is None or (z - until) * direction <= 0):
        if s.limit is not None and done + len(held) >= s.limit:
            return (yield from _stop(held, s, f"reached the limit of {s.limit} slices", final=True))
        box = _next_box(box_mask, s)
        logits = np.asarray(segment(z, box))
        mask = logits > 0
        area = int(mask.sum())
        if area < s.min_area:
            if until is not None:  # the user says the object is there: keep the box, try the next slice
                skipped.append(z)
                z += direction
                continue
            return (yield from _stop(held, s, f"the mask vanished on slice {z}"))
        if s.max_growth is not None and area > s.max_growth * int(prev.sum()):
            return (yield from _stop(held, s, f"the mask grew more than {s.max_growth:g}x on slice {z} (leak)"))
        img = np.asarray(image(z), dtype=np.float32) if image is not None else None
        sig = slice_signals(logits, mask, prev, ref, img, prev_mean)
        if low_area < ref.area:
            sig["regrowth"] = area / max(low_area, 1)
        rc = sig.get("relative_contrast")
        if rc is not None and low_contrast < 0.5:
            sig["contrast_recovery"] = rc - low_contrast
        shift = sig.get("seed_shift")
        if shift is not None and dip_shift is not None and dip_shift < peak_shift - s.intensity_dip:
            sig["intensity_recovery"] = shift - dip_shift
        step = Step(z, mask, box, area, sig["stability"], direction, sig)
        why, hard = _failed_rule(sig, s)
        if hard:
            return (yield from _stop(held, s, f"{why} on slice {z}", final=True, hard=True))
        if why is None:
            for h, _ in held:
                yield h
                done += 1
            held = []
            yield step
            done += 1
        else:
            held.append((step, f"{why} on slice {z}"))
            if len(held) >= max(1, s.patience):
                return (yield from _stop(held, s, held[-1][1]))
        prev, prev_mean, z = mask, sig.get("mean", prev_mean), z + direction
        low_area, low_contrast = min(low_area, area), min(low_contrast, sig.get("relative_contrast", low_contrast))
        if shift is not None:
            if shift > peak_shift:
                peak_shift, dip_shift = shift, None
            elif s.dip_max_area is None or sig["relative_area"] < s.dip_max_area:
                dip_shift = shift if dip_shift is None else min(dip_shift, shift)
        box_mask = _box_source(mask, img, ref, s)
    if held:
        why = yield from _stop(held, s, "")
        if why:
            return why
    if until is not None and 0 <= until < n_slices:
        note = f" (nothing found on slice(s) {', '.join(map(str, skipped))})" if skipped else ""
        return f"reached the end slice {until}{note}"
    return "reached the end of the volume"


# ---- a volume and a model ------------------------------------------------------------------------------
def slice_functions(predictor_or_segmenter, volume, window: tuple[float, float] | None = None):
    """``(segment, image, n_slices)`` for :func:`propagate` from a Predictor or Segmenter and a volume
    (anything with ``len`` and ``volume[z]`` -> a 2-D slice or HxWxC: a numpy or dask array, a napari
    layer's data). The intensity rules see the slice as stored (clipped to ``window`` for CT), not min-max
    scaled per slice as the model sees it, so that slices stay comparable."""
    from .segmenter import Segmenter, SliceImage

    seg = predictor_or_segmenter
    if not isinstance(seg, Segmenter):
        seg = Segmenter(seg)
    tag = uuid.uuid4().hex  # keys unique to this call: the segmenter never mistakes another image for ours

    def load(z: int) -> np.ndarray:
        return np.asarray(volume[int(z)])

    def segment(z: int, box: Box) -> np.ndarray:
        return seg.full_logits(SliceImage(("volume", tag, int(z), window), lambda: load(z), window), box)

    def image(z: int) -> np.ndarray:
        img = load(z).astype(np.float32)
        if img.ndim == 3:
            img = img[..., :3].mean(axis=-1)
        return np.clip(img, *window) if window is not None else img

    return segment, image, len(volume)


def propagate_volume(
    predictor_or_segmenter,
    volume,
    start: int,
    seed_mask: np.ndarray,
    directions: Sequence[int] = (1, -1),
    settings: PropagationSettings = PropagationSettings(),
    window: tuple[float, float] | None = None,
    start_slice: int | None = None,
    end_slice: int | None = None,
) -> Generator[Step, None, dict[int, str]]:
    """Propagate ``seed_mask`` (on slice ``start``) through ``volume`` in each direction in turn (+1: up,
    towards higher z), yielding every accepted :class:`Step`; returns {direction: why it stopped}.

    ``start_slice`` / ``end_slice`` (inclusive, optional): the object's extent as the user marked it
    (MedSAM2's workflow). Propagation never goes past them, and towards a marked end it fills every slice up
    to it: the end-of-object rules are off, a slice where the model finds nothing is skipped (the box carries
    over) and only a leak stops it. Unmarked directions stop by the rules. Close the generator to cancel:
    the steps yielded before stay valid."""
    if not 0 <= start < len(volume):
        raise ValueError(f"start slice {start} is outside the volume (0-{len(volume) - 1}).")
    for name, b in (("start_slice", start_slice), ("end_slice", end_slice)):
        if b is not None and not 0 <= b < len(volume):
            raise ValueError(f"{name} {b} is outside the volume (0-{len(volume) - 1}).")
    lo, hi = start_slice, end_slice
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    if (lo is not None and start < lo) or (hi is not None and start > hi):
        raise ValueError(f"the seed slice {start} is outside the marked extent {lo}-{hi}.")
    segment, image, nz = slice_functions(predictor_or_segmenter, volume, window)
    reasons: dict[int, str] = {}
    for d in directions:
        until = hi if d > 0 else lo
        if until is not None and until == start:
            reasons[d] = f"the seed slice is the end slice {until}"
            continue
        reasons[d] = yield from propagate(segment, start, seed_mask, nz, d, settings, image=image, until=until)
    return reasons
