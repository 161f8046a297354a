"""Adapter versions for the Fine-tune widget: activate (revert or "use anyway") and import files trained
elsewhere. A mixin of ``FinetuneWidget``: it uses the widget's project, model hand-over and notifier."""

from __future__ import annotations

import copy
from pathlib import Path

from qtpy.QtWidgets import QFileDialog

from ..finetune.project import ProjectError
from ..finetune.settings import FinetuneError


class AdapterVersions:
    """Needs ``project``, ``ui.versions``, ``ui.image``, ``_chosen()``, ``notifier``, ``current_model()``, ``_apply()``,
    ``is_training``, ``ensure_project()`` and ``_refresh_project()`` from the widget."""

    def _activate_selected(self) -> None:
        number = self.ui.versions.currentData()
        if number is None:
            self.notifier.warning("No adapter versions yet: fine-tune or load adapters first.")
            return
        self.activate_version(int(number))

    def activate_version(self, number: int) -> bool:
        """Use adapters v``number`` of the project in the Segment widget (revert or 'use anyway')."""
        if self.project is None:
            self.notifier.warning("Open a project folder first.")
            return False
        try:
            path = self.project.path_of(self.project.version(number))
            self._use_adapters(path, f"adapters v{number}")
            self.project.set_active(number)
        except (ProjectError, FinetuneError) as exc:
            self.notifier.error(str(exc))
            return False
        self._refresh_project()
        self.notifier.info(f"Adapters v{number} are active.")
        return True

    def _use_adapters(self, path: Path, description: str) -> None:
        from ..model.adapters import load_adapters

        model = self.current_model()
        if model is None:
            raise FinetuneError("No model is loaded: load one in the Segment widget first.")
        if self.is_training:
            raise FinetuneError("Fine-tuning is running; stop it before switching adapters.")
        new = copy.deepcopy(model)
        try:
            load_adapters(new, path)
        except (ValueError, FileNotFoundError, OSError) as exc:  # AdapterMismatchError is a ValueError
            raise FinetuneError(str(exc)) from exc
        self._apply(new, description)

    def _choose_adapters(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Adapters file", "", "Adapters (*.safetensors)")
        if path:
            self.load_adapters_file(path)

    def load_adapters_file(self, path: str | Path) -> bool:
        """Check an adapters file against the model, copy it into the project as a version, activate it."""
        project = self.ensure_project(self._chosen(self.ui.image))
        if project is None:
            return False
        try:
            self._use_adapters(Path(path), f"adapters from {Path(path).name}")
            version = project.import_adapters(path)
            project.set_active(version.version)
        except (ProjectError, FinetuneError) as exc:
            self.notifier.error(f"Adapters not loaded: {exc}")
            return False
        self._refresh_project()
        self.notifier.info(f"Loaded {Path(path).name} as v{version.version}; it is active.")
        return True
