"""What a training run is told (``TrainConfig``), the hooks it calls (``Callbacks``) and what it returns
(``FitResult``); the loop itself is ``trainer.fit``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from napari_imedsam.model.imedsam import PART_NAMES

from .sampling import DEFAULT_MIX, PointMix

# TrainConfig fields that may change between a run and its resumption (they do not change the maths)
RESUMABLE_CHANGES = ("device", "checkpoint_every", "workers", "val_every", "patience", "val_window")


@dataclass
class TrainConfig:
    """Every setting of a training run (see DESIGN.md "Training" for the paper's values)."""

    steps: int = 1000
    batch_size: int = 4  # global: split across processes
    lr_inr: float = 1e-3
    lr_rest: float = 5e-5
    weight_decay: float = 0.01
    points: int | None = None  # None = whole label grid, int = points per image drawn by the point mix
    # the point mix (sampling.PointMix): shares in the grown box, along the mask's edge, uniform
    mix_box: float = DEFAULT_MIX["box"]
    mix_boundary: float = DEFAULT_MIX["boundary"]
    mix_uniform: float = DEFAULT_MIX["uniform"]
    box_margin: float = DEFAULT_MIX["margin"]  # growth of the box per side for its points, x box size
    boundary_band: float = DEFAULT_MIX["band"]  # half-width of the edge band, image pixels
    jitter: int = 20  # max box jitter per side, pixels
    jitter_fraction: float = 0.0  # > 0: max jitter per side is this fraction of the box's size (capped by jitter)
    click_prob: float = 0.0  # > 0: with this probability an object also gets a simulated corrective click
    max_clicks: int = 1  # a clicked object gets 1..max_clicks clicks, each on the mask of the ones before it
    bce_weight: float = 0.5
    dice_weight: float = 0.5
    coarse_weight_start: float = 1.0
    coarse_weight_end: float = 0.1
    accumulate: int = 1
    seed: int = 0
    val_every: int = 0  # 0 = once per epoch
    patience: int = 0  # stop after this many validations without a better Dice (0: never stop early)
    val_window: bool = False  # score each held-out object in a window around its box (cheap; outside = 0)
    checkpoint_every: int = 0  # 0 = only at the end (and when stopped)
    parts: tuple[str, ...] = PART_NAMES
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    cache_embeddings: bool = False  # only when neither "lora" nor "fa" trains: encode each image once
    augment: bool = False  # random flips and transposes (not in the paper; helps tiny datasets)
    workers: int = 0  # DataLoader worker processes for reading/preparing samples
    val_batch_size: int = 4

    def __post_init__(self) -> None:
        self.parts = tuple(self.parts)
        unknown = set(self.parts) - set(PART_NAMES)
        if unknown or not self.parts:
            raise ValueError(f"parts must be a non-empty subset of {PART_NAMES}, got {self.parts}")
        for name in ("steps", "batch_size", "accumulate", "val_batch_size", "max_clicks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.points is not None and self.points < 1:
            raise ValueError(f"points must be None (whole grid) or >= 1, got {self.points}")
        if self.cache_embeddings and {"lora", "fa"} & set(self.parts):
            raise ValueError("cache_embeddings needs a frozen encoder: remove 'lora' and 'fa' from parts "
                             f"(got {self.parts}), or switch cache_embeddings off.")
        self.point_mix()  # validates the shares
        if not 0.0 <= self.click_prob <= 1.0:
            raise ValueError(f"click_prob must be a probability in [0, 1], got {self.click_prob}")
        if min(self.lr_inr, self.lr_rest, self.weight_decay, self.jitter, self.val_every, self.jitter_fraction,
               self.checkpoint_every, self.workers, self.patience) < 0:
            raise ValueError("learning rates, weight_decay, jitter, val_every, checkpoint_every and workers "
                             "must be >= 0")

    def point_mix(self) -> PointMix:
        return PointMix(self.mix_box, self.mix_boundary, self.mix_uniform, self.box_margin, self.boundary_band)

    def to_dict(self) -> dict:
        return {**asdict(self), "parts": list(self.parts)}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "parts" else v) for k, v in data.items() if k in known})


class Callbacks:
    """Hooks of ``fit``; subclass and override, or pass plain functions: ``Callbacks(on_step=f)``."""

    def __init__(self, on_step: Callable | None = None, on_validation: Callable | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self._on_step, self._on_validation, self._should_stop = on_step, on_validation, should_stop

    def on_step(self, step: int, total: int, loss: float, logs: dict) -> None:
        if getattr(self, "_on_step", None):
            self._on_step(step, total, loss, logs)

    def on_validation(self, step: int, dice: float) -> None:
        if getattr(self, "_on_validation", None):
            self._on_validation(step, dice)

    def should_stop(self) -> bool:
        fn = getattr(self, "_should_stop", None)
        return bool(fn()) if fn else False


@dataclass
class FitResult:
    best_val_dice: float | None
    best_step: int
    steps_done: int
    stopped: bool
    history: list[dict]
    best_adapters: dict[str, torch.Tensor]
    out_dir: Path | None
    seconds: float = 0.0
    validations: list[dict] = field(default_factory=list)
    early_stopped: bool = False  # ended by ``patience``: no better held-out Dice for that many validations
    encoder_calls: int = 0  # images this rank encoded (training and validation)
