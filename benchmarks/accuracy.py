"""Accuracy on held-out real data: the DSB 2018 nuclei image shipped in the ``stardist`` package.

    python -m benchmarks.accuracy [--quick] [--device auto|cpu|cuda] [--steps N] [--heldout N] [--json PATH]

One tight box per nucleus (pixel edges: x0 = min column, x1 = max column + 1). Rows: I-MedSAM (the
embedded default head of ``load_model("litemedsam")``), the backbone's own decoder (LiteMedSAM) bilinearly
upsampled, and the box itself as the mask (a floor). Settings: native resolution, and the cross-resolution
setting where the input is downsampled by 2 or 4 (anti-aliased) and the mask is rendered at the native
512x512 grid. Then a fine-tuning curve: fine-tune on 10, 20, 40 nuclei, evaluate on the others.

Every mask is rendered at native pixel centres inside a window around its box (the box grown by one box
size on every side, at least 8 px, clipped to the image); pixels outside the window count as background,
for every method alike. This keeps 125 nuclei x 3 settings affordable on a CPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src_training.head_data import ct_unit, downsample

from .common import autocast, base_parser, devices_for, fmt, machine_info, machine_line, markdown_table, section
from .common import write_json as write_results

PIP_HINT = "pip install --no-deps stardist==0.9.1"
METHODS = ("I-MedSAM", "backbone + bilinear", "box as mask")
DOWNSAMPLE = (1, 2, 4)


@dataclass
class Nucleus:
    label: int
    mask: np.ndarray  # HxW bool at native resolution
    box: np.ndarray  # (x0, y0, x1, y1) pixel edges, native


def stardist_files() -> tuple[Path, Path]:
    """img2d.tif and mask2d.tif of the stardist package, found by path (stardist is not imported: its
    dependencies are not needed)."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"The accuracy benchmark needs the DSB 2018 nuclei image of the stardist package: {PIP_HINT}"
                         " (0.9.2 does not ship the image; --no-deps: only the data files are used).")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "images"
    img, mask = folder / "img2d.tif", folder / "mask2d.tif"
    if not (img.is_file() and mask.is_file()):
        raise SystemExit(f"{folder} has no img2d.tif / mask2d.tif; install the version that ships them: {PIP_HINT}")
    return img, mask


def objects_of(labels: np.ndarray, ids=None, min_area: int = 4) -> list[Nucleus]:
    """Every object of a label image (or those in ``ids``) of at least ``min_area`` px, with its tight box."""
    from scipy import ndimage

    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or (ids is not None and i not in ids):
            continue
        mask = labels == i
        if mask.sum() < min_area:
            continue
        box = np.array([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop], dtype=np.float32)
        out.append(Nucleus(i, mask, box))
    return out


def load_nuclei(quick: bool) -> tuple[np.ndarray, list[Nucleus]]:
    """The image (uint16) and its nuclei; ``quick`` takes the top-left 128x128 and 5 nuclei inside it."""
    import tifffile

    img_path, mask_path = stardist_files()
    image, labels = tifffile.imread(img_path), tifffile.imread(mask_path)
    if quick:
        image, labels = image[:128, :128], labels[:128, :128].copy()
        cut = np.unique(np.r_[labels[-1], labels[:, -1]])
        labels[np.isin(labels, cut[cut > 0])] = 0  # nuclei cut by the crop's edge are dropped
    nuclei = objects_of(labels, min_area=1)
    return image, nuclei[:5] if quick else nuclei


def score(pred, nuclei: Sequence[Nucleus], hw: tuple[int, int], factor: int, methods: Sequence[str] = METHODS,
          device: torch.device | None = None, base=None) -> dict[str, list[dict]]:
    """Per-object metrics of each method; ``pred`` holds the image downsampled by ``factor``; masks are
    rendered at the native grid (``hw``). ``base`` (a Predictor of the plain backbone on the same image)
    gives the "backbone + bilinear" row; without it that row is ``pred``'s own ``predict_backbone``."""
    from src_training.evaluate import box_window
    from src_training.metrics import compute_metrics

    out: dict[str, list[dict]] = {m: [] for m in methods}
    for n in nuclei:
        y0, x0, y1, x1 = box_window(n.box, hw)
        region = (y0 / factor, x0 / factor, y1 / factor, x1 / factor)
        box = n.box / factor
        for method in methods:
            full = np.zeros(hw, dtype=bool)
            if method == "box as mask":
                bx0, by0, bx1, by1 = (int(v) for v in n.box)
                full[by0:by1, bx0:bx1] = True
            else:
                fn = pred.predict if method == "I-MedSAM" else (base or pred).predict_backbone
                amp = autocast(device) if device is not None else contextlib.nullcontext()
                with torch.no_grad(), amp:
                    full[y0:y1, x0:x1] = fn(box, out_shape=(y1 - y0, x1 - x0), region=region) > 0.5
            out[method].append({"label": n.label, **compute_metrics(full, n.mask)})
    return out


def uncertainty_sums(pred, objects: Sequence[Nucleus], hw: tuple[int, int], factor: int) -> dict[str, list]:
    """MC-dropout variance summed over the wrong and the right pixels inside each object's box (native
    grid), with the pixel counts: ``{"wrong": [sum, n], "right": [sum, n]}``."""
    sums = {"wrong": [0.0, 0], "right": [0.0, 0]}
    for n in objects:
        x0, y0, x1, y1 = (int(v) for v in n.box)
        region = (y0 / factor, x0 / factor, y1 / factor, x1 / factor)
        box = n.box / factor
        with torch.no_grad():
            prob = pred.predict(box, out_shape=(y1 - y0, x1 - x0), region=region)
            var = pred.uncertainty(box, out_shape=(y1 - y0, x1 - x0), region=region)
        wrong = (prob > 0.5) != n.mask[y0:y1, x0:x1]
        for key, sel in (("wrong", wrong), ("right", ~wrong)):
            sums[key][0] += float(var[sel].sum())
            sums[key][1] += int(sel.sum())
    return sums


def uncertainty_ratio(parts: Sequence[dict[str, list]]) -> dict:
    """Is the MC-dropout variance high where the mask is wrong? ``uncertainty_sums`` of one or more images,
    pooled: mean variance in the wrong pixels / in the right pixels."""
    total = {k: [sum(p[k][0] for p in parts), sum(p[k][1] for p in parts)] for k in ("wrong", "right")}
    mean = {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in total.items()}
    ratio = mean["wrong"] / mean["right"] if mean["right"] > 0 else float("nan")
    return {"var_wrong": mean["wrong"], "var_right": mean["right"], "ratio": ratio,
            "wrong_px": total["wrong"][1], "right_px": total["right"][1]}


def phantom_objects(seed: int, slices: int, size: int = 512) -> list[tuple[np.ndarray, list[Nucleus]]]:
    """(windowed slice in [0, 1], its organs) for ``slices`` slices of the CT phantom at ``seed``."""
    from napari_imedsam.samples.phantom import make_ct_phantom

    hu, labels, _ = make_ct_phantom((3 * slices, size, size), seed=seed)
    out = []
    for z in range(1, 3 * slices, 3):
        organs = [Nucleus(o.label + 100 * z + 10000 * seed, o.mask, o.box)
                  for o in objects_of(labels[z].astype(np.int32), min_area=30)]
        out.append((ct_unit(hu[z]), organs))
    return out


def summarise(per: list[dict]) -> dict:
    from src_training.metrics import aggregate

    agg = aggregate(per, ["dice", "hd95"])
    return {"n": agg["n"], "dice": agg["dice"], "hd95": agg["hd95"], "hd95_n_inf": agg["hd95_n_inf"]}


def widget_config(steps: int | None, n_train: int, device: torch.device) -> dict:
    """The fine-tune widget's training configuration (``napari_imedsam.finetune.settings``) for ``n_train``
    objects, without a held-out check (this curve scores its own held-out nuclei)."""
    from napari_imedsam.finetune.settings import FinetuneSettings, default_parts, train_config

    s = FinetuneSettings(parts=tuple(default_parts(device)), steps=steps or 0)
    return train_config(s, n_train, False, device).to_dict()


def finetune_curve(image: np.ndarray, nuclei: list[Nucleus], before: list[dict], backbone: str, counts: Sequence[int],
                   steps: int | None, heldout: int, device: torch.device) -> tuple[list[dict], dict]:
    """Fine-tune on the first ``k`` nuclei of a seeded order (nested sets) with the fine-tune widget's
    settings; score held-out nuclei outside the largest training set (the same ones for every k; a seeded
    subset of ``heldout`` of them when ``heldout`` > 0)."""
    from napari_imedsam import Predictor, load_model
    from napari_imedsam.model.preprocess import image_to_unit
    from src_training.data.sample import Sample
    from src_training.trainer import TrainConfig, fit

    order = np.random.default_rng(0).permutation(len(nuclei))
    pool, rest = order[: max(counts)], order[max(counts) :]
    held = rest[:heldout] if heldout > 0 else rest
    held_nuclei = [nuclei[i] for i in held]
    held_labels = {n.label for n in held_nuclei}
    base = summarise([r for r in before if r["label"] in held_labels])
    img01 = image_to_unit(image)  # exactly what the widget trains on
    rows = []
    for k in counts:
        samples = [Sample(image=img01, mask=nuclei[i].mask, source=f"stardist img2d.tif nucleus {nuclei[i].label}",
                          case_id="img2d") for i in pool[:k]]
        model = load_model(backbone)
        config = widget_config(steps, k, device)
        with section(f"fine-tune on {k} nuclei ({config['steps']} steps)"):
            result = fit(model, samples, None, TrainConfig.from_dict(config))
        pred = Predictor(model, device=device)
        with autocast(device):
            pred.set_image(image)
        with section(f"score {len(held_nuclei)} held-out nuclei"):
            after = summarise(score(pred, held_nuclei, image.shape[:2], 1, ("I-MedSAM",), device)["I-MedSAM"])
        rows.append({"train_nuclei": k, "held_out": len(held_nuclei), "before": base, "after": after,
                     "seconds": result.seconds, "final_loss": result.history[-1]["loss"] if result.history else None})
    settings = {**config, "parts": list(config["parts"]), "backbone": backbone, "order_seed": 0,
                "held_out_labels": sorted(int(v) for v in held_labels),
                "samples": "the whole image, one nucleus each (box jittered by up to jitter_fraction x its size)"}
    return rows, settings


def accuracy_table(rows: list[dict]) -> str:
    head = ["method", "input -> output", "n", "Dice %", "HD95 px", "missed (HD95 inf)"]
    body = [[r["method"], r["setting"], r["n"], fmt(r["dice"], 2, 100), fmt(r["hd95"], 2), r["hd95_n_inf"]]
            for r in rows]
    return markdown_table(head, body)


def curve_table(rows: list[dict]) -> str:
    head = ["fine-tuned on", "held-out nuclei", "Dice % before", "Dice % after", "HD95 px before", "HD95 px after",
            "train s"]
    body = [[f"{r['train_nuclei']} nuclei", r["held_out"], fmt(r["before"]["dice"], 2, 100),
             fmt(r["after"]["dice"], 2, 100), fmt(r["before"]["hd95"], 2), fmt(r["after"]["hd95"], 2),
             fmt(r["seconds"], 0)] for r in rows]
    return markdown_table(head, body)


def main(argv: Sequence[str] | None = None) -> int:
    from napari_imedsam import Predictor, load_model
    from napari_imedsam.model.build import default_adapters_path

    parser = base_parser("accuracy", "Dice / HD95 of napari-imedsam beside its baselines on held-out nuclei.",
                         repeats=False)
    parser.add_argument("--steps", type=int, default=None,
                        help="fine-tuning steps per curve point (default: the fine-tune widget's)")
    parser.add_argument("--heldout", type=int, default=40,
                        help="held-out nuclei scored by the fine-tuning curve (0: all that were not trained on)")
    parser.add_argument("--no-finetune", action="store_true", help="skip the fine-tuning curve")
    parser.add_argument("--adapters", type=Path, default=None,
                        help="adapters of the I-MedSAM rows (default: the embedded head)")
    parser.add_argument("--phantom-seeds", type=int, default=2,
                        help="CT phantom patients scored (seeds 100, 101, ...; the head trains on 200-202; 0: skip)")
    parser.add_argument("--phantom-slices", type=int, default=6, help="slices per phantom patient")
    args = parser.parse_args(argv)
    device = devices_for(args.device)[-1]  # accuracy does not depend on the device: the fastest one
    backbone = "tiny" if args.quick else "litemedsam"
    counts = (1, 2) if args.quick else (10, 20, 40)
    steps = 1 if args.quick and args.steps is None else args.steps
    image, nuclei = load_nuclei(args.quick)
    if len(nuclei) <= max(counts):
        raise SystemExit(f"only {len(nuclei)} nuclei: not enough for fine-tuning on {max(counts)}")
    hw = image.shape[:2]
    model = load_model(backbone, adapters=args.adapters if args.adapters else True)
    if args.adapters:
        head = f"adapters {args.adapters}"
    else:
        head = "embedded default head" if default_adapters_path(backbone) else "identity head (no default head shipped)"
    pred, base = Predictor(model, device=device), Predictor(load_model(backbone, adapters=None), device=device)
    ugs = model.config.ugs
    rows, per_nucleus, uncertainty = [], {}, []
    for factor in DOWNSAMPLE:
        small = downsample(image, factor)
        setting = "native" if factor == 1 else f"{small.shape[0]} -> {hw[0]} (1/{factor})"
        with section(f"score {len(nuclei)} nuclei, {setting}"):
            with autocast(device):
                pred.set_image(small)
                base.set_image(small)
            per = score(pred, nuclei, hw, factor, METHODS, device, base=base)
            if ugs:
                uncertainty.append({"data": "DSB nuclei", "setting": setting,
                                    **uncertainty_ratio([uncertainty_sums(pred, nuclei, hw, factor)])})
        per_nucleus[setting] = per
        rows += [{"method": m, "setting": setting, "factor": factor, **summarise(per[m])} for m in METHODS]
    phantom_rows = []
    n_seeds = min(args.phantom_seeds, 1) if args.quick else args.phantom_seeds
    if n_seeds > 0:
        size, n_slices = (128, 2) if args.quick else (512, args.phantom_slices)
        slices = [s for seed in range(100, 100 + n_seeds) for s in phantom_objects(seed, n_slices, size)]
        n_organs = sum(len(o) for _, o in slices)
        for factor in DOWNSAMPLE:
            setting = "native" if factor == 1 else f"{size // factor} -> {size} (1/{factor})"
            per: dict[str, list[dict]] = {m: [] for m in METHODS}
            sums = []
            with section(f"score {n_organs} phantom organs, {setting}"):
                for ct, organs in slices:
                    small = downsample(ct, factor)
                    pred.set_image(small)
                    base.set_image(small)
                    for m, v in score(pred, organs, ct.shape, factor, METHODS, device, base=base).items():
                        per[m] += v
                    if ugs:
                        sums.append(uncertainty_sums(pred, organs, ct.shape, factor))
            phantom_rows += [{"method": m, "setting": setting, "factor": factor, **summarise(per[m])} for m in METHODS]
            if sums:
                uncertainty.append({"data": "CT phantom", "setting": setting, **uncertainty_ratio(sums)})
    curve, curve_settings = [], {}
    if not args.no_finetune:
        curve, curve_settings = finetune_curve(image, nuclei, per_nucleus["native"]["I-MedSAM"], backbone, counts,
                                               steps, 2 if args.quick else args.heldout, device)
    info = machine_info()
    result = {"machine": info, "quick": args.quick, "data": {"image": str(stardist_files()[0]), "shape": list(hw),
              "nuclei": len(nuclei)}, "backbone": backbone, "head": head, "device": device.type, "rows": rows,
              "phantom_rows": phantom_rows, "uncertainty": uncertainty,
              "finetune": curve, "finetune_settings": curve_settings, "per_nucleus": per_nucleus}
    lines = [f"Machine: {machine_line(info)}", "",
             f"### DSB 2018 nuclei (stardist img2d.tif, {hw[0]}x{hw[1]}, {len(nuclei)} nuclei, tight boxes; "
             f"{backbone}, {head}; the backbone rows: the plain backbone's decoder)", "", accuracy_table(rows), ""]
    if phantom_rows:
        lines += [f"### CT phantom, patients (seeds) 100-{99 + n_seeds}, never trained on (organs, tight boxes)", "",
                  accuracy_table(phantom_rows), ""]
    if uncertainty:
        body = [[u["data"], u["setting"], f"{u['var_wrong']:.4g}", f"{u['var_right']:.4g}", f"{u['ratio']:.1f}"]
                for u in uncertainty]
        lines += ["### Uncertainty: MC-dropout variance in wrong / right pixels inside the boxes", "",
                  markdown_table(["data", "input -> output", "variance wrong", "variance right", "ratio"], body), ""]
    if curve:
        s = curve_settings
        lines += [f"### Fine-tuning curve (the fine-tune widget's settings: {s['steps']} steps, batch "
                  f"{s['batch_size']}, {s['points']} points per image, parts {'+'.join(s['parts'])}, cached "
                  f"embeddings {s['cache_embeddings']}, box jitter {s['jitter']} px, lr INR {s['lr_inr']:g}, "
                  f"other parts {s['lr_rest']:g})", "", curve_table(curve)]
    print("\n".join(lines))
    write_results(args.json, result)
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

