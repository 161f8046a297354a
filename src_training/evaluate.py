"""Evaluation: I-MedSAM's INR mask and the discrete baseline (the backbone decoder's own low-resolution
logit, bilinearly resampled, as ``Predictor.predict_backbone``) on a split, at native or other resolutions.

Cross-resolution protocol (the paper's KS 384 -> 128 / 896): the model always sees the image resized to
its input size S (as in training); the INR is queried at the pixel centres of an output grid whose long
side is R, and the ground truth is the original mask resized to that grid with nearest-neighbour lookup
at the same pixel centres (``mask[floor((i + 0.5) * H / h_R), floor((j + 0.5) * W / w_R)]``). Distances
are in output pixels, and in mm when the sample's spacing is known (spacing scaled by H / h_R, W / w_R).
Both methods are scored on exactly the same grids, so the table shows what the continuous decoder adds.

Rendering here is dense and batched (every output pixel is queried); it equals ``Predictor.predict(...,
dense=True)`` and ``Predictor.predict_backbone`` (a test checks this).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_imedsam.model.device import resolve_device
from napari_imedsam.model.imedsam import IMedSAM

from .batching import input_box, prepare_sample
from .data.boxes import mask_to_box
from .data.sample import Sample
from .metrics import aggregate, compute_metrics, dice

CHUNK = 65536
METHODS = ("I-MedSAM", "baseline")


def output_shape(image_hw: tuple[int, int], resolution: int | None) -> tuple[int, int]:
    """(h, w) of the output grid: the image's own size, or long side ``resolution`` keeping the aspect."""
    h, w = image_hw
    if resolution is None:
        return h, w
    scale = resolution / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def resize_nearest(mask: np.ndarray, out_shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize by pixel centres (the ground truth of the cross-resolution protocol)."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(out_shape[0]) + 0.5) * h / out_shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_shape[1]) + 0.5) * w / out_shape[1]).astype(np.int64), w - 1)
    return mask[np.ix_(rows, cols)]


def box_window(box, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1): the xyxy box grown by its own size on each side (>= 8 px), clipped to the image:
    where an object is scored (outside it counts as background), as the accuracy benchmark does."""
    x0, y0, x1, y1 = (int(v) for v in box)
    m = max(8, x1 - x0, y1 - y0)
    return max(0, y0 - m), max(0, x0 - m), min(hw[0], y1 + m), min(hw[1], x1 + m)


@torch.no_grad()
def render_logits(model: IMedSAM, samples: Sequence[Sample], device: str | torch.device = "auto",
                  batch_size: int = 4, resolutions: Sequence[int | None] = (None,), baseline: bool = False,
                  encode: Callable[[torch.Tensor, list[tuple]], torch.Tensor] | None = None,
                  windowed: bool = False
                  ) -> Iterator[tuple[int, dict[int | None, tuple[np.ndarray, np.ndarray | None]]]]:
    """For each sample (in order): ``(index, {resolution: (inr_logits, baseline_logits or None)})``.

    Tight boxes from the masks, ``model.eval()``, batched encoder passes, dense queries in chunks.
    ``encode(images, keys)``: a caching encoder (the trainer's, so validation encodes each image once per
    run). ``windowed``: at native resolution only the window around the box (``box_window``) is queried and
    the rest is background (-inf), as the accuracy benchmark scores; for many small objects in large images."""
    dev = resolve_device(device)
    model.to(dev).eval()
    size = model.image_size
    for start in range(0, len(samples), batch_size):
        chunk = [prepare_sample(samples[i], size, i) for i in range(start, min(start + batch_size, len(samples)))]
        images = torch.stack([c.image for c in chunk]).to(dev)
        boxes = torch.from_numpy(np.stack([input_box(c.mask, c.scale_yx, 0, None) for c in chunk])).to(dev)
        valid = torch.tensor([c.valid_hw for c in chunk], dtype=torch.float32, device=dev)
        embedding = model.encode(images) if encode is None else encode(images, [c.key for c in chunk])
        feats = model.decode_box(embedding, boxes)
        tau = model.uncertainty_threshold(feats, valid)
        for i, item in enumerate(chunk):
            fi = feats.index(i)
            ti = None if tau is None else tau[i : i + 1]
            out = {}
            for res in resolutions:
                oh, ow = output_shape(item.mask.shape, res)
                h, w = item.mask.shape
                full = (0, 0, oh, ow)
                wy0, wx0, wy1, wx1 = box_window(mask_to_box(item.mask), (h, w)) if windowed and res is None else full
                ys = (np.arange(wy0, wy1, dtype=np.float32) + 0.5) * (h / oh) * item.scale_yx[0]
                xs = (np.arange(wx0, wx1, dtype=np.float32) + 0.5) * (w / ow) * item.scale_yx[1]
                gy, gx = np.meshgrid(ys, xs, indexing="ij")
                pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], -1)).to(dev)
                inr, base = [], []
                for s in range(0, len(pts), CHUNK):
                    p = pts[s : s + CHUNK].unsqueeze(0)
                    inr.append(model.query(fi, p, valid[i : i + 1], ti)[0][0].float().cpu())
                    if baseline:
                        grid = (p / size * 2 - 1).unsqueeze(2)
                        base.append(F.grid_sample(fi.lowres_logit, grid, mode="bilinear", padding_mode="border",
                                                  align_corners=False)[0, 0, :, 0].float().cpu())
                out[res] = (_place(torch.cat(inr).numpy(), (oh, ow), (wy0, wx0, wy1, wx1)),
                            _place(torch.cat(base).numpy(), (oh, ow), (wy0, wx0, wy1, wx1)) if baseline else None)
            yield item.index, out


def _place(values: np.ndarray, shape: tuple[int, int], window: tuple[int, int, int, int]) -> np.ndarray:
    """Window values into a full grid of -inf (background) logits."""
    y0, x0, y1, x1 = window
    if (y0, x0, y1, x1) == (0, 0, *shape):
        return values.reshape(shape)
    full = np.full(shape, -np.inf, dtype=np.float32)
    full[y0:y1, x0:x1] = values.reshape(y1 - y0, x1 - x0)
    return full


def dice_scores(model: IMedSAM, samples: Sequence[Sample], device: str | torch.device = "auto",
                batch_size: int = 4, encode: Callable | None = None, windowed: bool = False) -> list[float]:
    """Dice of the INR mask (logit > 0) at each sample's own resolution, tight boxes (see
    ``render_logits`` for ``encode`` and ``windowed``)."""
    scores = []
    for i, out in render_logits(model, samples, device, batch_size, encode=encode, windowed=windowed):
        scores.append(dice(out[None][0] > 0, np.asarray(samples[i].mask, dtype=bool)))
    return scores


def evaluate_dice(model: IMedSAM, samples: Sequence[Sample], device: str | torch.device = "auto",
                  batch_size: int = 4, encode: Callable | None = None, windowed: bool = False) -> float:
    """Mean Dice at each sample's own resolution with tight boxes, in ``model.eval()`` mode (the model is
    moved to ``device``)."""
    if len(samples) == 0:
        raise ValueError("evaluate_dice needs at least one sample")
    return float(np.mean(dice_scores(model, samples, device, batch_size, encode, windowed)))


def evaluate_samples(model: IMedSAM, samples: Sequence[Sample], resolutions: Sequence[int] | None = None,
                     device: str | torch.device = "auto", batch_size: int = 4, nsd_tolerance: float = 2.0,
                     nsd_tolerance_mm: float = 2.0, progress: bool = False) -> dict:
    """Metrics of I-MedSAM and of the baseline per resolution: {"rows": [...], "per_sample": [...]}.

    ``resolutions`` None means each image's native size only. NSD tolerance is in output pixels
    (``nsd_tolerance``) and in mm (``nsd_tolerance_mm``) for samples with a known spacing."""
    res_list: list[int | None] = [None] if not resolutions else [int(r) for r in resolutions]
    per_sample: list[dict] = []
    iterator = render_logits(model, samples, device, batch_size, res_list, baseline=True)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(samples), desc="evaluate", unit="sample")
    for i, out in iterator:
        s = samples[i]
        for res, (inr, base) in out.items():
            gt = resize_nearest(np.asarray(s.mask, dtype=bool), inr.shape)
            scale = (s.mask.shape[0] / inr.shape[0], s.mask.shape[1] / inr.shape[1])
            for method, logits in zip(METHODS, (inr, base)):
                pred = logits > 0
                row = {"method": method, "resolution": "native" if res is None else res, "source": s.source,
                       "case_id": s.case_id, "label_id": s.label_id,
                       **compute_metrics(pred, gt, None, nsd_tolerance)}
                if s.spacing is not None:
                    mm = compute_metrics(pred, gt, (s.spacing[0] * scale[0], s.spacing[1] * scale[1]),
                                         nsd_tolerance_mm)
                    row.update(hd_mm=mm["hd"], hd95_mm=mm["hd95"], nsd_mm=mm["nsd"])
                per_sample.append(row)
    rows = []
    for res in res_list:
        key = "native" if res is None else res
        for method in METHODS:
            group = [r for r in per_sample if r["method"] == method and r["resolution"] == key]
            keys = ["dice", "iou", "hd", "hd95", "nsd"] + (["hd_mm", "hd95_mm", "nsd_mm"]
                                                           if any("hd_mm" in r for r in group) else [])
            rows.append({"method": method, "resolution": key, **aggregate(group, keys)})
    return {"rows": rows, "per_sample": per_sample}


def markdown_table(rows: Sequence[dict]) -> str:
    """The aggregated rows as a markdown table (Dice and IoU in %, distances as means)."""
    mm = any("hd_mm" in r for r in rows)
    head = ["method", "resolution", "n", "Dice %", "IoU %", "HD px", "HD95 px", "NSD px"]
    head += ["HD mm", "HD95 mm", "NSD mm"] if mm else []

    def fmt(v, pct=False):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "-"
        return f"{100 * v:.2f}" if pct else f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], str(r["resolution"]), str(r["n"]), fmt(r["dice"], True), fmt(r["iou"], True),
                 fmt(r["hd"]), fmt(r["hd95"]), fmt(r["nsd"], True)]
        if mm:
            cells += [fmt(r.get("hd_mm")), fmt(r.get("hd95_mm")), fmt(r.get("nsd_mm"), True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from .train import DefaultsOnceHelpFormatter

    p = argparse.ArgumentParser(
        prog="imedsam-eval", formatter_class=DefaultsOnceHelpFormatter,
        description="Evaluate I-MedSAM and the discrete baseline (the backbone decoder's own mask, bilinearly "
                    "upsampled) on a dataset split; prints a markdown table and optionally writes JSON.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="dataset folder (images/+masks/, Original/+Ground Truth/, "
                                               "img/+label/ NIfTI, imagesTr/+labelsTr/)")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="the synthetic shapes of imedsam-train --synthetic N (same --split-seed): "
                          "N train, N//4 val, N//4 test")
    p.add_argument("--synthetic-size", type=int, default=96, help="long side of the --synthetic images")
    p.add_argument("--backbone", default="litemedsam", help="tiny, litemedsam, sam_vit_b, sam_vit_l, sam_vit_h")
    p.add_argument("--adapters", default="default",
                   help="an adapters .safetensors file, 'default' (the embedded head, if the backbone has one) or "
                        "'none' (the plain backbone)")
    p.add_argument("--checkpoint", type=Path, help="SAM weights (.pth) for sam_vit_* backbones")
    p.add_argument("--download", action="store_true", help="download missing SAM weights into the cache")
    p.add_argument("--split", default="test", choices=("test", "val", "train", "all"),
                   help="which split to evaluate (same seeded split / list files as imedsam-train)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the random 60/20/20 split by case")
    p.add_argument("--resolutions", type=int, nargs="+", metavar="R",
                   help="output long sides (e.g. 128 384 896); default: each image's native size")
    p.add_argument("--json", type=Path, help="write the table rows and per-sample metrics here")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, cuda:1, mps or cpu")
    p.add_argument("--batch-size", type=int, default=4, help="images per encoder pass")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N samples of the split")
    p.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                   help="CT window in HU for NIfTI data (default -125 275)")
    p.add_argument("--organs", type=int, nargs="+", metavar="ID",
                   help="NIfTI data: only these label ids (e.g. 6 = liver in BCV and AMOS); default all")
    p.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in output pixels")
    p.add_argument("--nsd-tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (known spacing)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from napari_imedsam.model import load_model

    from .data import DatasetError, open_dataset, split_dataset
    from .synthetic import synthetic_splits

    args = build_parser().parse_args(argv)
    try:
        if args.synthetic is not None:
            splits = synthetic_splits(args.synthetic, size=args.synthetic_size, seed=args.split_seed)
            samples = splits["train"] if args.split == "all" else splits[args.split]
        else:
            options = {"window": tuple(args.window)} if args.window else {}
            if args.organs:
                options["organs"] = args.organs
            dataset = open_dataset(args.data, **options)
            samples = dataset if args.split == "all" else split_dataset(dataset, seed=args.split_seed)[args.split]
        if args.max_samples is not None:
            samples = [samples[i] for i in range(min(args.max_samples, len(samples)))]
        if len(samples) == 0:
            raise DatasetError(f"the {args.split} split is empty")
    except DatasetError as exc:
        print(f"imedsam-eval: dataset error: {exc}", file=sys.stderr)
        return 2
    adapters = {"default": True, "none": None}.get(args.adapters, args.adapters)
    try:
        model = load_model(args.backbone, checkpoint=args.checkpoint, adapters=adapters, download=args.download)
    except (ValueError, FileNotFoundError) as exc:
        print(f"imedsam-eval: {exc}", file=sys.stderr)
        return 2
    result = evaluate_samples(model, samples, args.resolutions, args.device, args.batch_size,
                              args.nsd_tolerance, args.nsd_tolerance_mm, progress=sys.stderr.isatty())
    print(f"{len(samples)} samples, split {args.split}, backbone {args.backbone}, adapters {args.adapters}")
    print(markdown_table(result["rows"]))
    if args.json:
        from .checkpoint import write_json

        write_json(args.json, {"backbone": args.backbone, "adapters": str(args.adapters), "split": args.split,
                               "n_samples": len(samples), "resolutions": args.resolutions or ["native"],
                               **result})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
