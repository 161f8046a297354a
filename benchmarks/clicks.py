"""Corrective clicking: how much 1..5 clicks lift a box's mask, I-MedSAM beside LiteMedSAM's own decoder.

    python -m benchmarks.clicks [--quick] [--clicks 5] [--nuclei 40] [--json PATH]

Each object starts from its tight box. After every prediction the next click goes to the largest error
region (a missed part: a positive click; a leak: a negative one), at its interior point farthest from the
region's edge, as micro-sam and SAM simulate users. The clicks come from I-MedSAM's masks and the same clicks
go to the backbone (``predict_backbone``). Scored in the object's window (the box grown by its own size, as
the accuracy benchmark does). I-MedSAM merges each click into the mask of the clicks before it (the
Predictor's default, ``progressive_clicks``); also measured: all clicks decoded at once (SAM's way), with the
previous logits as SAM's mask prompt, and the time per click.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_training.clicks import corrective_click as next_click

from .common import base_parser, fmt, machine_info, machine_line, markdown_table, section
from .common import write_json as write_results

DICE_TARGET_3 = 0.88


@dataclass
class Target:
    """One object to segment: its image (index into the scene list), truth mask and tight box."""

    scene: int
    mask: np.ndarray
    box: np.ndarray
    name: str


def click_run(pred, target: Target, hw: tuple[int, int], clicks: int, mask_prompt: bool, baseline=None) -> dict:
    """Dice of I-MedSAM and of the backbone (``baseline``: a Predictor of the plain backbone on the same image;
    default ``pred``'s own decoder) after 0..clicks clicks; seconds per click (I-MedSAM)."""
    from src_training.evaluate import box_window
    from src_training.metrics import dice

    y0, x0, y1, x1 = box_window(target.box, hw)
    region, shape = (float(y0), float(x0), float(y1), float(x1)), (y1 - y0, x1 - x0)
    truth = target.mask[y0:y1, x0:x1]
    points, labels, ours, base, seconds, base_seconds = [], [], [], [], [], []
    previous = None
    for i in range(clicks + 1):
        kw = {"points": points, "point_labels": labels} if points else {}
        if mask_prompt and previous is not None:
            kw["mask_prompt"] = previous
        t0 = time.perf_counter()
        if mask_prompt:
            logits = pred.predict(target.box, return_logits=True, **kw)  # the full grid: the next mask prompt
            previous, window = logits, logits[y0:y1, x0:x1] > 0
        else:
            window = pred.predict(target.box, out_shape=shape, region=region, **kw) > 0.5
        if i:
            seconds.append(time.perf_counter() - t0)
        kw.pop("mask_prompt", None)
        t0 = time.perf_counter()
        backbone = (baseline or pred).predict_backbone(target.box, out_shape=shape, region=region, **kw) > 0.5
        if i:
            base_seconds.append(time.perf_counter() - t0)
        ours.append(dice(window, truth))
        base.append(dice(backbone, truth))
        click = next_click(window, truth)
        if click is None:
            ours += [ours[-1]] * (clicks - i)
            base += [base[-1]] * (clicks - i)
            break
        points.append([click[0] + x0, click[1] + y0])
        labels.append(click[2])
    return {"name": target.name, "imedsam": ours, "backbone": base, "seconds_per_click": seconds,
            "backbone_seconds_per_click": base_seconds}


def dsb_targets(quick: bool, n: int) -> tuple[list[np.ndarray], list[Target], list]:
    from .accuracy import load_nuclei

    image, nuclei = load_nuclei(quick)
    order = np.random.default_rng(0).permutation(len(nuclei))[:n]
    return [image], [Target(0, nuclei[i].mask, nuclei[i].box, f"nucleus {nuclei[i].label}") for i in order], [None]


def phantom_targets(quick: bool) -> tuple[list[np.ndarray], list[Target], list]:
    from napari_imedsam.samples.phantom import ORGAN_IDS, make_ct_phantom
    from src_training.data.boxes import mask_to_box

    images, targets, windows = [], [], []
    for seed in (1,) if quick else (1, 2):
        hu, labels, _ = make_ct_phantom(seed=seed)
        for name, organ in ORGAN_IDS.items():
            areas = (labels == organ).sum(axis=(1, 2))
            if not areas.any():
                continue
            z = int(np.argmax(areas))
            images.append(hu[z])
            windows.append((-125.0, 275.0))
            mask = labels[z] == organ
            targets.append(Target(len(images) - 1, mask, mask_to_box(mask), f"{name} (seed {seed}, z {z})"))
    return images, targets, windows


def run_section(model, device, images, targets, windows, clicks: int, mask_prompt: bool, title: str,
                plain=None, progressive: bool = True) -> list[dict]:
    from napari_imedsam import Predictor

    pred = Predictor(model, device=device, progressive_clicks=progressive)
    base = Predictor(plain, device=device) if plain is not None else None
    rows, current = [], None
    with section(f"{title}: {len(targets)} objects, {clicks} clicks{' + mask prompt' if mask_prompt else ''}"):
        for t in targets:
            if t.scene != current:
                pred.set_image(images[t.scene], window=windows[t.scene])
                if base is not None:
                    base.set_image(images[t.scene], window=windows[t.scene])
                current = t.scene
            rows.append(click_run(pred, t, images[t.scene].shape[:2], clicks, mask_prompt, base))
    return rows


def summary(rows: list[dict], clicks: int) -> dict:
    ours = [statistics.mean(r["imedsam"][k] for r in rows) for k in range(clicks + 1)]
    base = [statistics.mean(r["backbone"][k] for r in rows) for k in range(clicks + 1)]
    secs = [s for r in rows for s in r["seconds_per_click"]]
    base_secs = [s for r in rows for s in r["backbone_seconds_per_click"]]
    return {"imedsam": ours, "backbone": base, "seconds_per_click": statistics.median(secs) if secs else None,
            "backbone_seconds_per_click": statistics.median(base_secs) if base_secs else None,
            "objects": len(rows)}


def table(results: dict[str, dict], clicks: int) -> str:
    head = ["data", "method", *[f"{k} clicks" for k in range(clicks + 1)], "s / click"]
    body = []
    for name, s in results.items():
        body.append([name, "I-MedSAM", *[fmt(v, 3) for v in s["imedsam"]], fmt(s["seconds_per_click"], 2)])
        body.append([name, "LiteMedSAM decoder (same clicks)", *[fmt(v, 3) for v in s["backbone"]],
                     fmt(s["backbone_seconds_per_click"], 2)])
    return markdown_table(head, body)


def main(argv: Sequence[str] | None = None) -> int:
    from napari_imedsam import load_model

    parser = base_parser("clicks", "Dice after 0..N corrective clicks, I-MedSAM beside the backbone.", repeats=False)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--nuclei", type=int, default=40, help="DSB nuclei to click on (random, seed 0)")
    parser.add_argument("--adapters", default=None, help="adapters of the I-MedSAM rows (default: the embedded head)")
    parser.add_argument("--no-mask-prompt-run", action="store_true", help="skip the runs with the mask prompt")
    parser.add_argument("--no-all-at-once-run", action="store_true",
                        help="skip the runs that decode all clicks at once (no progressive merge)")
    args = parser.parse_args(argv)
    import torch

    device = torch.device("cpu") if args.device in (None, "auto", "cpu") else torch.device(args.device)
    clicks = 2 if args.quick else args.clicks
    backbone = "tiny" if args.quick else "litemedsam"
    model = load_model(backbone, adapters=args.adapters or True)
    plain = load_model(backbone, adapters=None)  # the baseline rows: the backbone's own decoder, untouched
    results, raw = {}, {}
    data = {"DSB nuclei": dsb_targets(args.quick, 3 if args.quick else args.nuclei)}
    if not args.quick:
        data["CT phantom organs"] = phantom_targets(args.quick)
    variants = [("", False, True)]
    if not args.no_all_at_once_run:
        variants.append((", all clicks at once", False, False))
    if not (args.no_mask_prompt_run or args.quick):
        variants.append((", previous logits as mask prompt", True, True))
    for name, (images, targets, windows) in data.items():
        for suffix, mp, progressive in variants:
            key = name + suffix
            raw[key] = run_section(model, device, images, targets, windows, clicks, mp, key, plain, progressive)
            results[key] = summary(raw[key], clicks)
    info = machine_info()
    lines = [f"Machine: {machine_line(info)}", "", "### Dice (mean over objects) after corrective clicks", "",
             table(results, clicks)]
    nuclei = results.get("DSB nuclei")
    if nuclei and clicks >= 3:
        lines += ["", f"Target: 3 clicks lift the nuclei from {nuclei['imedsam'][0]:.3f} to >= {DICE_TARGET_3}: "
                  f"{nuclei['imedsam'][3]:.3f} ({'met' if nuclei['imedsam'][3] >= DICE_TARGET_3 else 'not met'}); "
                  f"never below the box-only mask on average: "
                  f"{'yes' if min(nuclei['imedsam'][1:]) >= nuclei['imedsam'][0] else 'no'}."]
    print("\n".join(lines))
    write_results(args.json, {"machine": info, "quick": args.quick, "clicks": clicks, "results": results,
                              "objects": raw})
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
