"""The "Fine-tune (I-MedSAM)" dock widget: collect corrected masks as training pairs in a project folder,
fine-tune the adapters with ``src_training``'s training loop in a worker thread, and hand the result to the
Segment widget. Thin: pairs and versions live in ``engine.project``, the run in ``engine.finetune``.

Public API (scripts, tests)::

    w = FinetuneWidget(viewer)
    w.open_project(folder); w.add_current_slice(); w.add_all_slices()
    w.start_training(); w.stop_training(); w.wait_idle(timeout); w.last_outcome
    w.activate_version(3); w.load_adapters_file(path); w.segment_widget(); w.set_model(model)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QCoreApplication, QTimer
from qtpy.QtWidgets import QFileDialog, QListWidgetItem, QWidget

from ..finetune.project import Project, ProjectError, default_project_dir, safe_name, user_projects_root
from ..finetune.run import (
    SPLIT_RULES,
    FinetuneError,
    FinetuneRun,
    FinetuneSettings,
    planned_steps,
    seconds_per_step_prior,
)
from ..model.device import resolve_device
from . import finetune_panel
from .finetune_adapters import AdapterVersions
from .layers import base_data, load_slice, unsupported_reason
from .workers import Notifier

log = logging.getLogger(__name__)


class FinetuneWidget(AdapterVersions, QWidget):
    """Collect pairs, fine-tune in the background, show before/after Dice, manage adapter versions."""

    def __init__(self, napari_viewer, projects_root: str | Path | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.projects_root = Path(projects_root) if projects_root else None
        self.notifier = Notifier("I-MedSAM fine-tune: ")
        self.project: Project | None = None
        self.last_outcome = None
        self._own_model = None
        self._run: FinetuneRun | None = None
        self._worker = None
        self._pbar = None
        self._task_id = None
        self._closing = False
        self.advanced: dict = {}  # extra FinetuneSettings fields (points, val_every, seed) for scripts/tests
        self.ui = finetune_panel.build(self)
        self._connect()
        self._poll = QTimer(self)
        self._poll.setInterval(100)
        self._poll.timeout.connect(self._drain)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()
        self._update_estimate()

    def _connect(self) -> None:
        ui = self.ui
        for name, slot in (("folder", self._choose_folder), ("add_slice", self.add_current_slice),
                           ("add_all", self.add_all_slices), ("remove", self.remove_selected_pairs),
                           ("start", self.start_training), ("stop", self.stop_training),
                           ("activate", self._activate_selected), ("load", self._choose_adapters),
                           ("resegment", self.resegment_others)):
            getattr(ui, name).clicked.connect(lambda *_a, f=slot: f())
        for box in ui.part_boxes.values():
            box.toggled.connect(self._update_estimate)
        for spin in (ui.steps, ui.batch):
            spin.valueChanged.connect(self._update_estimate)
        ui.device.currentTextChanged.connect(self._update_estimate)

    # ---- layers ------------------------------------------------------------------------------------------
    def _refresh_layers(self, *_args) -> None:
        from napari.layers import Image, Labels

        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)  # napari ignores a second identical connection
        for combo, kind in ((self.ui.image, Image), (self.ui.labels, Labels)):
            current = combo.currentText()
            names = [lay.name for lay in self.viewer.layers if isinstance(lay, kind)]
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)

    def _layers(self):
        names = {lay.name: lay for lay in self.viewer.layers}
        image, labels = names.get(self.ui.image.currentText()), names.get(self.ui.labels.currentText())
        if image is None or labels is None:
            raise FinetuneError("Choose an image layer and a Labels layer with your corrected masks.")
        reason = unsupported_reason(image)
        if reason:
            raise FinetuneError(f"Cannot collect pairs: {reason}")
        img_shape = tuple(base_data(image).shape[:-1] if image.rgb else base_data(image).shape)
        lab_shape = tuple(base_data(labels).shape)
        if img_shape != lab_shape:
            raise FinetuneError(
                f"Labels layer '{labels.name}' has shape {lab_shape} but image layer '{image.name}' has shape "
                f"{img_shape}; they must match pixel for pixel (make the labels from the image: "
                "Layers > New Labels layer while the image is selected).")
        return image, labels

    def _window(self):
        seg = self.segment_widget()
        return None if seg is None else seg.current_window()

    # ---- project -----------------------------------------------------------------------------------------
    def open_project(self, folder: str | Path | Project) -> Project | None:
        """Open (or create) a project folder; problems found and repaired on opening are reported."""
        try:
            project = folder if isinstance(folder, Project) else Project(folder)
        except ProjectError as exc:
            self.notifier.error(str(exc))
            return None
        self.project = project
        for problem in project.problems:
            self.notifier.warning(problem)
        self._refresh_project()
        self.notifier.info(f"Project {project.root}: {project.summary()}")
        return project

    def ensure_project(self, image=None) -> Project | None:
        """The open project, else the default one: beside the image file (when it has one and that folder is
        writable), else ``<user data dir>/napari-imedsam/projects/<image name>``."""
        if self.project is not None:
            return self.project
        name = image.name if image is not None else "default"
        path = getattr(getattr(image, "source", None), "path", None)
        fallback = (self.projects_root or user_projects_root()) / safe_name(name)
        if path:
            try:
                return self.open_project(Project(default_project_dir(name, path)))
            except ProjectError:
                pass  # e.g. a read-only dataset folder: use the user data dir
        return self.open_project(fallback)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Project folder (new or existing)")
        if folder:
            self.open_project(folder)

    def _refresh_project(self) -> None:
        p = self.project
        self.ui.project.setText("none" if p is None else str(p.root))
        self.ui.pairs.setText("No training pairs yet." if p is None else p.summary())
        self.ui.pair_list.clear()
        for pair in [] if p is None else p.pairs:
            item = QListWidgetItem(pair.describe())
            item.setData(256, pair.id)
            self.ui.pair_list.addItem(item)
        self.ui.versions.clear()
        active = None if p is None else p.active
        for v in [] if p is None else p.versions:
            mark = "  [active]" if active and v.version == active.version else ""
            self.ui.versions.addItem(v.label() + mark, v.version)
        if active is not None:
            self.ui.versions.setCurrentIndex(self.ui.versions.findData(active.version))
        self._update_estimate()

    # ---- pairs -------------------------------------------------------------------------------------------
    def add_current_slice(self) -> int:
        """Add the shown slice's objects; returns how many pairs were added or updated (0 on error)."""
        try:
            image, labels = self._layers()
            if self.viewer.dims.ndisplay != 2:
                raise FinetuneError("Switch the viewer to 2-D to choose the slice to add.")
            z = None
            if labels.ndim == 3:
                pos = labels.world_to_data(np.asarray(self.viewer.dims.point, dtype=float))
                z = int(np.clip(np.round(pos[0]), 0, labels.data.shape[0] - 1))
            return self._add([z])
        except (FinetuneError, ProjectError) as exc:
            self.notifier.warning(str(exc))
            return 0

    def add_all_slices(self) -> int:
        """Add every slice of the Labels layer that has a label; returns the pairs added or updated."""
        try:
            image, labels = self._layers()
            data = np.asarray(base_data(labels))
            zs = [None] if data.ndim == 2 else [int(z) for z in np.flatnonzero(data.reshape(len(data), -1).any(1))]
            if not zs or (data.ndim == 2 and not data.any()):
                raise FinetuneError(f"Labels layer '{labels.name}' has no labels yet: paint or correct masks first.")
            return self._add(zs)
        except (FinetuneError, ProjectError) as exc:
            self.notifier.warning(str(exc))
            return 0

    def _add(self, zs: list[int | None]) -> int:
        image, labels = self._layers()
        project = self.ensure_project(image)
        if project is None:
            return 0
        window, count, removed = self._window(), 0, 0
        try:
            for z in zs:
                lab = np.asarray(base_data(labels) if z is None else base_data(labels)[z])
                report = project.add_slice(load_slice(image, z), lab, image.name, labels.name,
                                           () if z is None else (z,), window)
                count += len(report.added) + len(report.updated)
                removed += len(report.removed)
        finally:
            self._refresh_project()
        where = "the image" if zs == [None] else f"{len(zs)} slice{'s' if len(zs) > 1 else ''}"
        extra = f", {removed} no longer labelled removed" if removed else ""
        self.notifier.info(f"Saved {count} pair{'s' if count != 1 else ''} from {where}{extra}. "
                           f"{project.summary()}")
        return count

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
        z = seg.current_slice() if base_data(image).ndim - int(bool(image.rgb)) == 3 else None
        where = () if z is None else (z,)
        keep = {p.label_id for p in (self.project.pairs if self.project else [])
                if p.image_layer == image.name and tuple(p.slice) == where}
        n = seg.resegment(image, keep)
        kept = f"; {len(keep)} corrected object(s) left as you drew them" if keep else ""
        self.notifier.info(f"Re-segmenting {n} object(s) with the active adapters{kept}." if n else
                           "No other objects on this slice to re-segment (draw boxes in the Segment widget).")
        return n

    def remove_selected_pairs(self) -> None:
        ids = [item.data(256) for item in self.ui.pair_list.selectedItems()]
        if self.project is None or not ids:
            self.notifier.warning("Select pairs in the list first.")
            return
        try:
            self.project.remove_pairs(ids)
        except ProjectError as exc:
            self.notifier.error(str(exc))
        self._refresh_project()

    # ---- model -------------------------------------------------------------------------------------------
    def segment_widget(self):
        """The Segment (I-MedSAM) widget docked in the same viewer, if any."""
        from .segment_widget import SegmentWidget

        try:
            docks = list(self.viewer.window.dock_widgets.values())
        except (AttributeError, RuntimeError):
            return None
        return next((w for w in docks if isinstance(w, SegmentWidget)), None)

    def current_model(self):
        seg = self.segment_widget()
        model = seg.current_model() if seg is not None else None
        return model if model is not None else self._own_model

    def set_model(self, model) -> None:
        """The model to fine-tune when no Segment widget is open (scripts, tests)."""
        self._own_model = model
        self._update_estimate()

    def _apply(self, model, description: str) -> None:
        seg = self.segment_widget()
        if seg is not None and seg.current_model() is not None:
            seg.apply_model(model, description)
        else:
            self._own_model = model

    def _load_own_model(self) -> None:
        from napari.qt.threading import create_worker

        from ..engine.model_loading import load

        self.notifier.info("No Segment (I-MedSAM) widget with a model is open: loading LiteMedSAM to fine-tune "
                           "(open the Segment widget to use the result).")
        worker = create_worker(load, "litemedsam", _ignore_errors=True)
        worker.returned.connect(lambda loaded: (self.set_model(loaded.model), self.start_training()))
        worker.errored.connect(lambda exc: self.notifier.error(f"Could not load LiteMedSAM: {exc}"))
        self._loader = worker
        worker.start()

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
        model = self._own_model if self.segment_widget() is None else self.current_model()
        self.ui.estimate.setText(estimate_text(s, model, self.project, device))

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
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self._run, self.last_outcome = run, None
        steps = run.planned_steps()
        self.ui.plot.clear(steps)
        self.ui.progress.setRange(0, steps)
        self.ui.progress.setValue(0)
        self.ui.resegment.setEnabled(False)
        estimate = run.estimate_seconds()
        about = f", about {_duration(estimate)} of training" if estimate else ""
        self.ui.result.setText(f"Training on {run.device.type}{about} …")
        self._pbar = progress(total=steps, desc="Fine-tuning I-MedSAM")
        worker = create_worker(run.run, _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.destroyed.connect(lambda *_a, r=run: r.stop())  # dock gone: the run stops, saving what it has
        self._register_task()
        self.ui.start.setEnabled(False)
        self.ui.stop.setEnabled(True)
        self._poll.start()
        worker.start()

    def stop_training(self) -> None:
        if self._run is None or not self.is_training:
            self.notifier.info("Fine-tuning is not running.")
            return
        self._run.stop()
        self.ui.stop.setEnabled(False)
        self.ui.result.setText("Stopping at the end of this step; the best adapters so far are kept …")

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Process Qt events until no run is in progress (True) or ``timeout`` seconds pass (False)."""
        app, end = QCoreApplication.instance(), time.monotonic() + timeout
        while time.monotonic() < end:
            app.processEvents()
            if not self.is_training:
                app.processEvents()
                return True
            time.sleep(0.01)
        return False

    def _drain(self) -> None:
        run = self._run
        if run is None:
            return
        while not run.events.empty():
            ev = run.events.get_nowait()
            if ev.kind == "step":
                self.ui.progress.setValue(ev.step)
                self.ui.plot.add_loss(ev.step, ev.loss)
                if self._pbar is not None:
                    self._pbar.update(ev.step - self._pbar.n)
                if ev.seconds_per_step:
                    self.ui.estimate.setText(
                        f"{run.device.type.upper()}: {ev.seconds_per_step:.2f} s/step; about "
                        f"{_duration(ev.seconds_left or 0.0)} left for {ev.total - ev.step} steps and the "
                        "held-out checks.")
            elif ev.kind == "val":
                self.ui.plot.add_dice(ev.step, ev.dice)
            elif ev.kind == "phase":
                self.ui.result.setText(ev.text + " …")

    def _on_returned(self, outcome) -> None:
        self._drain()
        self.last_outcome = outcome
        if outcome.dice_before is not None and outcome.dice_after is not None:
            verdict = "better" if outcome.status == "improved" else "not better"
            self.ui.result.setText(
                f"Held-out Dice: {outcome.dice_before:.3f} before -> {outcome.dice_after:.3f} after ({verdict}). "
                f"{outcome.train_pairs} pairs trained, {outcome.held_out_pairs} held out "
                f"({SPLIT_RULES[outcome.split_rule]}); {outcome.steps_done} steps in {_duration(outcome.seconds)}.")
        else:
            self.ui.result.setText(outcome.message)
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
        self._poll.stop()
        self._drain()
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._worker = None
        self.ui.start.setEnabled(True)
        self.ui.stop.setEnabled(False)
        self._finish_task()

    # ---- viewer closing ----------------------------------------------------------------------------------
    def _register_task(self) -> None:
        """napari asks before closing a window with a busy task and cancels it on close: stop the run."""
        try:
            from napari.utils.task_status import Status

            self._task_id = self.viewer.window._register_task_status(
                "napari-imedsam", Status.BUSY, "Fine-tuning the adapters", cancel_callback=self._viewer_closing)
        except (AttributeError, ImportError):  # other napari versions: closeEvent below still stops it
            self._task_id = None

    def _finish_task(self) -> None:
        if self._task_id is None:
            return
        try:
            from napari.utils.task_status import Status

            self.viewer.window._update_task_status(self._task_id, Status.COMPLETED, "Fine-tuning done")
        except (AttributeError, ImportError, RuntimeError) as exc:  # window gone or an older napari
            logging.getLogger(__name__).debug("could not close the napari task entry: %s", exc)
        self._task_id = None

    def _viewer_closing(self) -> bool:
        self._closing = True
        if self._run is not None:
            self._run.stop()
        return True

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._viewer_closing()
        super().closeEvent(event)


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
                f"{_duration(per_step * steps)} plus the held-out checks (it stops early when they stop improving).")
    elif per_step:
        text = f"{where}: {per_step:.2f} s/step ({source}); add pairs to see the total."
    elif device.type == "cpu":
        text = "CPU: the time per step is measured in the first steps and the total estimated then."
    else:
        text = f"{where}: training uses the GPU."
    if device.type == "cpu" and encoder:
        text += " LoRA/FA train the image encoder: several times slower on a CPU than the decoders alone."
    return text


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
