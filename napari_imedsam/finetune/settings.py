"""What a fine-tune run is asked to do (no Qt): the user's settings, the training length, the held-out split
of the project's pairs and the ``src_training`` configuration they make; the run itself is ``run.py``."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..model.device import resolve_device
from ..model.imedsam import PART_NAMES, IMedSAM
from .project import PairInfo

#: Adapters (LoRA, FA, decoder) learn at this fraction of the INR's rate (the paper: 5e-5 vs 1e-3).
ADAPTER_LR_RATIO = 0.05
#: On a CPU the encoder's backward pass is slow: train SAM's mask decoder, its upscaling and the INR on
#: cached embeddings (one encode per distinct slice).
CPU_PARTS = ("decoder", "mask_decoder", "inr")


class FinetuneError(Exception):
    """Fine-tuning cannot start; the message says what to do."""


def default_parts(device: str | torch.device = "auto") -> tuple[str, ...]:
    """Everything on a GPU; the decoders + INR on a CPU (no encoder backward pass: seconds, not minutes)."""
    return PART_NAMES if resolve_device(device).type != "cpu" else CPU_PARTS


@dataclass
class FinetuneSettings:
    """What the user chooses before a run (defaults chosen by ``benchmarks/finetune_curve.py``)."""

    steps: int = 0  # 0: follow the data (``epochs`` over the training pairs, within [min_steps, max_steps])
    epochs: float = 12.0
    min_steps: int = 40
    max_steps: int = 400
    lr: float = 1e-3  # the INR's learning rate; the other parts use lr * ADAPTER_LR_RATIO
    parts: tuple[str, ...] = CPU_PARTS
    held_out: float = 0.2  # fraction of the annotated slices (or objects, with one slice) kept for the check
    batch_size: int = 4
    points: int | None = 1024  # query points per object and step, by the point mix (None: the whole grid)
    device: str = "auto"
    seed: int = 0
    val_every: int = 0  # held-out Dice every N steps (0: about eight times per run); the best adapters are kept
    patience: int = 3  # stop after this many held-out checks without a better Dice (0: run every step)
    augment: bool = False  # flips and 90-degree turns (each distinct view costs one encode; no gain measured)
    jitter_fraction: float = 0.1  # training boxes move out by up to this fraction of the object's size

    def check(self) -> None:
        if self.steps < 0 or self.min_steps < 1 or self.max_steps < self.min_steps:
            raise FinetuneError("Set the number of steps (0 for automatic), and at least one step.")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise FinetuneError(f"The number of epochs must be a positive number, got {self.epochs}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FinetuneError(f"The learning rate must be a positive number, got {self.lr}.")
        if not self.parts:
            raise FinetuneError("Choose at least one part to train (LoRA, FA, decoder or INR).")
        unknown = set(self.parts) - set(PART_NAMES)
        if unknown:
            raise FinetuneError(f"Unknown parts {sorted(unknown)}; choose from {', '.join(PART_NAMES)}.")
        if not 0.0 <= self.held_out < 1.0:
            raise FinetuneError(f"The held-out fraction must be in [0, 1), got {self.held_out}.")

    def timing_key(self, model: IMedSAM, device: torch.device) -> str:
        return f"{model.backbone_name}|{'+'.join(sorted(self.parts))}|{device.type}|b{self.batch_size}"

    def steps_for(self, train_pairs: int) -> int:
        """The run's length: ``steps`` when set, else ``epochs`` passes over the pairs, clipped."""
        if self.steps:
            return int(self.steps)
        batch = max(1, min(self.batch_size, train_pairs))
        return int(np.clip(math.ceil(self.epochs * train_pairs / batch), self.min_steps, self.max_steps))


#: Seconds per step (batch 4, 4096 points) measured by ``benchmarks/finetune_curve.py`` on a 2-core CPU, by
#: (backbone, whether the image encoder trains): the estimate before a first run with these settings.
CPU_SECONDS_PER_STEP = {("litemedsam", False): 1.7, ("litemedsam", True): 6.0, ("tiny", False): 0.1,
                        ("tiny", True): 0.3}


def seconds_per_step_prior(backbone: str, parts: Sequence[str], device: torch.device, batch_size: int
                           ) -> float | None:
    """Typical seconds per step on a 2-core CPU (scaled by the batch size), None when not measured."""
    if device.type != "cpu":
        return None
    per = CPU_SECONDS_PER_STEP.get((backbone, bool({"lora", "fa"} & set(parts))))
    return None if per is None else per * batch_size / 4


#: The absolute cap of the training box jitter (the paper's 20 px on 384-512 px images).
MAX_JITTER_PX = 20

#: How the held-out pairs were chosen (reported in the result message).
SPLIT_RULES = {
    "slices": "whole slices held out (objects of a slice stay together)",
    "objects": "one annotated slice, so objects are held out (the encoder is frozen: they cannot leak)",
    "objects-encoder": "one annotated slice, so objects are held out (LoRA/FA see the whole slice in training: "
                       "the check is optimistic)",
    "none": "nothing held out",
}


def _stable(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def split_held_out(pairs: Sequence[PairInfo], fraction: float, encoder_trains: bool = False
                   ) -> tuple[list[PairInfo], list[PairInfo], str]:
    """(train, held-out, rule): by slice, never separating the objects of one slice; with a single
    annotated slice, by object. Stable: a slice's (object's) side depends on its name's hash, so adding
    pairs later rarely moves an old one into training. ``rule`` is a key of ``SPLIT_RULES``."""
    cases = sorted({p.case_id for p in pairs}, key=_stable)
    if fraction <= 0:
        return list(pairs), [], "none"
    if len(cases) >= 2:
        n_val = min(max(int(round(fraction * len(cases))), 1), len(cases) - 1)
        held = set(cases[:n_val])
        return [p for p in pairs if p.case_id not in held], [p for p in pairs if p.case_id in held], "slices"
    if len(pairs) < 2:
        return list(pairs), [], "none"
    order = sorted(pairs, key=lambda p: _stable(f"{p.case_id}|{p.label_id}"))
    n_val = min(max(int(round(fraction * len(order))), 1), len(order) - 1)
    held_ids = {p.id for p in order[:n_val]}
    rule = "objects-encoder" if encoder_trains else "objects"
    return [p for p in pairs if p.id not in held_ids], [p for p in pairs if p.id in held_ids], rule


def planned_steps(s: FinetuneSettings, pairs: Sequence[PairInfo]) -> int:
    """The most steps a run on ``pairs`` takes with ``s`` (its training side of the held-out split)."""
    train, _, _ = split_held_out(pairs, s.held_out, bool({"lora", "fa"} & set(s.parts)))
    return s.steps_for(max(1, len(train)))


def train_config(s: FinetuneSettings, n_train: int, validated: bool, device: str | torch.device = "auto"):
    """The ``src_training`` configuration of a widget run on ``n_train`` pairs (benchmarks use it too)."""
    from src_training.trainer import TrainConfig

    steps = s.steps_for(n_train)
    encoder_trains = bool({"lora", "fa"} & set(s.parts))
    return TrainConfig(
        steps=steps, batch_size=min(s.batch_size, n_train), lr_inr=s.lr, lr_rest=s.lr * ADAPTER_LR_RATIO,
        points=s.points, parts=tuple(s.parts), device=str(resolve_device(device)), seed=s.seed,
        val_every=(s.val_every or max(1, steps // 8)) if validated else 0, patience=s.patience if validated else 0,
        jitter=MAX_JITTER_PX, jitter_fraction=s.jitter_fraction, augment=s.augment,
        cache_embeddings=not encoder_trains, val_window=True,
    )
