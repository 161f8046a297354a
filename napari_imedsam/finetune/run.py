"""Fine-tune a model on a project's corrected pairs with ``src_training``'s one training loop (no Qt).

``FinetuneRun`` turns the project's pairs into ``Sample``s, holds out a stable part of the slices, measures
held-out Dice before, runs ``fit`` on a *copy* of the model (the viewer keeps predicting with the original),
measures held-out Dice after, saves a versioned adapters file in the project and decides whether the new
adapters should become active (only when held-out Dice did not get worse). Progress goes to a thread-safe
queue of ``Event``s that the GUI drains; ``stop()`` ends training at the next step, keeping the best so far.
"""

from __future__ import annotations

import copy
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..model.adapters import save_adapters
from ..model.device import resolve_device
from ..model.imedsam import IMedSAM
from ..model.preprocess import image_to_unit
from .project import PairInfo, Project, VersionInfo
from .settings import (
    SPLIT_RULES,
    FinetuneError,
    FinetuneSettings,
    planned_steps,
    split_held_out,
    train_config,
)


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
            raise FinetuneError("No training pairs yet: correct masks in a Labels layer and add those slices to "
                                "the project first.")
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
    return head + (f"Fine-tuning did not help ({change}); the previous adapters stay active. Activate "
                   f"version v{version.version} to use it anyway.")

