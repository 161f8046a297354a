"""The fine-tune run as a napari worker, and the texts the Fine-tune widget shows about a run.

``training_events(run)`` is the worker's generator: the run trains in a thread of its own (``fit`` reports
through callbacks, it cannot yield) and the generator yields its progress events as they come, plus a
``None`` now and then, so that napari can cancel the worker between events (the widget stops the run
then); it returns the run's outcome or raises its error."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

from ..finetune.project import Project
from ..finetune.run import Event, FinetuneOutcome, FinetuneRun
from ..finetune.settings import SPLIT_RULES, FinetuneSettings, planned_steps, seconds_per_step_prior

HEARTBEAT_S = 0.1


def training_events(run: FinetuneRun) -> Iterator[Event | None]:
    result: dict = {}

    def train() -> None:
        try:
            result["outcome"] = run.run()
        except BaseException as exc:  # noqa: BLE001 - raised again in the worker, below
            result["error"] = exc

    thread = threading.Thread(target=train, name="imedsam-finetune", daemon=True)
    thread.start()
    try:
        while thread.is_alive() or not run.events.empty():
            try:
                yield run.events.get(timeout=HEARTBEAT_S)
            except queue.Empty:
                yield None
    finally:
        if thread.is_alive():  # the worker was cancelled or closed: end the run, keeping the best so far
            run.stop()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["outcome"]


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def outcome_text(outcome: FinetuneOutcome) -> str:
    """The result line: held-out Dice before and after, what was trained and how it was split."""
    if outcome.dice_before is None or outcome.dice_after is None:
        return outcome.message
    verdict = "better" if outcome.status == "improved" else "not better"
    return (f"Held-out Dice: {outcome.dice_before:.3f} before -> {outcome.dice_after:.3f} after ({verdict}). "
            f"{outcome.train_pairs} pairs trained, {outcome.held_out_pairs} held out "
            f"({SPLIT_RULES[outcome.split_rule]}); {outcome.steps_done} steps in {duration(outcome.seconds)}.")


def estimate_text(s: FinetuneSettings, model, project: Project | None, device) -> str:
    """What the run will cost, shown before it starts: the project's last measurement for these settings,
    else the typical time measured by the benchmarks on a 2-core CPU."""
    where = "GPU" if device.type == "cuda" else device.type.upper()
    per_step, source = None, ""
    if model is not None and project is not None:
        per_step, source = project.seconds_per_step(s.timing_key(model, device)), "last time"
    if not per_step and model is not None:
        per_step, source = seconds_per_step_prior(model.backbone_name, s.parts, device, s.batch_size), \
            "typical on a 2-core CPU"
    steps = planned_steps(s, project.pairs) if project is not None and len(project) else (s.steps or None)
    encoder = {"lora", "fa"} & set(s.parts)
    if per_step and steps:
        text = (f"{where}: {per_step:.2f} s/step ({source}), up to {steps} steps: at most about "
                f"{duration(per_step * steps)} plus the held-out checks (it stops early when they stop improving).")
    elif per_step:
        text = f"{where}: {per_step:.2f} s/step ({source}); add pairs to see the total."
    elif device.type == "cpu":
        text = "CPU: the time per step is measured in the first steps and the total estimated then."
    else:
        text = f"{where}: training uses the GPU."
    if device.type == "cpu" and encoder:
        text += " LoRA/FA train the image encoder: several times slower on a CPU than the decoders alone."
    return text
