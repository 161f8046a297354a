"""How much fine-tuning learns from a handful of corrections, through the fine-tune widget's own code path.

    python -m benchmarks.finetune_curve [--quick] [--device auto|cpu|cuda] [--counts 5 10 20 40]
                                        [--sections dsb phantom nuclei3d mri] [--lora-fa] [--json PATH]

Every run is what a user gets: the corrected objects go into a project folder with ``Project.add_slice``,
``FinetuneRun`` trains with ``FinetuneSettings()`` defaults (held-out split, early stopping, the point mix,
the mask decoder on cached embeddings on a CPU), then ``Predictor.predict`` with tight boxes scores objects
that were never trained on. Rows: before (the untrained default), after, and the box taken as the mask.

- DSB 2018 nuclei (stardist ``img2d.tif``): train on k nuclei of the left half, test on the nuclei of the
  right half (none crosses the middle line).
- The CT phantom (``engine.phantom``, abdomen window): correct both kidneys on 3 slices, test on the other
  (even) kidney slices of the same volume and on a phantom of another seed.
- stardist's 3-D nuclei (``img3d.tif``): correct the nuclei of every fourth z-slice (z = 1, 5, ...), test the
  slices half-way between (z = 3, 7, ...).
- nibabel's T1 MRI (``anatomical.nii``, the plugin's MRI sample): the CSF-dark structures of the central window
  (``dark_structures``), corrected on every other slice (z = 1, 3, ...), tested on the slices between (z = 0, 2, ...).

Also: the MC-dropout variance inside the error region over the variance elsewhere (after fine-tuning), and
with ``--lora-fa`` the DSB k=20 run with LoRA + FA trained as well (slower on a CPU).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .accuracy import Nucleus, load_nuclei, objects_of, score, stardist_files, summarise
from .common import base_parser, devices_for, fmt, machine_info, machine_line, markdown_table, section
from .common import write_json as write_results

METHODS = ("I-MedSAM", "box as mask")
ABDOMEN = (-125.0, 275.0)


@dataclass
class Scene:
    """One 2-D image with its objects (tight boxes), as the benchmark scores them."""

    image: np.ndarray
    objects: list[Nucleus]
    window: tuple[float, float] | None = None
    name: str = ""


def score_scenes(model, scenes: Sequence[Scene], device: torch.device, methods=METHODS) -> dict[str, dict]:
    """Dice / HD95 over every object of every scene, per method."""
    from napari_imedsam import Predictor

    pred = Predictor(model, device=device)
    per: dict[str, list[dict]] = {m: [] for m in methods}
    for sc in scenes:
        if not sc.objects:
            continue
        pred.set_image(sc.image, window=sc.window)
        got = score(pred, sc.objects, sc.image.shape[:2], 1, methods, device)
        for m in methods:
            per[m] += got[m]
    return {m: summarise(v) for m, v in per.items()}


def variance_ratio(model, scenes: Sequence[Scene], device: torch.device) -> dict:
    """Mean MC-dropout variance where the mask is wrong / where it is right (window around each box)."""
    from napari_imedsam import Predictor
    from src_training.evaluate import box_window

    pred = Predictor(model, device=device)
    wrong, right = [], []
    for sc in scenes:
        pred.set_image(sc.image, window=sc.window)
        for n in sc.objects:
            y0, x0, y1, x1 = box_window(n.box, sc.image.shape[:2])
            shape, region = (y1 - y0, x1 - x0), (y0, x0, y1, x1)
            prob = pred.predict(n.box, out_shape=shape, region=region)
            var = pred.uncertainty(n.box, out_shape=shape, region=region)
            err = (prob > 0.5) != n.mask[y0:y1, x0:x1]
            wrong += list(var[err])
            right += list(var[~err])
    mw, mr = float(np.mean(wrong)) if wrong else float("nan"), float(np.mean(right)) if right else float("nan")
    return {"var_wrong": mw, "var_right": mr, "ratio": mw / mr if mr > 0 else float("inf"),
            "wrong_px": len(wrong), "right_px": len(right)}


def finetune(model, train: Sequence[tuple[np.ndarray, np.ndarray, tuple]], settings, window=None) -> tuple:
    """Put the corrected slices into a fresh project and run the fine-tune widget's ``FinetuneRun``."""
    from napari_imedsam.finetune.project import Project
    from napari_imedsam.finetune.run import FinetuneRun

    with tempfile.TemporaryDirectory() as folder:
        project = Project(folder)
        t0 = time.perf_counter()
        for image, labels, where in train:
            project.add_slice(image, labels, "image", "corrections", where, window)
        run = FinetuneRun(model, project, settings)
        outcome = run.run()
        wall = time.perf_counter() - t0
    return outcome, wall


def row(name: str, k: int, before: dict, after: dict, box: dict, outcome, wall: float) -> dict:
    print(f"[benchmarks] {name}, {k} corrected: Dice {before['dice']} -> {after['dice']} (box {box['dice']}), "
          f"{outcome.steps_done} steps, {wall:.0f} s", file=sys.stderr, flush=True)
    return {"data": name, "corrected": k, "trained": outcome.train_pairs, "held_out_pairs": outcome.held_out_pairs,
            "split": outcome.split_rule, "steps": outcome.steps_done, "status": outcome.status,
            "before": before, "after": after, "box": box, "seconds": wall,
            "val_before": outcome.dice_before, "val_after": outcome.dice_after}


# ---- the three data sets ------------------------------------------------------------------------------
def unbounded(model):
    """The same model with the INR's correction unbounded (the renderer then runs the INR everywhere)."""
    model.config = model.config.with_(residual_bound=None)
    return model


def dsb_rows(backbone: str, counts: Sequence[int], settings, device, quick: bool, lora_fa: str | None,
             bound_ablation: bool = False) -> tuple:
    from napari_imedsam import load_model

    image, nuclei = load_nuclei(quick)
    mid = image.shape[1] // 2
    left = [n for n in nuclei if n.box[2] <= mid]
    right = [n for n in nuclei if n.box[0] >= mid]
    order = np.random.default_rng(0).permutation(len(left))
    right = right or [left[i] for i in order[max(counts):]]  # --quick's small crop: the untrained left nuclei
    test = [Scene(image, right, None, "DSB right half")]
    base = load_model(backbone)
    with section(f"DSB: score {len(right)} held-out nuclei before"):
        before = score_scenes(base, test, device)
    rows, unc = [], None
    runs = [] if lora_fa == "only" else [(k, settings, "") for k in counts]
    k20 = 20 if 20 in counts else max(counts)
    if lora_fa:
        runs.append((k20, replace(settings, parts=("lora", "fa", "decoder", "mask_decoder", "inr")), " + LoRA + FA"))
    if bound_ablation:
        runs.append((k20, settings, " (unbounded correction)"))
    for k, s, tag in runs:
        labels = np.zeros(image.shape[:2], np.uint16)
        for j, i in enumerate(order[:k], start=1):
            labels[left[i].mask] = j
        model = load_model(backbone)
        if tag == " (unbounded correction)":
            model = unbounded(model)
        with section(f"DSB: fine-tune on {k} nuclei{tag}"):
            outcome, wall = finetune(model, [(image, labels, ())], s)
        model = outcome.model or base
        with section(f"DSB: score after {k}{tag}"):
            after = score_scenes(model, test, device)
        rows.append(row(f"DSB nuclei{tag}", k, before["I-MedSAM"], after["I-MedSAM"], before["box as mask"],
                        outcome, wall))
        if k == (20 if 20 in counts else max(counts)) and not tag and outcome.model is not None:
            with section("DSB: uncertainty where wrong vs right"):
                unc = {"after": variance_ratio(model, test, device), "before": variance_ratio(base, test, device)}
    return rows, unc


def phantom_rows(backbone: str, settings, device, quick: bool) -> list[dict]:
    from napari_imedsam import load_model
    from napari_imedsam.samples.phantom import LEFT_KIDNEY, RIGHT_KIDNEY, make_ct_phantom

    shape = (10, 64, 64) if quick else (40, 256, 256)
    kidneys = (RIGHT_KIDNEY, LEFT_KIDNEY)
    hu, lab, _ = make_ct_phantom(shape, seed=0)
    hu2, lab2, _ = make_ct_phantom(shape, seed=7)
    zs = [z for z in range(shape[0]) if all((lab[z] == k).sum() >= 20 for k in kidneys)]
    train_z = [zs[len(zs) // 4], zs[len(zs) // 2], zs[3 * len(zs) // 4]]
    train = []
    for z in train_z:
        labels = np.where(np.isin(lab[z], kidneys), lab[z], 0).astype(np.uint8)
        train.append((hu[z], labels, (z,)))

    def scenes(vol, labs, skip):
        out = []
        for z in range(vol.shape[0]):
            if z in skip or z % 2:  # every other slice: the neighbours are near copies
                continue
            objs = objects_of(np.where(np.isin(labs[z], kidneys), labs[z], 0), kidneys, min_area=20)
            if objs:
                out.append(Scene(vol[z], objs, ABDOMEN, f"slice {z}"))
        return out

    same, other = scenes(hu, lab, set(train_z)), scenes(hu2, lab2, set())
    base = load_model(backbone)
    with section("phantom: fine-tune on the kidneys of 3 slices"):
        outcome, wall = finetune(load_model(backbone), train, settings, ABDOMEN)
    model = outcome.model or base
    rows = []
    for name, sc in (("phantom kidneys, same volume", same), ("phantom kidneys, another seed", other)):
        with section(f"score {name}"):
            before, after = score_scenes(base, sc, device), score_scenes(model, sc, device, ("I-MedSAM",))
        rows.append(row(name, 2 * len(train_z), before["I-MedSAM"], after["I-MedSAM"], before["box as mask"],
                        outcome, wall))
    return rows


def nuclei3d_rows(backbone: str, settings, device, quick: bool) -> list[dict]:
    import tifffile

    folder = stardist_files()[0].parent
    vol, lab = tifffile.imread(folder / "img3d.tif"), tifffile.imread(folder / "mask3d.tif")
    from skimage.measure import label as relabel

    zs = range(vol.shape[0])
    train_z = [z for z in zs if z % 4 == 1][: 2 if quick else None]
    train = [(vol[z], relabel(lab[z] > 0, connectivity=1).astype(np.uint16), (z,)) for z in train_z
             if (lab[z] > 0).any()]
    test = [Scene(vol[z], objects_of(relabel(lab[z] > 0, connectivity=1), min_area=10), None, f"z {z}")
            for z in zs if z % 4 == 3][: 2 if quick else None]
    return [slice_rows("stardist 3-D nuclei, other z-slices", backbone, train, test, settings, device)]


def slice_rows(name: str, backbone: str, train, test: Sequence[Scene], settings, device, plain: bool = False) -> dict:
    """Fine-tune on the corrected slices ``train`` and score the other slices ``test`` before and after (and,
    with ``plain``, with LiteMedSAM's own decoder: ``plain_backbone``)."""
    from napari_imedsam import load_model

    n_train = sum(int(t[1].max()) for t in train)
    base = load_model(backbone)
    with section(f"{name}: fine-tune on {n_train} objects of {len(train)} slices"):
        outcome, wall = finetune(load_model(backbone), train, settings)
    model = outcome.model or base
    with section(f"{name}: score"):
        before, after = score_scenes(base, test, device), score_scenes(model, test, device, ("I-MedSAM",))
        baseline = score_scenes(load_model(backbone, adapters=None), test, device, ("I-MedSAM",)) if plain else None
    got = row(name, n_train, before["I-MedSAM"], after["I-MedSAM"], before["box as mask"], outcome, wall)
    if baseline is not None:
        got["plain_backbone"] = baseline["I-MedSAM"]
    return got


#: The central window of nibabel's 41x33 ``anatomical.nii`` slices (rows, columns) that holds the ventricles.
MRI_ROWS, MRI_COLS = slice(3, 32), slice(7, 26)


def dark_structures(volume: np.ndarray, threshold: float = 6000.0) -> np.ndarray:
    """The MRI structure the MRI rows segment: per slice, the CSF-dark regions (T1 below ``threshold`` after a
    0.6-px smoothing) of at least 8 px in the central window (the ventricles and the midline), one label per
    region. Regions cut by the window's bottom, left or right edge are dropped; its top edge is open (the
    ventricles reach it on the middle slices)."""
    from scipy import ndimage

    out = np.zeros(volume.shape, np.uint16)
    smooth = ndimage.gaussian_filter(volume.astype(np.float32), (0, 0.6, 0.6))
    window = np.zeros(volume.shape[1:], bool)
    window[MRI_ROWS, MRI_COLS] = True
    for z in range(volume.shape[0]):
        regions, _ = ndimage.label((smooth[z] < threshold) & window)
        k = 1
        for i, (rows, cols) in enumerate(ndimage.find_objects(regions), start=1):
            cut = rows.stop == MRI_ROWS.stop or cols.start == MRI_COLS.start or cols.stop == MRI_COLS.stop
            if not cut and (regions[rows, cols] == i).sum() >= 8:
                out[z][regions == i] = k
                k += 1
    return out


def anatomical_mri() -> np.ndarray:
    """nibabel's T1 ``anatomical.nii`` (the plugin's MRI sample) as float32 (z, y, x)."""
    from napari_imedsam.io.volumes import load_nifti
    from napari_imedsam.sample_data import nibabel_anatomical_path

    return load_nifti(nibabel_anatomical_path()).data.astype(np.float32)


def mri_rows(backbone: str, settings, device, quick: bool) -> list[dict]:
    vol = anatomical_mri()
    lab = dark_structures(vol)
    zs = [z for z in range(vol.shape[0]) if lab[z].any()]
    train_z = [z for z in zs if z % 2 == 1][: 2 if quick else None]
    train = [(vol[z], lab[z], (z,)) for z in train_z]
    test = [Scene(vol[z], objects_of(lab[z], min_area=8), None, f"z {z}") for z in zs if z not in train_z]
    test = test[: 2 if quick else None]
    return [slice_rows("MRI (nibabel anatomical.nii) dark structures, other slices", backbone, train, test,
                       settings, device, plain=True)]


ABLATIONS = {  # name -> TrainConfig changes from the widget's configuration (DSB, 20 nuclei, fixed steps)
    "widget defaults (point mix, mask decoder, 1024 points)": {},
    "uniform points": dict(mix_box=0.0, mix_boundary=0.0, mix_uniform=1.0),
    "4096 points": dict(points=4096),
    "uniform points, 4096": dict(points=4096, mix_box=0.0, mix_boundary=0.0, mix_uniform=1.0),
    "no mask decoder (upscaling + INR)": dict(parts=("decoder", "inr")),
    "no mask decoder, uniform points": dict(parts=("decoder", "inr"), mix_box=0.0, mix_boundary=0.0,
                                            mix_uniform=1.0),
    "INR only": dict(parts=("inr",)),
    "box jitter 20 px (the old rule)": dict(jitter_fraction=0.0),
    "augment (flips, turns)": dict(augment=True),
}


def ablation_rows(backbone: str, settings, device, quick: bool, steps: int) -> list[dict]:
    """The choices behind the defaults: ``fit`` on 20 DSB nuclei of the left half with one setting changed,
    the same number of steps for all (no held-out split: the right half is the test)."""
    from napari_imedsam import load_model
    from napari_imedsam.finetune.settings import train_config
    from napari_imedsam.model.preprocess import image_to_unit
    from src_training.data.sample import Sample
    from src_training.trainer import fit

    image, nuclei = load_nuclei(quick)
    mid = image.shape[1] // 2
    left = [n for n in nuclei if n.box[2] <= mid]
    right = [n for n in nuclei if n.box[0] >= mid] or left
    k = min(20, len(left))
    train = [Sample(image=image_to_unit(image), mask=left[i].mask, source=str(left[i].label), case_id="img2d")
             for i in np.random.default_rng(0).permutation(len(left))[:k]]
    base = replace(train_config(replace(settings, steps=steps), k, False, device), seed=0)
    rows = []
    for name, change in ABLATIONS.items():
        cfg = replace(base, **change)
        model = load_model(backbone)
        with section(f"ablation: {name}"):
            result = fit(model, train, None, cfg)
            after = score_scenes(model, [Scene(image, right)], device, ("I-MedSAM",))["I-MedSAM"]
        rows.append({"setting": name, "steps": cfg.steps, "points": cfg.points, "dice": after["dice"],
                     "hd95": after["hd95"], "seconds": result.seconds,
                     "s_per_step": result.seconds / max(1, result.steps_done), "encodes": result.encoder_calls})
    return rows


def ablation_table(rows: list[dict]) -> str:
    head = ["setting (one change from the widget's)", "steps", "test Dice %", "HD95 px", "train s", "s / step",
            "encodes"]
    body = [[r["setting"], r["steps"], fmt(r["dice"], 1, 100), fmt(r["hd95"], 2), fmt(r["seconds"], 0),
             fmt(r["s_per_step"], 2), r["encodes"]] for r in rows]
    return markdown_table(head, body)


# ---- report ------------------------------------------------------------------------------------------------
def curve_table(rows: list[dict]) -> str:
    head = ["data", "corrected (trained / held out)", "test objects", "Dice % before", "Dice % after",
            "box as mask", "HD95 px before", "HD95 px after", "steps", "run s"]
    body = [[r["data"], f"{r['corrected']} ({r['trained']} / {r['held_out_pairs']}, {r['split']})",
             r["after"]["n"], fmt(r["before"]["dice"], 1, 100), fmt(r["after"]["dice"], 1, 100),
             fmt(r["box"]["dice"], 1, 100), fmt(r["before"]["hd95"], 2), fmt(r["after"]["hd95"], 2), r["steps"],
             fmt(r["seconds"], 0)] for r in rows]
    return markdown_table(head, body)


def main(argv: Sequence[str] | None = None) -> int:
    from napari_imedsam.finetune.settings import FinetuneSettings

    parser = base_parser("finetune_curve", "Held-out Dice before/after fine-tuning on a few corrected objects.",
                         repeats=False)
    parser.add_argument("--counts", type=int, nargs="+", default=None, help="DSB: corrected nuclei per run")
    parser.add_argument("--sections", nargs="+", default=["dsb", "phantom", "nuclei3d", "mri"],
                        help="what to run (ablation: the DSB runs behind the default settings, ~15 min)",
                        choices=["dsb", "phantom", "nuclei3d", "mri", "ablation"])
    parser.add_argument("--lora-fa", nargs="?", const="also", choices=["also", "only"],
                        help="also (or only) the DSB k=20 run with LoRA + FA trained")
    parser.add_argument("--steps", type=int, default=0, help="fixed steps per run (default: the widget's auto)")
    parser.add_argument("--bound-ablation", action="store_true",
                        help="also the DSB k=20 run with the INR's correction unbounded (config.residual_bound=None)")
    args = parser.parse_args(argv)
    device = devices_for(args.device)[-1]
    backbone = "tiny" if args.quick else "litemedsam"
    counts = args.counts or ((3,) if args.quick else (5, 10, 20, 40))
    settings = FinetuneSettings(device=str(device), steps=args.steps or (2 if args.quick else 0))
    t0 = time.perf_counter()
    rows, unc = [], None
    if "dsb" in args.sections:
        got, unc = dsb_rows(backbone, counts, settings, device, args.quick, args.lora_fa, args.bound_ablation)
        rows += got
    if "phantom" in args.sections:
        rows += phantom_rows(backbone, settings, device, args.quick)
    if "nuclei3d" in args.sections:
        rows += nuclei3d_rows(backbone, settings, device, args.quick)
    if "mri" in args.sections:
        rows += mri_rows(backbone, settings, device, args.quick)
    ablation = []
    if "ablation" in args.sections:
        ablation = ablation_rows(backbone, settings, device, args.quick, args.steps or (2 if args.quick else 60))
    info = machine_info()
    s = settings
    lines = [f"Machine: {machine_line(info)}", "",
             f"### Fine-tuning through the widget's path ({backbone}; FinetuneSettings defaults: parts "
             f"{'+'.join(s.parts)}, batch {s.batch_size}, {s.points} points by the point mix, steps "
             f"{'auto' if not s.steps else s.steps} with early stopping (patience {s.patience}), augment "
             f"{s.augment}, box jitter {s.jitter_fraction:g} x box size)", "", curve_table(rows) if rows else ""]
    if ablation:
        lines += ["", f"### The choices behind the defaults (DSB, 20 nuclei of the left half, {ablation[0]['steps']} "
                  "steps each, test: the right half)", "", ablation_table(ablation)]
    if unc:
        a, b = unc["after"], unc["before"]
        lines += ["", "MC-dropout variance on the DSB test nuclei, where the mask is wrong / right: after fine-tuning "
                  f"{a['var_wrong']:.2e} / {a['var_right']:.2e} = {fmt(a['ratio'], 1)}x; before "
                  f"{b['var_wrong']:.2e} / {b['var_right']:.2e}."]
    lines += ["", f"Whole benchmark: {time.perf_counter() - t0:.0f} s."]
    print("\n".join(lines))
    write_results(args.json, {"machine": info, "quick": args.quick, "backbone": backbone, "device": device.type,
                              "settings": {**s.__dict__, "parts": list(s.parts)}, "rows": rows, "uncertainty": unc,
                              "ablation": ablation})
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
