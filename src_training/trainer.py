"""The one training loop (used by ``imedsam-train``, torchrun and the napari fine-tune widget).

``fit(model, train, val, config)`` trains the parts in ``config.parts`` with AdamW (INR at ``lr_inr``, the
rest at ``lr_rest``, linear decay to 0), the coarse + fine BCE/Dice loss, gradient accumulation, optional
bf16 autocast on CUDA, validation Dice on ``val`` (best adapters kept), checkpoints that resume exactly, and
multi-process data parallelism when a torch.distributed process group is running (see ``distributed``).

Batch size is GLOBAL: with W processes each one takes a disjoint 1/W shard of every batch (``batch_size``
must be a multiple of W), so the same command gives the same optimisation on 1 or W devices. Validation is
sharded the same way (sums all-reduced); rank 0 alone writes files.

A run is a pure function of its seed: stopping (``Callbacks.should_stop``) and resuming from ``last.ckpt``
gives bit-identical adapters to an uninterrupted run (tested), with or without gradient accumulation.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from napari_imedsam.model import save_adapters, triton_guard
from napari_imedsam.model.device import resolve_device
from napari_imedsam.model.imedsam import PART_NAMES, IMedSAM

from . import checkpoint as ckpt_io
from . import distributed
from .batching import IndexStream, case_groups, collate, prepared_batches, sample_rngs
from .clicks import simulated_clicks
from .data.sample import Sample
from .evaluate import dice_scores, evaluate_dice
from .losses import coarse_weight_at, training_loss
from .train_config import RESUMABLE_CHANGES, Callbacks, FitResult, TrainConfig

__all__ = ["Callbacks", "FitResult", "TrainConfig", "encode_cached", "evaluate_dice", "fit"]

def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _load_state(model: IMedSAM, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))


class _Run:
    """Mutable state of one ``fit`` call (kept together so checkpoints capture all of it)."""

    def __init__(self, model: IMedSAM, train: Sequence[Sample], config: TrainConfig, device: torch.device):
        self.model, self.config, self.device = model, config, device
        self.dist = distributed.current()
        if config.batch_size % self.dist.world_size:
            raise ValueError(f"batch_size {config.batch_size} (global) must be a multiple of the number of "
                             f"processes ({self.dist.world_size}).")
        model.to(device)
        model.set_trainable(config.parts)
        groups = model.named_part_parameters()
        inr = [p for _, p in groups["inr"] if p.requires_grad]
        rest = [p for part in PART_NAMES if part != "inr" for _, p in groups[part] if p.requires_grad]
        self.params = inr + rest
        if not self.params:
            raise ValueError(f"Nothing to train: the model has no parameters in parts {config.parts}.")
        self.encoder_trains = any(p.requires_grad for _, p in groups["lora"] + groups["fa"])
        param_groups = [g for g in ({"params": inr, "lr": config.lr_inr, "name": "inr"},
                                    {"params": rest, "lr": config.lr_rest, "name": "rest"}) if g["params"]]
        self.optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
        total = config.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: max(0.0, 1.0 - s / total))
        self.stream = IndexStream(len(train), config.seed, case_groups(train))
        self.step = 0
        self.best_dice: float | None = None
        self.best_step = -1
        self.best_adapters: dict[str, torch.Tensor] | None = None
        self.history: list[dict] = []
        self.validations: list[dict] = []
        self.embeddings: dict[tuple, torch.Tensor] = {}
        self.mix = config.point_mix()
        self.since_best = 0  # validations since the best one (early stopping)
        self.encoder_calls = 0  # images encoded (the embedding cache's effect, for tests and benchmarks)

    # ---- checkpoint --------------------------------------------------------------------------------------
    def payload(self, rng_state: dict) -> dict:
        return {
            "step": self.step, "adapters": _clone(self.model.adapter_state_dict()),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng_state,
            "train_config": json.dumps(self.config.to_dict()), "model_config": self.model.config.to_json(),
            "backbone": self.model.backbone_name, "backbone_hash": self.model.backbone_hash,
            "best_dice": -1.0 if self.best_dice is None else self.best_dice, "best_step": self.best_step,
            "since_best": self.since_best,
            "best_adapters": self.best_adapters or {}, "history": json.dumps(self.history),
            "validations": json.dumps(self.validations), "world_size": self.dist.world_size,
            "rank": self.dist.rank,
        }

    def restore(self, ckpt: dict) -> None:
        cfg = TrainConfig.from_dict(json.loads(ckpt["train_config"]))
        diffs = [f"{f.name}: {getattr(cfg, f.name)!r} -> {getattr(self.config, f.name)!r}" for f in fields(cfg)
                 if f.name not in RESUMABLE_CHANGES and getattr(cfg, f.name) != getattr(self.config, f.name)]
        model_cfg = type(self.model.config).from_json(ckpt["model_config"])
        diffs += [f"model {d}" for d in model_cfg.architecture_differences(self.model.config)]
        if ckpt["backbone"] != self.model.backbone_name or ckpt["backbone_hash"] != self.model.backbone_hash:
            diffs.append(f"backbone {ckpt['backbone']} ({ckpt['backbone_hash']}) -> {self.model.backbone_name} "
                         f"({self.model.backbone_hash})")
        if diffs:
            raise ValueError("Cannot resume: the checkpoint was made with other settings (" + "; ".join(diffs)
                             + "). Resume with the same settings, or start a new run in another folder.")
        _load_state(self.model, ckpt["adapters"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.best_dice = None if ckpt["best_dice"] < 0 else float(ckpt["best_dice"])
        self.best_step = int(ckpt["best_step"])
        self.since_best = int(ckpt.get("since_best", 0))
        self.best_adapters = dict(ckpt["best_adapters"]) or None
        self.history = json.loads(ckpt["history"])
        self.validations = json.loads(ckpt["validations"])
        ckpt_io.restore_rng(ckpt["rng"], self.device)

    # ---- one optimisation step ---------------------------------------------------------------------------
    def index_lists(self) -> Iterator[list[int]]:
        """This rank's shard of every micro-batch from the current step on (deterministic)."""
        cfg, pos = self.config, self.step * self.config.accumulate * self.config.batch_size
        while True:
            yield distributed.shard(self.stream.take(pos, cfg.batch_size), self.dist)
            pos += cfg.batch_size

    def micro_loss(self, items, micro: int) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        slots = distributed.shard(range(cfg.batch_size), self.dist)
        grid = self.model.box_decoder.mask_input_size[0] if cfg.click_prob > 0 else None
        batch = collate(items, sample_rngs(cfg.seed, self.step, micro, slots), cfg.jitter, cfg.points, cfg.augment,
                        self.mix, cfg.jitter_fraction, click_grid=grid)
        batch = batch.to(self.device)
        amp = cfg.amp and self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            embedding = self.embed(batch) if not self.encoder_trains else self.encode_distinct(batch)
            clicks = self.clicks(batch, embedding, micro, slots) if grid else None
            out = self.model.forward_train(None, batch.boxes, batch.points, batch.valid_hw, embedding=embedding,
                                           clicks=clicks)
        cw = coarse_weight_at(self.step, cfg.steps, cfg.coarse_weight_start, cfg.coarse_weight_end)
        return training_loss(out, batch.labels, batch.weights, cw, cfg.bce_weight, cfg.dice_weight)

    def clicks(self, batch, embedding: torch.Tensor, micro: int, slots) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrective clicks per object (with ``click_prob``, up to ``max_clicks``), each on the current
        model's mask for the box and the clicks before it."""
        emb, dev = embedding.detach(), embedding.device

        def lowres_of(points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                if points.shape[1] == 0:
                    return self.model.decode_box(emb, batch.boxes).lowres_logit
                return self.model.decode_prompt(emb, batch.boxes, points.to(dev), labels.to(dev)).lowres_logit

        rng = np.random.default_rng([self.config.seed, self.step, micro, 7919, *slots])
        points, labels = simulated_clicks(lowres_of, batch.click_truth, self.model.image_size,
                                          self.config.click_prob, rng, self.config.max_clicks)
        return points.to(dev), labels.to(dev)

    def embed(self, batch) -> torch.Tensor:
        """Frozen encoder: no graph; with cache_embeddings each distinct image (by content, flips included)
        is encoded once per run, however many objects it holds."""
        return self.encode_keyed(batch.images, batch.keys)

    def encode_distinct(self, batch) -> torch.Tensor:
        """Training encoder (LoRA/FA): each distinct image of the batch goes through it once, with grad (the
        objects of one slice share that pass and its gradient)."""
        first: dict[tuple, int] = {}
        for i, k in enumerate(batch.keys):
            first.setdefault(k, i)
        self.encoder_calls += len(first)
        if len(first) == len(batch.keys):
            return self.model.encode(batch.images)
        emb = self.model.encode(batch.images[list(first.values())])
        slot = {k: j for j, k in enumerate(first)}
        return emb[[slot[k] for k in batch.keys]]

    def encode_keyed(self, images: torch.Tensor, keys: Sequence[tuple]) -> torch.Tensor:
        if not self.config.cache_embeddings:
            self.encoder_calls += len(images)
            with torch.no_grad():
                return self.model.encode(images)
        emb, encoded = encode_cached(self.model, images, keys, self.embeddings)
        self.encoder_calls += encoded
        return emb


def encode_cached(model: IMedSAM, images: torch.Tensor, keys: Sequence[tuple], cache: dict
                  ) -> tuple[torch.Tensor, int]:
    """Frozen-encoder embeddings of ``images`` through ``cache`` (keyed by ``PreparedSample.key``: image
    content and flips): each distinct image is encoded once. Returns the embeddings and how many were encoded."""
    missing: dict[tuple, int] = {}
    for i, k in enumerate(keys):
        if k not in cache:
            missing.setdefault(k, i)
    if missing:
        with torch.no_grad():
            emb = model.encode(images[list(missing.values())])
        cache.update(zip(missing, emb))
    return torch.stack([cache[k] for k in keys]), len(missing)


def _grad_norm(params: Sequence[torch.nn.Parameter]) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one rank: dropout draws depend only on (seed, step, rank), so a resumed
    run (any number of processes) draws exactly what the uninterrupted run drew."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def _optimisation_step(run: _Run, loader: Iterator, callbacks: Callbacks) -> dict | None:
    """One optimiser step over ``accumulate`` micro-batches; None (and nothing changed) when a stop is
    requested before it completes."""
    cfg, dist = run.config, run.dist
    torch.manual_seed(_step_seed(cfg.seed, run.step, dist.rank))
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum, parts_sum = 0.0, {}
    for micro in range(cfg.accumulate):
        if _stop_requested(callbacks, run):
            run.optimizer.zero_grad(set_to_none=True)
            return None
        loss, parts = run.micro_loss(next(loader), micro)
        (loss / cfg.accumulate).backward()
        loss_sum += float(loss.detach()) / cfg.accumulate
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v / cfg.accumulate
    distributed.average_gradients(run.params)
    grad_norm = _grad_norm(run.params)
    loss_avg = distributed.all_reduce_sum([loss_sum], run.device)[0] / dist.world_size
    if not (math.isfinite(loss_avg) and math.isfinite(grad_norm)):
        raise FloatingPointError(
            f"Non-finite training loss ({loss_avg}) or gradient norm ({grad_norm}) at step {run.step + 1}; "
            "the model keeps the adapters it had before this run. Lower the learning rates or check the data.")
    lrs = {f"lr_{g['name']}": g["lr"] for g in run.optimizer.param_groups}
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    cw = coarse_weight_at(run.step - 1, cfg.steps, cfg.coarse_weight_start, cfg.coarse_weight_end)
    return {"step": run.step, "loss": loss_avg, **parts_sum, "grad_norm": grad_norm, **lrs, "coarse_weight": cw}


def _stop_requested(callbacks: Callbacks, run: _Run) -> bool:
    flag = 1.0 if callbacks.should_stop() else 0.0
    if run.dist.enabled:  # every rank stops at the same step
        flag = distributed.all_reduce_sum([flag], run.device)[0]
    return flag > 0


def _validate(run: _Run, val: Sequence[Sample]) -> float:
    """Mean validation Dice; with several processes each scores a shard and the sums are all-reduced.
    The RNG state is untouched, so validating does not change the training that follows."""
    idx = distributed.shard(range(len(val)), run.dist)
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        encode = run.encode_keyed if not run.encoder_trains else None
        scores = dice_scores(run.model, [val[i] for i in idx], run.device, run.config.val_batch_size,
                             encode=encode, windowed=run.config.val_window) if idx else []
    total, count = distributed.all_reduce_sum([sum(scores), len(scores)], run.device)
    run.model.train()
    return total / max(count, 1)


def _validation(run: _Run, val: Sequence[Sample], callbacks: Callbacks, out: Path | None) -> None:
    """Validate, keep the best adapters (and write them, rank 0), tell the callbacks."""
    dice = _validate(run, val)
    run.validations.append({"step": run.step, "val_dice": dice})
    run.history[-1]["val_dice"] = dice
    if run.best_dice is None or dice > run.best_dice:
        run.since_best = 0
        run.best_dice, run.best_step = dice, run.step
        run.best_adapters = _clone(run.model.adapter_state_dict())
        if out is not None and run.dist.is_main:
            save_adapters(run.model, out / "adapters.safetensors",
                          extra={"val_dice": f"{dice:.6f}", "step": str(run.step)})
    else:
        run.since_best += 1
    callbacks.on_validation(run.step, dice)


def _checkpoint(run: _Run, out: Path) -> None:
    if run.dist.is_main:
        ckpt_io.save_checkpoint(out / ckpt_io.CHECKPOINT_NAME, run.payload(ckpt_io.capture_rng(run.device)))


def _write_outputs(run: _Run, out: Path, stopped: bool, seconds: float) -> None:
    summary = {"best_val_dice": run.best_dice, "best_step": run.best_step, "steps_done": run.step,
               "stopped": stopped, "seconds": seconds, "world_size": run.dist.world_size,
               "backbone": run.model.backbone_name, "train_config": run.config.to_dict(),
               "model_config": json.loads(run.model.config.to_json()), "validations": run.validations,
               "final_loss": run.history[-1]["loss"] if run.history else None}
    ckpt_io.write_json(out / "metrics.json", summary)
    ckpt_io.write_csv(out / "loss_log.csv", run.history)


def fit(model: IMedSAM, train: Sequence[Sample], val: Sequence[Sample] | None, config: TrainConfig,
        callbacks: Callbacks | None = None, out_dir: str | Path | None = None, resume: bool = False,
        embedding_cache: dict | None = None) -> FitResult:
    """Train ``model`` in place; return with the best adapters (by validation Dice) loaded.

    Raises ``FloatingPointError`` on a non-finite loss or gradient, after restoring the adapters the model
    had when ``fit`` was called. When ``callbacks.should_stop()`` turns true the run ends within one step,
    with ``stopped=True``, the best validated adapters loaded (the starting ones if nothing was validated
    yet; the current ones when ``val`` is None) and, with ``out_dir``, a checkpoint to resume from.
    ``out_dir`` receives adapters.safetensors (best), last.ckpt, metrics.json and loss_log.csv (rank 0).
    ``embedding_cache``: a dict shared with the caller (``batching.content_key`` keys, see ``embedding_key``),
    filled and used when ``config.cache_embeddings`` is on, e.g. to reuse the encodes of a check before ``fit``.
    """
    triton_guard.apply()  # the optimizer imports torch._dynamo: keep triton away from a viewer's LLVM
    callbacks = callbacks or Callbacks()
    info = distributed.current()
    device = resolve_device(config.device)
    if info.enabled and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    out = Path(out_dir) if out_dir is not None else None
    if len(train) == 0:
        raise ValueError("The training set is empty.")
    start_adapters = _clone(model.adapter_state_dict())
    run = _Run(model, train, config, device)
    if embedding_cache is not None:
        run.embeddings = embedding_cache
    val = val if val is not None and len(val) > 0 else None
    epoch_steps = math.ceil(len(train) / (config.batch_size * config.accumulate))
    val_every = config.val_every or epoch_steps
    t0 = time.perf_counter()
    stopped = False
    python_random = random.getstate()
    loader = None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            if resume:
                if out is None:
                    raise ValueError("resume=True needs out_dir (where last.ckpt is).")
                run.restore(ckpt_io.load_checkpoint(out / ckpt_io.CHECKPOINT_NAME))
            else:
                random.seed(config.seed)
                distributed.broadcast_parameters(run.params)
            loader = prepared_batches(train, model.image_size, run.index_lists(), config.workers)
            model.train()
            early = False
            while run.step < config.steps:
                logs = _optimisation_step(run, loader, callbacks)
                if logs is None:
                    stopped = True
                    break
                logs["seconds"] = time.perf_counter() - t0
                run.history.append(logs)
                callbacks.on_step(run.step, config.steps, logs["loss"], logs)
                if val is not None and (run.step % val_every == 0 or run.step == config.steps):
                    _validation(run, val, callbacks, out)
                    early = bool(config.patience) and run.since_best >= config.patience
                every = config.checkpoint_every
                if out is not None and (run.step == config.steps or early or (every and run.step % every == 0)):
                    _checkpoint(run, out)
                if early:
                    break
            if stopped and out is not None:
                _checkpoint(run, out)
        except BaseException:
            _load_state(model, start_adapters)
            model.eval()
            raise
        finally:
            if loader is not None:
                loader.close()  # stops DataLoader workers
            random.setstate(python_random)
    if val is None:
        final = _clone(model.adapter_state_dict())
    else:
        final = run.best_adapters if run.best_adapters is not None else start_adapters
        _load_state(model, final)
    model.eval()
    seconds = time.perf_counter() - t0
    if out is not None and info.is_main:
        if val is None or run.best_adapters is None:
            save_adapters(model, out / "adapters.safetensors", extra={"step": str(run.step)})
        _write_outputs(run, out, stopped, seconds)
    return FitResult(run.best_dice, run.best_step, run.step, stopped, run.history, final, out, seconds,
                     run.validations, early, run.encoder_calls)
