"""Training pairs for the Fine-tune widget: the image and Labels layers they come from (chosen by
reference), the project folder they are saved in, adding slices and removing pairs. A mixin of
``FinetuneWidget``: it uses the widget's ``viewer``, ``ui``, ``notifier``, ``projects_root`` and
``segment_widget()`` (for the CT window the model sees)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QFileDialog, QListWidgetItem

from ..finetune.project import Project, ProjectError, default_project_dir, safe_name, user_projects_root
from ..finetune.settings import FinetuneError
from .layers import base_data, layer_alive, load_slice, slice_of_world, unsupported_reason


class TrainingPairs:
    project: Project | None = None

    # ---- layers (kept by reference: a renamed layer stays chosen) ---------------------------------------------
    def _refresh_layers(self, *_args) -> None:
        from napari.layers import Image, Labels

        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)  # napari ignores a second identical connection
        for combo, kind in ((self.ui.image, Image), (self.ui.labels, Labels)):
            current = combo.currentData()
            layers = [lay for lay in self.viewer.layers if isinstance(lay, kind)]
            combo.blockSignals(True)
            combo.clear()
            for lay in layers:
                combo.addItem(lay.name, lay)
            index = next((i for i, lay in enumerate(layers) if lay is current), -1)
            if index >= 0:
                combo.setCurrentIndex(index)
            combo.blockSignals(False)

    def _chosen(self, combo):
        layer = combo.currentData()
        return layer if layer_alive(self.viewer, layer) else None

    def _layers(self):
        image, labels = self._chosen(self.ui.image), self._chosen(self.ui.labels)
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
            _image, labels = self._layers()
            if self.viewer.dims.ndisplay != 2:
                raise FinetuneError("Switch the viewer to 2-D to choose the slice to add.")
            return self._add([slice_of_world(labels, self.viewer.dims.point)])
        except (FinetuneError, ProjectError) as exc:
            self.notifier.warning(str(exc))
            return 0

    def add_all_slices(self) -> int:
        """Add every slice of the Labels layer that has a label; returns the pairs added or updated."""
        try:
            _image, labels = self._layers()
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
