"""Is the embedded default head better than its backbone's own decoder? Held-out synthetic scenes whose
exact boundary is known at any resolution: the model sees the image at its size (1x), the mask is rendered
at 1x, 2x and 4x and scored against the exact ground truth rendered at that size.

Rows: I-MedSAM with the given adapters (default: the embedded head) and the backbone's own decoder
(the same model's ``predict_backbone``: SAM's low-resolution logit, bilinearly upsampled; the residual
head starts from it). Scenes come from a seed family the default head never saw in training.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.common import base_parser, machine_info, machine_line, markdown_table, section, write_json

FACTORS = (1, 2, 4)


def evaluate(model, scenes, size: int, factors=FACTORS) -> dict[str, dict[int, dict[str, float]]]:
    """Mean Dice and HD95 (in 1x pixels) per method and output factor."""
    from napari_imedsam import Predictor
    from src_training.data.boxes import mask_to_box
    from src_training.metrics import aggregate, compute_metrics

    pred = Predictor(model, device="cpu")
    rows: dict[str, dict[int, list]] = {"I-MedSAM": {f: [] for f in factors}, "backbone": {f: [] for f in factors}}
    for scene in scenes:
        hw = scene.shape_at(size)
        image, mask = scene.render(hw)
        pred.set_image(image)
        box = mask_to_box(mask)
        for f in factors:
            out = (hw[0] * f, hw[1] * f)
            gt = scene.mask(out)
            spacing = (1.0 / f, 1.0 / f)  # distances in 1x pixels at every factor
            rows["I-MedSAM"][f].append(compute_metrics(pred.predict(box, out_shape=out) > 0.5, gt, spacing))
            rows["backbone"][f].append(compute_metrics(pred.predict_backbone(box, out_shape=out) > 0.5, gt,
                                                       spacing))
    return {m: {f: aggregate(v) for f, v in per.items()} for m, per in rows.items()}


def main(argv: list[str] | None = None) -> int:
    p = base_parser("default_head", __doc__.splitlines()[0], repeats=False)
    p.add_argument("--adapters", type=Path, default=None, help="adapters file (default: the embedded head)")
    p.add_argument("--scenes", type=int, default=40, help="held-out scenes (default 40)")
    p.add_argument("--size", type=int, default=256, help="image long side the model sees (default 256)")
    p.add_argument("--seed", type=int, default=7, help="synthetic family of the held-out scenes (default 7; "
                   "the default head trains on family 0)")
    args = p.parse_args(argv)
    from napari_imedsam import load_model
    from src_training.synthetic import synthetic_scene

    n, size = (4, 96) if args.quick else (args.scenes, args.size)
    backbone = "tiny" if args.quick else "litemedsam"
    model = load_model(backbone, adapters=args.adapters if args.adapters else True)
    scenes = [synthetic_scene(args.seed, i) for i in range(n)]
    with section(f"default head vs backbone on {n} held-out scenes"):
        result = evaluate(model, scenes, size)
    headers = ["method"] + [f"Dice {f}x" for f in FACTORS] + [f"HD95 {f}x (px)" for f in FACTORS]
    table = []
    for method, per in result.items():
        table.append([method] + [f"{per[f]['dice']:.4f}" for f in FACTORS]
                     + [f"{per[f].get('hd95', float('nan')):.3f}" for f in FACTORS])
    info = machine_info()
    print(f"Default head ({backbone}, {n} held-out synthetic scenes, long side {size}); {machine_line(info)}\n")
    print(markdown_table(headers, table))
    write_json(args.json, {"machine": info, "backbone": backbone, "scenes": n, "size": size,
                           "adapters": str(args.adapters or "embedded default"),
                           "results": {m: {str(f): v for f, v in per.items()} for m, per in result.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
