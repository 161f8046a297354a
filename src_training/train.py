"""``imedsam-train``: train I-MedSAM's adapters and INR decoder on a dataset, on one device or with torchrun.

One device:   imedsam-train --data Kvasir-Sessile --backbone sam_vit_b --checkpoint sam_vit_b_01ec64.pth \
                  --image-size 384 --steps 20000 --out runs/ks
Several GPUs: torchrun --nproc_per_node=4 -m src_training.train <same options>
(``--batch-size`` is the global batch, split across processes; rank 0 logs, validates and writes files.)
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import distributed

DEBUG_DUMP_ENV = "IMEDSAM_DEBUG_DUMP_RANKS"  # =1: every rank writes OUT/rank{r}.safetensors (tests)


class DefaultsOnceHelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default once: appended as ``(default: X)`` unless the help text already
    names it ("default: ..." or "default ..."), and left out where there is none (None, or False for a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or action.required or default is None or default is False
                or default is argparse.SUPPRESS or re.search(r"\bdefault[: ]", text, re.IGNORECASE)):
            return text
        shown = " ".join(str(v) for v in default) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def build_parser() -> argparse.ArgumentParser:
    from napari_imedsam.model.imedsam import PART_NAMES

    from .sampling import DEFAULT_MIX

    p = argparse.ArgumentParser(
        prog="imedsam-train", formatter_class=DefaultsOnceHelpFormatter,
        description="Train I-MedSAM (LoRA + frequency adapters + implicit decoder) on a segmentation dataset. "
                    "Writes OUT/adapters.safetensors (best by validation Dice), OUT/last.ckpt (resumable), "
                    "OUT/metrics.json and OUT/loss_log.csv. Under torchrun it trains data-parallel.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="dataset folder: images/+masks/ (Kvasir), Original/+Ground Truth/ "
                                               "(CVC-ClinicDB), img/+label/ (BCV NIfTI), imagesTr/+labelsTr/")
    src.add_argument("--synthetic", type=int, metavar="N",
                     help="train on N generated shapes instead of --data (validation on N//4 others)")
    src.add_argument("--head-data", type=float, metavar="SCALE",
                     help="the default head's training mix (src_training.head_data: nuclei fields, CT phantom "
                          "slices, synthetic shapes, each input at 1/1, 1/2 and 1/4 with full-size masks) times SCALE "
                          "(1: the shipped CPU recipe)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--backbone", default="litemedsam", help="tiny, litemedsam, sam_vit_b, sam_vit_l or sam_vit_h")
    p.add_argument("--checkpoint", type=Path, help="SAM weights (.pth) for sam_vit_* backbones")
    p.add_argument("--download", action="store_true", help="download missing SAM weights into the cache folder")
    p.add_argument("--adapters", type=Path, help="start from these adapters (.safetensors) instead of fresh ones")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.ckpt exactly")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=1000, help="optimiser steps")
    g.add_argument("--batch-size", type=int, default=4, help="global images per step (split across processes)")
    g.add_argument("--accumulate", type=int, default=1, help="gradient-accumulation micro-batches per step")
    g.add_argument("--lr-inr", type=float, default=1e-3, help="learning rate of the INR heads")
    g.add_argument("--lr-rest", type=float, default=5e-5, help="learning rate of LoRA, FA and the decoder")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    g.add_argument("--points", type=int,
                   help="query points per object and step, drawn by --point-mix (default: the whole label grid, "
                        "the paper's setting)")
    g.add_argument("--point-mix", type=float, nargs=3, metavar=("BOX", "BOUNDARY", "UNIFORM"),
                   default=[DEFAULT_MIX["box"], DEFAULT_MIX["boundary"], DEFAULT_MIX["uniform"]],
                   help="shares of --points in and around the box, along the mask's edge and over the whole "
                        "image (0 0 1: the uniform sampler)")
    g.add_argument("--box-margin", type=float, default=DEFAULT_MIX["margin"],
                   help="the box points' box is grown by this fraction of its size per side")
    g.add_argument("--boundary-band", type=float, default=DEFAULT_MIX["band"],
                   help="half-width of the edge band, image pixels")
    g.add_argument("--jitter", type=int, default=20, help="max box jitter per side in training, image pixels")
    g.add_argument("--jitter-fraction", type=float, default=0.0,
                   help="max box jitter per side as a fraction of the box's size, capped by --jitter (0: off)")
    g.add_argument("--click-prob", type=float, default=0.0,
                   help="probability that an object also gets a simulated corrective click (trains point prompts)")
    g.add_argument("--max-clicks", type=int, default=1,
                   help="a clicked object gets 1..N clicks, each from the model's mask given the clicks before it")
    g.add_argument("--augment", action="store_true", help="random flips and 90-degree turns")
    g.add_argument("--parts", nargs="+", default=list(PART_NAMES), choices=list(PART_NAMES),
                   help="what trains (mask_decoder: SAM's two-way transformer and hypernetwork MLPs)")
    g.add_argument("--patience", type=int, default=0,
                   help="stop after this many validations without a better Dice (0: run every step)")
    g.add_argument("--cache-embeddings", action="store_true",
                   help="encode each image once (only when lora and fa are not in --parts)")
    g.add_argument("--seed", type=int, default=0, help="seed of the data order, boxes, points and dropout")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    g.add_argument("--val-every", type=int, default=0, help="validate every N steps (0: once per epoch)")
    g.add_argument("--checkpoint-every", type=int, default=0, help="write last.ckpt every N steps (0: at the end)")
    g.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1 or mps")
    g.add_argument("--workers", type=int, default=0, help="DataLoader processes reading and resizing samples")
    d = p.add_argument_group("data")
    d.add_argument("--split-seed", type=int, default=0,
                   help="seed of the 60/20/20 split by case (ignored when train.txt/val.txt/test.txt exist)")
    d.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                   help="CT window in HU for NIfTI data (default -125 275)")
    d.add_argument("--organs", type=int, nargs="+", metavar="ID",
                   help="NIfTI data: only these label ids (e.g. 6 = liver in BCV and AMOS); default all")
    d.add_argument("--head-size", type=int, default=512, help="full-resolution side of the --head-data images")
    d.add_argument("--synthetic-size", type=int, default=96, help="long side of the --synthetic images")
    d.add_argument("--synthetic-mask-scale", type=int, default=1, metavar="K",
                   help="render the --synthetic training masks K times finer than the images (exact sub-pixel "
                        "targets for the INR; validation stays at the image's size)")
    m = p.add_argument_group("model (ignored with --adapters, whose file holds the configuration)")
    m.add_argument("--image-size", type=int, help="encoder input side, multiple of 16 (paper: 384 KS, 512 BCV)")
    m.add_argument("--no-residual", action="store_true", help="paper-faithful INR without the residual path")
    m.add_argument("--no-fa", action="store_true", help="no frequency adapter (ablation)")
    m.add_argument("--no-ugs", action="store_true", help="no uncertainty-guided sampling / fine head (ablation)")
    m.add_argument("--fa-mode", choices=["amplitude", "phase"], help="spectrum the frequency adapter sees")
    m.add_argument("--lora-rank", type=int, help="LoRA rank (default 4)")
    m.add_argument("--topk", type=float, help="fraction of most uncertain points refined by the fine head")
    m.add_argument("--mc-samples", type=int, help="MC-dropout passes for the uncertainty")
    return p


def model_overrides(args: argparse.Namespace) -> dict:
    """The architecture options given on the command line, as IMedSAMConfig fields."""
    out: dict = {}
    if args.image_size is not None:
        out["image_size"] = args.image_size
    if args.no_residual:
        out["residual"] = False
    if args.no_fa:
        out["fa"] = False
    if args.no_ugs:
        out["ugs"] = False
    for key in ("fa_mode", "lora_rank", "topk", "mc_samples"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def load_training_model(args: argparse.Namespace):
    """The model to train: fresh adapters with the CLI's options, or the given adapter file."""
    from napari_imedsam.model import load_model
    from napari_imedsam.model.config import INFERENCE_ONLY

    overrides = model_overrides(args)
    if args.adapters is None:
        return load_model(args.backbone, checkpoint=args.checkpoint, adapters=None, download=args.download,
                          **overrides)
    model = load_model(args.backbone, checkpoint=args.checkpoint, adapters=args.adapters, download=args.download)
    clashes = [f"{k}={v!r} (file: {getattr(model.config, k)!r})" for k, v in overrides.items()
               if k not in INFERENCE_ONLY and getattr(model.config, k) != v]
    if clashes:
        raise ValueError(f"--adapters {args.adapters} has another architecture than the options given: "
                         + ", ".join(clashes) + ". Drop these options or the adapter file.")
    inference = {k: v for k, v in overrides.items() if k in INFERENCE_ONLY}
    if inference:
        model.config = model.config.with_(**inference)
    return model


def load_splits(args: argparse.Namespace) -> tuple[Sequence, Sequence]:
    from .data import DatasetError, open_dataset, split_dataset
    from .synthetic import synthetic_splits

    if args.head_data is not None:
        if not args.head_data > 0 or args.head_size < 32 or args.head_size % 4:
            raise DatasetError(f"--head-data needs a positive scale and --head-size a multiple of 4 >= 32, got "
                               f"{args.head_data} and {args.head_size}")
        from .head_data import head_splits

        splits = head_splits(args.head_data, size=args.head_size, seed=args.split_seed)
        return splits["train"], splits["val"]
    if args.synthetic is not None:
        splits = synthetic_splits(args.synthetic, size=args.synthetic_size, seed=args.split_seed,
                                  mask_scale=args.synthetic_mask_scale)
        return splits["train"], splits["val"]
    options = {"window": tuple(args.window)} if args.window else {}
    if args.organs:
        options["organs"] = args.organs
    splits = split_dataset(open_dataset(args.data, **options), seed=args.split_seed)
    return splits["train"], splits["val"]


class CLICallbacks:
    """tqdm progress on rank 0 and a graceful stop on the first Ctrl-C (checkpoint written, resumable)."""

    def __init__(self, total: int, main_rank: bool):
        self.stop = False
        self.bar = None
        if main_rank:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)

    def on_step(self, step: int, total: int, loss: float, logs: dict) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.refresh()

    def on_validation(self, step: int, dice: float) -> None:
        if self.bar is not None:
            self.bar.write(f"step {step}: validation Dice {dice:.4f}")

    def should_stop(self) -> bool:
        return self.stop

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    from .data import DatasetError
    from .trainer import TrainConfig, fit

    args = build_parser().parse_args(argv)
    info, device = distributed.init_distributed(args.device)

    def say(msg: str) -> None:
        if info.is_main:
            print(msg, file=sys.stderr)

    try:
        try:
            train, val = load_splits(args)
            if len(train) == 0:
                raise DatasetError(f"the training split of {args.data} is empty")
        except DatasetError as exc:
            say(f"imedsam-train: dataset error: {exc}")
            return 2
        try:
            import torch

            torch.manual_seed(args.seed)  # the same fresh adapters on every rank (rank 0's are broadcast anyway)
            model = load_training_model(args)
            config = TrainConfig(
                steps=args.steps, batch_size=args.batch_size, lr_inr=args.lr_inr, lr_rest=args.lr_rest,
                weight_decay=args.weight_decay, points=args.points, jitter=args.jitter, accumulate=args.accumulate,
                mix_box=args.point_mix[0], mix_boundary=args.point_mix[1], mix_uniform=args.point_mix[2],
                box_margin=args.box_margin, boundary_band=args.boundary_band, jitter_fraction=args.jitter_fraction,
                augment=args.augment, patience=args.patience, click_prob=args.click_prob, max_clicks=args.max_clicks,
                seed=args.seed, val_every=args.val_every, checkpoint_every=args.checkpoint_every,
                parts=tuple(args.parts), device=device, amp=not args.no_amp, cache_embeddings=args.cache_embeddings,
                workers=args.workers)
        except (ValueError, FileNotFoundError) as exc:
            say(f"imedsam-train: {exc}")
            return 2
        if args.resume and not (args.out / "last.ckpt").is_file():
            say(f"imedsam-train: --resume: no checkpoint {args.out / 'last.ckpt'}; start without --resume.")
            return 2
        model.set_trainable(config.parts)  # what fit trains, so the count below is that of --parts
        say(f"training {model.backbone_name} ({model.trainable_parameter_count():,} trainable parameters) on "
            f"{len(train)} samples, validating on {len(val)}, {info.world_size} process(es) -> {args.out}")
        callbacks = CLICallbacks(args.steps, info.is_main)
        previous = signal.signal(signal.SIGINT, lambda *_: setattr(callbacks, "stop", True))
        try:
            result = fit(model, train, val, config, callbacks=callbacks, out_dir=args.out, resume=args.resume)
        except FloatingPointError as exc:
            say(f"imedsam-train: {exc}")
            return 1
        finally:
            signal.signal(signal.SIGINT, previous)
            callbacks.close()
        if os.environ.get(DEBUG_DUMP_ENV) == "1":
            from safetensors.torch import save_file

            args.out.mkdir(parents=True, exist_ok=True)
            tensors = {k: v.detach().cpu().contiguous() for k, v in model.adapter_state_dict().items()}
            save_file(tensors, str(args.out / f"rank{info.rank}.safetensors"))
        best = "n/a" if result.best_val_dice is None else f"{result.best_val_dice:.4f} at step {result.best_step}"
        state = "stopped (resume with --resume)" if result.stopped else "done"
        say(f"{state}: {result.steps_done} steps in {result.seconds:.0f} s, best validation Dice {best}; "
            f"adapters: {args.out / 'adapters.safetensors'}")
        return 0
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
