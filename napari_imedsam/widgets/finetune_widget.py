"""The "Fine-tune (I-MedSAM)" dock widget: collect corrected masks as training pairs in a project folder,
fine-tune the adapters with ``src_training``'s training loop in a worker, and put the result into the
viewer's shared model (the Segment widget uses it at once). Thin: pairs and versions live in
``finetune.project``, the run in ``finetune.run``; the model, the workers and the Segment widget come from
the viewer's services (``services.py``). Pairs: ``finetune_pairs.py``; adapter versions:
``finetune_adapters.py``; the run as a worker and its texts: ``finetune_training.py``.

Public API (scripts, tests)::

    w = FinetuneWidget(viewer)
    w.open_project(folder); w.add_current_slice(); w.add_all_slices()
    w.start_training(); w.stop_training(); w.wait_idle(timeout); w.last_outcome
    w.activate_version(3); w.load_adapters_file(path); w.segment_widget(); w.set_model(model)
"""

from __future__ import annotations

import logging
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QWidget

from ..finetune.project import Project, ProjectError
from ..finetune.run import FinetuneRun
from ..finetune.settings import FinetuneError, FinetuneSettings
from ..model.device import resolve_device
from . import finetune_panel
from .finetune_adapters import AdapterVersions
from .finetune_pairs import TrainingPairs
from .finetune_training import duration, estimate_text, outcome_text, training_events
from .layers import unwrap
from .model_holder import DEFAULT_PARAMS
from .services import for_viewer
from .workers import Notifier

log = logging.getLogger(__name__)


class FinetuneWidget(TrainingPairs, AdapterVersions, QWidget):
    """Collect pairs, fine-tune in the background, show before/after Dice, manage adapter versions."""

    def __init__(self, napari_viewer, projects_root: str | Path | None = None):
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.services = for_viewer(self.viewer)
        self.holder, self.workers = self.services.model, self.services.workers
        self.projects_root = Path(projects_root) if projects_root else None
        self.notifier = Notifier("I-MedSAM fine-tune: ")
        self.project: Project | None = None
        self.last_outcome = None
        self._run: FinetuneRun | None = None
        self._worker = None
        self._pbar = None
        self._closing = False
        self._alive = True
        self._start_when_loaded = False
        self.advanced: dict = {}  # extra FinetuneSettings fields (points, val_every, seed) for scripts/tests
        self.ui = finetune_panel.build(self)
        self._connect()
        self._refresh_layers()
        self._update_estimate()

    def _connect(self) -> None:
        ui = self.ui
        for button, slot in ((ui.folder, self._choose_folder), (ui.add_slice, self.add_current_slice),
                             (ui.add_all, self.add_all_slices), (ui.remove, self.remove_selected_pairs),
                             (ui.start, self.start_training), (ui.stop, self.stop_training),
                             (ui.activate, self._activate_selected), (ui.load, self._choose_adapters),
                             (ui.resegment, self.resegment_others)):
            button.clicked.connect(lambda *_a, f=slot: f())
        for box in ui.part_boxes.values():
            box.toggled.connect(self._update_estimate)
        for spin in (ui.steps, ui.batch):
            spin.valueChanged.connect(self._update_estimate)
        ui.device.currentTextChanged.connect(self._update_estimate)
        self._viewer_events = (self.viewer.layers.events.inserted, self.viewer.layers.events.removed)
        for ev in self._viewer_events:
            ev.connect(self._refresh_layers)
        self.holder.model_changed.connect(self._on_model_changed)
        self.holder.load_failed.connect(self._on_load_failed)
        self.destroyed.connect(lambda *_a, s=self: s.shutdown())

    def is_alive(self) -> bool:
        return self._alive

    def shutdown(self) -> None:
        """Detach from the viewer and stop a run (it saves the best adapters so far)."""
        if not self._alive:
            return
        self._viewer_closing()
        self._alive = False
        for ev in self._viewer_events:
            ev.disconnect(self._refresh_layers)
        for signal, slot in ((self.holder.model_changed, self._on_model_changed),
                             (self.holder.load_failed, self._on_load_failed)):
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass

    def resegment_others(self) -> int:
        """Re-segment, in the Segment widget and with the active adapters, the objects on the slice shown
        that are not training pairs (the ones the user did not correct), so the gain can be seen."""
        seg = self.segment_widget()
        if seg is None:
            self.notifier.warning("Open the Segment (I-MedSAM) widget to re-segment objects.")
            return 0
        image = seg.image_layer()
        if image is None:
            self.notifier.warning("Choose an image in the Segment widget first.")
            return 0
        z = seg.current_slice()
        where = () if z is None else (z,)
        keep = {p.label_id for p in (self.project.pairs if self.project else [])
                if p.image_layer == image.name and tuple(p.slice) == where}
        n = seg.resegment(image, keep)
        kept = f"; {len(keep)} corrected object(s) left as you drew them" if keep else ""
        self.notifier.info(f"Re-segmenting {n} object(s) with the active adapters{kept}." if n else
                           "No other objects on this slice to re-segment (draw boxes in the Segment widget).")
        return n

    # ---- model (the viewer's ModelHolder) ------------------------------------------------------------------------
    def segment_widget(self):
        """The Segment (I-MedSAM) widget open in the same viewer, if any."""
        return self.services.segment_widget

    def current_model(self):
        return self.holder.model

    def set_model(self, model) -> None:
        """The model to fine-tune (scripts, tests); it becomes the viewer's model, as after loading."""
        self.holder.apply(model)

    def _apply(self, model, description: str) -> None:
        self.holder.apply(model, description)

    def _on_model_changed(self) -> None:
        self._update_estimate()
        if self._start_when_loaded:
            self._start_when_loaded = False
            self.start_training()

    def _on_load_failed(self, reason: str) -> None:
        if self._start_when_loaded:
            self._start_when_loaded = False
            self.notifier.error(f"Could not load LiteMedSAM: {reason}")

    def _load_own_model(self) -> None:
        self.notifier.info("No Segment (I-MedSAM) widget with a model is open: loading LiteMedSAM to fine-tune "
                           "(training starts when it is ready; the Segment widget uses the result).")
        self._start_when_loaded = True
        self.holder.start_loading(*DEFAULT_PARAMS)

    # ---- training ----------------------------------------------------------------------------------------
    @property
    def is_training(self) -> bool:
        return self._worker is not None

    def settings(self) -> FinetuneSettings:
        return FinetuneSettings(
            steps=self.ui.steps.value(), lr=self.ui.lr.value(), held_out=self.ui.held_out.value(),
            batch_size=self.ui.batch.value(), device=self.ui.device.currentText(),
            parts=tuple(p for p, box in self.ui.part_boxes.items() if box.isChecked()), **self.advanced,
        )

    def _update_estimate(self, *_args) -> None:
        try:
            s = self.settings()
            device = resolve_device(s.device)
        except ValueError as exc:
            self.ui.estimate.setText(str(exc))
            return
        self.ui.estimate.setText(estimate_text(s, self.current_model(), self.project, device))

    def start_training(self) -> bool:
        """Start a run in a worker thread; False (with a notification) when it cannot start."""
        if self.is_training:
            self.notifier.warning("Fine-tuning is already running; press Stop first to start again.")
            return False
        if self.project is None or len(self.project) == 0:
            self.notifier.warning("No training pairs yet: correct a mask in a Labels layer, then press 'Add "
                                  "current slice' or 'Add all annotated slices'.")
            return False
        model = self.current_model()
        if model is None:
            seg = self.segment_widget()
            if seg is not None:
                seg.start_loading()
                self.notifier.info("The Segment widget is loading its model; press Start again when it is ready.")
            else:
                self._load_own_model()
            return False
        try:
            run = FinetuneRun(model, self.project, self.settings())
        except (FinetuneError, ValueError) as exc:
            self.notifier.warning(str(exc))
            return False
        self._begin(run)
        return True

    def _begin(self, run: FinetuneRun) -> None:
        from napari.utils import progress

        self._run, self.last_outcome = run, None
        steps = run.planned_steps()
        self.ui.plot.clear(steps)
        self.ui.progress.setRange(0, steps)
        self.ui.progress.setValue(0)
        self.ui.resegment.setEnabled(False)
        estimate = run.estimate_seconds()
        about = f", about {duration(estimate)} of training" if estimate else ""
        self.ui.result.setText(f"Training on {run.device.type}{about} …")
        pbar = self._pbar = progress(total=steps, desc="Fine-tuning I-MedSAM")
        # napari registers the worker as a task of the viewer: closing the window asks, then cancels it
        worker = self.workers.start(training_events, run, desc="Fine-tuning I-MedSAM", progress=False,
                                    on_yield=self._on_event, on_return=self._on_returned,
                                    on_error=self._on_errored, on_finish=self._on_finished, alive=self.is_alive)
        worker.aborted.connect(run.stop, Qt.DirectConnection)  # cancelled: stop now, even if the GUI is busy
        worker.finished.connect(pbar.close)
        self._worker = worker
        self.destroyed.connect(lambda *_a, r=run: r.stop())  # dock gone: the run stops, saving what it has
        self.ui.start.setEnabled(False)
        self.ui.stop.setEnabled(True)

    def stop_training(self) -> None:
        if self._run is None or not self.is_training:
            self.notifier.info("Fine-tuning is not running.")
            return
        self._run.stop()
        self.ui.stop.setEnabled(False)
        self.ui.result.setText("Stopping at the end of this step; the best adapters so far are kept …")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Process Qt events until the viewer's workers (a run included) are done (True), or ``timeout``
        seconds pass (False)."""
        return self.workers.wait_idle(timeout)

    def _on_event(self, ev) -> None:
        if ev is None:  # a heartbeat
            return
        if ev.kind == "step":
            self.ui.progress.setValue(ev.step)
            self.ui.plot.add_loss(ev.step, ev.loss)
            if self._pbar is not None:
                self._pbar.update(ev.step - self._pbar.n)
            if ev.seconds_per_step and self._run is not None:
                self.ui.estimate.setText(
                    f"{self._run.device.type.upper()}: {ev.seconds_per_step:.2f} s/step; about "
                    f"{duration(ev.seconds_left or 0.0)} left for {ev.total - ev.step} steps and the "
                    "held-out checks.")
        elif ev.kind == "val":
            self.ui.plot.add_dice(ev.step, ev.dice)
        elif ev.kind == "phase":
            self.ui.result.setText(ev.text + " …")

    def _on_returned(self, outcome) -> None:
        self.last_outcome = outcome
        self.ui.result.setText(outcome_text(outcome))
        if outcome.activate and not self._closing:
            v = outcome.version
            dice = f", held-out Dice {outcome.dice_after:.3f}" if outcome.dice_after is not None else ""
            self._apply(outcome.model, f"fine-tuned adapters v{v.version}{dice}")
            self.ui.resegment.setEnabled(self.segment_widget() is not None)
        level = {"improved": "info", "stopped": "info", "nan": "error"}.get(outcome.status, "warning")
        getattr(self.notifier, level)(outcome.message)
        self._refresh_project()

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, (FinetuneError, ProjectError)):
            self.notifier.warning(str(exc))
        else:
            log.error("Fine-tuning failed", exc_info=exc)
            self.notifier.error(f"Fine-tuning failed: {type(exc).__name__}: {exc}. The previous adapters stay "
                                "active.")
        self.ui.result.setText("Fine-tuning failed; see the notification.")

    def _on_finished(self) -> None:
        self._pbar = None
        self._worker = None
        self.ui.start.setEnabled(True)
        self.ui.stop.setEnabled(False)

    # ---- viewer closing ----------------------------------------------------------------------------------
    def _viewer_closing(self) -> bool:
        self._closing = True
        if self._run is not None:
            self._run.stop()
        return True

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._viewer_closing()
        super().closeEvent(event)
