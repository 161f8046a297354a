"""Fine-tuning speed and memory (section 4 of ``benchmarks.speed``), with the project's one training loop."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from .common import MiB, PeakMemory, fmt, markdown_table, precision, section

BATCH = 2
POINTS = 4096
SETTINGS = {  # name -> (parts, cache_embeddings)
    "LoRA + FA + decoder + INR": (("lora", "fa", "decoder", "inr"), False),
    "decoder + INR, cached embeddings": (("decoder", "inr"), True),
}


def finetune_cases(quick: bool) -> list[tuple[str, int]]:
    """(backbone, synthetic image side): the image side is the backbone's own input size."""
    return [("tiny", 128)] if quick else [("tiny", 128), ("litemedsam", 256)]


def time_fit(backbone: str, size: int, parts: tuple[str, ...], cache: bool, device: torch.device,
             repeats: int) -> dict:
    """Run ``fit`` for one epoch of warm-up steps (cached embeddings get filled) plus ``repeats`` steps;
    seconds per step is the median of the steps after the warm-up epoch."""
    from napari_imedsam import load_model
    from src_training.synthetic import make_synthetic_samples
    from src_training.trainer import Callbacks, TrainConfig, fit

    samples = make_synthetic_samples(2 * BATCH, size=size, seed=1)
    warm = len(samples) // BATCH
    stamps: list[float] = []
    config = TrainConfig(steps=warm + repeats, batch_size=BATCH, points=POINTS, parts=parts, device=str(device),
                         cache_embeddings=cache, seed=0)
    model = load_model(backbone)
    callbacks = Callbacks(on_step=lambda step, total, loss, logs: stamps.append(logs["seconds"]))
    with PeakMemory(device) as mem:
        fit(model, samples, None, config, callbacks=callbacks)
    steps = [b - a for a, b in zip(stamps[warm - 1 :], stamps[warm:])]
    model.set_trainable(parts)
    return {"backbone": backbone, "image_size": size, "device": device.type, "precision": precision(device),
            "parts": list(parts), "cache_embeddings": cache, "batch_size": BATCH, "points": POINTS,
            "trainable_params": model.trainable_parameter_count(), "median_s": statistics.median(steps),
            "step_times_s": steps, "warmup_steps": warm, "first_step_s": stamps[0],
            "peak_mib": None if mem.peak is None else mem.peak / MiB}


def finetune_rows(devices: Sequence[torch.device], quick: bool, repeats: int) -> list[dict]:
    rows = []
    for backbone, size in finetune_cases(quick):
        for dev in devices:
            for name, (parts, cache) in SETTINGS.items():
                with section(f"fine-tuning {backbone}, {name} on {dev.type}"):
                    rows.append({"setting": name, **time_fit(backbone, size, parts, cache, dev, repeats)})
    return rows


def finetune_table(rows: list[dict]) -> str:
    head = ["backbone", "trains", "device", "batch x points", "trainable params", "s / step", "peak MiB",
            "steps timed"]
    body = [[f"{r['backbone']} ({r['image_size']}x{r['image_size']})", r["setting"],
             f"{r['device']} ({r['precision']})", f"{r['batch_size']} x {r['points']}", f"{r['trainable_params']:,}",
             fmt(r["median_s"], 2), fmt(r["peak_mib"], 0), len(r["step_times_s"])] for r in rows]
    return markdown_table(head, body)
