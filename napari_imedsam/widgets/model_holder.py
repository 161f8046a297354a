"""The model a viewer segments and fine-tunes with, shared by both dock widgets.

``ModelHolder`` loads a model in a worker (or at once, for scripts), wraps it in a ``Predictor`` and a
``Segmenter``, takes fine-tuned adapters (``apply``) and says so with Qt signals: ``model_changed`` when
a new model is in use, ``status_changed`` with a line for the user, ``load_failed`` with the reason."""

from __future__ import annotations

from qtpy.QtCore import QObject, Signal

from ..engine import model_loading
from ..engine.predictor import Predictor
from ..engine.segmenter import Segmenter
from .workers import Notifier, WorkerTracker

#: (backbone, checkpoint, adapters, device) of the embedded default model
DEFAULT_PARAMS = ("litemedsam", None, None, "auto")


class ModelHolder(QObject):
    model_changed = Signal()
    status_changed = Signal(str)
    load_failed = Signal(str)

    def __init__(self, workers: WorkerTracker, notifier: Notifier):
        super().__init__()
        self.workers, self.notifier = workers, notifier
        self.predictor: Predictor | None = None
        self.segmenter: Segmenter | None = None
        self.serial = 0  # bumped at every model change: renders of an older model are dropped
        self.description = ""
        self.status = "no model loaded"
        self.device = "auto"
        self._load_serial = 0
        self._loading: tuple | None = None  # the parameters being loaded in a worker

    # ---- state -----------------------------------------------------------------------------------------
    @property
    def model(self):
        return None if self.predictor is None else self.predictor.model

    @property
    def loading(self) -> bool:
        return self._loading is not None

    def _set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    # ---- loading ---------------------------------------------------------------------------------------
    def start_loading(self, backbone: str = "litemedsam", checkpoint=None, adapters=None, device: str = "auto",
                      force: bool = False) -> bool:
        """Load in a worker (progress shown in napari's activity panel); False when nothing was started:
        the same model is loading already, or one is loaded and ``force`` is not set."""
        params = (backbone, checkpoint, adapters, device)
        if self._loading is not None and (not force or self._loading == params):
            return False
        if self._loading is None and self.segmenter is not None and not force:
            return False
        self._load_serial += 1
        serial = self._load_serial
        self._loading = params
        self._set_status(f"loading {backbone} …")

        def done():
            if serial == self._load_serial:
                self._loading = None

        def failed(exc: BaseException) -> None:
            if serial == self._load_serial:
                self._failed(exc)

        self.workers.start(model_loading.load, *params, desc=f"Loading {backbone}",
                           on_return=lambda loaded: serial == self._load_serial and self._install(loaded),
                           on_error=failed, on_finish=done)
        return True

    def _failed(self, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, model_loading.ModelLoadError) else f"{type(exc).__name__}: {exc}"
        self.notifier.error(f"Model not loaded. {msg}")
        self._set_status("model not loaded (see the notification)")
        self.load_failed.emit(msg)

    def load_now(self, backbone: str = "litemedsam", checkpoint=None, adapters=None, device: str = "auto"):
        """Load synchronously (scripts, tests); a load running in a worker is overridden. Errors are
        notified and raised as ``ModelLoadError``."""
        self._load_serial += 1
        self._loading = None
        try:
            loaded = model_loading.load(backbone, checkpoint, adapters, device)
        except model_loading.ModelLoadError as exc:
            self.notifier.error(f"Model not loaded. {exc}")
            raise
        self._install(loaded)
        return loaded.model

    def _install(self, loaded: model_loading.LoadedModel) -> None:
        self._loading = None
        for note in loaded.notes:
            self.notifier.warning(note)
        self.predictor = Predictor(loaded.model, device=loaded.device)
        self.segmenter = Segmenter(self.predictor)
        self.device = str(self.predictor.device)
        self._changed(f"{loaded.description} on {self.device}")

    # ---- fine-tuned adapters ---------------------------------------------------------------------------
    def apply(self, model, description: str = "") -> None:
        """Use ``model`` (e.g. fine-tuned adapters) from now on: caches are invalidated and every view
        connected to ``model_changed`` re-renders. Call from the GUI thread."""
        if self.segmenter is None:
            self.predictor = Predictor(model, device=self.device)
            self.segmenter = Segmenter(self.predictor)
        else:
            self.segmenter.set_model(model)
            self.segmenter.invalidate()
        self._changed(description or f"{model.backbone_name} (updated) on {self.predictor.device}")

    def _changed(self, description: str) -> None:
        self.serial += 1
        self.description = description
        self._set_status(f"model: {description}")
        self.notifier.info(f"Model ready: {description}.")
        self.model_changed.emit()
