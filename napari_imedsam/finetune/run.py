"""Fine-tune a model on a project's corrected pairs with ``src_training``'s one training loop (no Qt).

``FinetuneRun`` turns the project's pairs into ``Sample``s, holds out a stable part of the slices, measures
held-out Dice before, runs ``fit`` on a *copy* of the model (the viewer keeps predicting with the original),
measures held-out Dice after, saves a versioned adapters file in the project and decides whether the new
adapters should become active (only when held-out Dice did not get worse). Progress goes to a thread-safe
queue of ``Event``s that the GUI drains; ``stop()`` ends training at the next step, keeping the best so far.
"""

from __future__ import annotations

import copy
import hashlib
import math
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.adapters import save_adapters
from ..model.device import resolve_device
from ..model.imedsam import PART_NAMES, IMedSAM
from ..model.preprocess import image_to_unit
from .project import PairInfo, Project, VersionInfo

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


@dataclass(frozen=True)
class Event:
    """One progress report from the worker (``kind``: "phase", "step", "val")."""

    kind: str
    step: int = 0
    total: int = 0
    loss: float = float("nan")
    dice: float = float("nan")
    seconds_per_step: float | None = None  # training steps only (validations timed apart)
    seconds_left: float | None = None  # estimate, validations included
    text: str = ""


@dataclass
class FinetuneOutcome:
    """What a run did. ``status``: improved, worse (previous adapters stay active), unchecked (no held-out
    pairs; the new adapters are active), stopped (before anything better than the start was found), nan (the
    loss diverged). Errors are raised instead (``FinetuneError`` for what the user can fix)."""

    status: str
    message: str
    model: IMedSAM | None = None  # the fine-tuned copy (None when nothing was trained)
    version: VersionInfo | None = None
    start_version: VersionInfo | None = None
    dice_before: float | None = None
    dice_after: float | None = None
    steps_done: int = 0
    stopped: bool = False
    train_pairs: int = 0
    held_out_pairs: int = 0
    split_rule: str = "none"  # a key of SPLIT_RULES
    history: list[float] = field(default_factory=list)
    seconds: float = 0.0  # the whole run: checks before and after included
    early_stopped: bool = False

    @property
    def activate(self) -> bool:
        return self.status in ("improved", "unchecked") and self.model is not None


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


def pairs_to_samples(project: Project, pairs: Sequence[PairInfo]) -> list:
    """The pairs as ``src_training`` Samples: image windowed to [0, 1] exactly as the Predictor does."""
    from src_training.data.sample import Sample

    out = []
    for p in pairs:
        image, mask = project.load_pair(p)
        if not mask.any():
            raise FinetuneError(f"Pair {p.describe()} has an empty mask; remove it from the project.")
        out.append(Sample(image=image_to_unit(image, p.window), mask=mask, source=p.describe(),
                          case_id=p.case_id, label_id=p.label_id))
    return out


class FinetuneRun:
    """One fine-tuning run; ``run()`` is blocking (call it in a worker thread), ``stop()`` from anywhere."""

    def __init__(self, model: IMedSAM, project: Project, settings: FinetuneSettings):
        settings.check()
        self.project, self.settings = project, settings
        self.pairs = project.pairs
        if not self.pairs:
            raise FinetuneError("No training pairs yet: correct a mask in a Labels layer, then press "
                                "'Add current slice' or 'Add all annotated slices'.")
        self.device = resolve_device(settings.device)
        self.model = copy.deepcopy(model).cpu()  # trained copy; the viewer keeps predicting with ``model``
        self.events: queue.Queue[Event] = queue.Queue()
        self._stop = threading.Event()
        self.done = threading.Event()  # set when run() returns or raises (also if the GUI is gone)
        self.timing_key = settings.timing_key(model, self.device)
        self._embeddings: dict[tuple, torch.Tensor] = {}  # frozen encoder: one encode per distinct slice view
        self.split_rule = "none"

    # ---- control ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def planned_steps(self) -> int:
        """Steps this run will take at most (early stopping may end it sooner)."""
        return planned_steps(self.settings, self.pairs)

    def estimate_seconds(self) -> float | None:
        """Training time from the last run with the same backbone, parts, device and batch (None: unknown)."""
        per_step = self.project.seconds_per_step(self.timing_key)
        return None if per_step is None else per_step * self.planned_steps()

    def _emit(self, kind: str, **kw) -> None:
        self.events.put(Event(kind, **kw))

    # ---- the run ---------------------------------------------------------------------------------------
    def run(self) -> FinetuneOutcome:
        try:
            return self._run()
        finally:
            self.done.set()

    def _run(self) -> FinetuneOutcome:
        from src_training.trainer import evaluate_dice, fit

        s = self.settings
        encoder_trains = bool({"lora", "fa"} & set(s.parts))
        train_pairs, val_pairs, rule = split_held_out(self.pairs, s.held_out, encoder_trains)
        if not train_pairs:
            raise FinetuneError("Every pair is held out; lower the held-out fraction or add more slices.")
        self.split_rule = rule
        self._emit("phase", text=f"Reading {len(self.pairs)} pairs")
        train, val = pairs_to_samples(self.project, train_pairs), pairs_to_samples(self.project, val_pairs)
        start = self._record_start()
        counts = dict(train_pairs=len(train), held_out_pairs=len(val), start_version=start, split_rule=rule)
        steps = s.steps_for(len(train))
        t0 = time.perf_counter()
        dice_before = None
        if val:
            self._emit("phase", text=f"Held-out Dice before training ({len(val)} pairs)")
            dice_before = self._dice_unless_stopped(evaluate_dice, val)
            if dice_before is not None:
                self._emit("val", step=0, total=steps, dice=dice_before)
        if self.stop_requested:
            return FinetuneOutcome("stopped", "Stopped before training started; nothing changed.",
                                   dice_before=dice_before, stopped=True, **counts)
        config = train_config(s, len(train), bool(val), self.device)
        callbacks = _Progress(self)
        self._emit("phase", text=f"Training up to {steps} steps on {len(train)} pairs ({self.device.type})")
        try:
            result = fit(self.model, train, val or None, config, callbacks=callbacks,
                         embedding_cache=None if encoder_trains else self._embeddings)
        except FloatingPointError as exc:
            return FinetuneOutcome(
                "nan", "Training diverged (NaN loss) and was stopped; the previous adapters stay active. Try a "
                f"lower learning rate. Details: {exc}", dice_before=dice_before, history=callbacks.losses, **counts)
        if callbacks.seconds_per_step:
            self.project.set_seconds_per_step(self.timing_key, callbacks.seconds_per_step)
        nothing = result.steps_done == 0 or (val and result.best_val_dice is None)
        if nothing:  # stopped before the first step, or before the first validation: starting adapters
            return FinetuneOutcome("stopped", "Stopped before anything better than the starting adapters was "
                                   "found; nothing changed.", dice_before=dice_before, stopped=True,
                                   steps_done=result.steps_done, history=callbacks.losses, **counts)
        # fit scores the held-out pairs exactly as evaluate_dice does and returns with the best adapters loaded
        dice_after = float(result.best_val_dice) if val else None
        status = "unchecked" if dice_after is None else "improved" if dice_after > dice_before else "worse"
        version = self._save_version(status, dice_before, dice_after, result.steps_done, len(self.pairs))
        seconds = time.perf_counter() - t0
        message = _message(status, dice_before, dice_after, version, result.stopped)
        message += f" Trained {result.steps_done} steps on {len(train)} pairs, {len(val)} held out ("
        message += f"{SPLIT_RULES[rule]}), in {seconds:.0f} s."
        return FinetuneOutcome(status, message, model=self.model.eval(), version=version, dice_before=dice_before,
                               dice_after=dice_after, steps_done=result.steps_done, stopped=result.stopped,
                               history=callbacks.losses, seconds=seconds, early_stopped=result.early_stopped,
                               **counts)

    def _encode_cached(self, images: torch.Tensor, keys: list[tuple]) -> torch.Tensor:
        """The frozen encoder with the run's embedding cache (shared with ``fit``: one encode per slice)."""
        from src_training.trainer import encode_cached

        return encode_cached(self.model, images, keys, self._embeddings)[0]

    def _dice_unless_stopped(self, evaluate_dice, samples, chunk: int = 2) -> float | None:
        """Mean Dice over ``samples``, a few at a time so that Stop is obeyed within seconds (None if stopped).
        Scored exactly as ``fit`` validates (a window around each box, cached embeddings)."""
        total = 0.0
        encode = None if {"lora", "fa"} & set(self.settings.parts) else self._encode_cached
        for i in range(0, len(samples), chunk):
            if self.stop_requested:
                return None
            part = samples[i : i + chunk]
            total += evaluate_dice(self.model, part, device=self.device, encode=encode, windowed=True) * len(part)
        return total / len(samples)

    def _record_start(self) -> VersionInfo | None:
        """Save the starting adapters once, so that 'revert' can always return to them."""
        sha = self.model.fingerprint()
        for v in self.project.versions:
            if v.sha == sha:
                return v
        path = self.project.new_version_path()
        info = dict(kind="start", backbone=self.model.backbone_name, sha=sha,
                    note="adapters in use when fine-tuning started")
        save_adapters(self.model, path, extra={k: str(v) for k, v in info.items()})
        return self.project.record_version(path, activate=self.project.active is None, **info)

    def _save_version(self, status: str, before, after, steps: int, pairs: int) -> VersionInfo:
        path = self.project.new_version_path()
        info = dict(kind="trained", backbone=self.model.backbone_name, pairs=pairs, steps=steps,
                    dice_before="" if before is None else round(before, 5),
                    dice_after="" if after is None else round(after, 5),
                    parts=list(self.settings.parts), sha=self.model.fingerprint(),
                    created=time.strftime("%Y-%m-%dT%H:%M:%S"), lr=self.settings.lr)
        save_adapters(self.model, path, extra=info)
        return self.project.record_version(path, activate=status in ("improved", "unchecked"),
                                           **{k: v for k, v in info.items() if k != "lr"})


class _Progress:
    """``fit`` callbacks: forward steps and validations to the run's event queue; obey ``stop()``.

    Times training steps apart from validations (the first step, which fills the embedding cache, is not
    timed) so that the estimate of the time left counts both."""

    def __init__(self, run: FinetuneRun):
        self.run, self.losses = run, []
        self._last: float | None = None
        self._train: list[float] = []
        self._val: list[float] = []
        self._val_every = 0

    @property
    def seconds_per_step(self) -> float | None:
        return float(np.median(self._train)) if self._train else None

    def seconds_left(self, step: int, total: int) -> float | None:
        per_step = self.seconds_per_step
        if per_step is None:
            return None
        every = self._val_every or total
        vals_left = (total // every - step // every) if every else 0
        return per_step * (total - step) + (float(np.mean(self._val)) if self._val else 0.0) * max(0, vals_left)

    def on_step(self, step: int, total: int, loss: float, logs=None) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self._train.append(now - self._last)
        self._last = now
        self.losses.append(float(loss))
        self.run._emit("step", step=int(step), total=int(total), loss=float(loss),
                       seconds_per_step=self.seconds_per_step, seconds_left=self.seconds_left(step, total))

    def on_validation(self, step: int, dice: float) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self._val.append(now - self._last)
        self._val_every = self._val_every or int(step)
        self._last = now
        self.run._emit("val", step=int(step), dice=float(dice))

    def should_stop(self) -> bool:
        return self.run.stop_requested


def _message(status: str, before, after, version: VersionInfo, stopped: bool) -> str:
    head = f"Stopped early; saved the best adapters so far as v{version.version}. " if stopped else \
        f"Saved adapters v{version.version}. "
    if status == "unchecked":
        return head + "No held-out pairs, so the result could not be checked; the new adapters are active."
    change = f"held-out Dice {before:.3f} -> {after:.3f}"
    if status == "improved":
        return head + f"Fine-tuning helped: {change}. The new adapters are active."
    return head + (f"Fine-tuning did not help ({change}); the previous adapters stay active. Choose "
                   f"v{version.version} under 'Adapters' and press 'Activate' to use it anyway.")

