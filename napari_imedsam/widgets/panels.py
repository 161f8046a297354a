"""The controls of the Segment widget, laid out in group boxes (construction only, no behaviour)."""

from __future__ import annotations

from types import SimpleNamespace

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..engine import windows
from ..model.device import available_devices

BACKBONES = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "tiny")
FACTORS = ("1x", "2x", "4x")


def _row(*widgets) -> QWidget:
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box


def _button(text: str, tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    return b


class VerticalScroll(QScrollArea):
    """Scrolls up and down only: as wide as its controls need (whatever style napari applies later), and
    content with being short (both dock widgets share the height of a 1080 px screen)."""

    MIN_HEIGHT = 320  # two docks stacked (napari may give one all the space it can) fit on a 768 px screen

    def __init__(self, max_hint: int = 100000):
        super().__init__()
        self.max_hint = max_hint  # the height asked for, at most (a dock next to another one shares)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

    def _width(self, hint) -> int:
        return hint.width() + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        inner = self.widget()
        return QSize(self._width(inner.minimumSizeHint()), self.MIN_HEIGHT) if inner else super().minimumSizeHint()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        inner = self.widget()
        if inner is None:
            return super().sizeHint()
        return QSize(self._width(inner.minimumSizeHint()), min(self.max_hint, inner.sizeHint().height()))


def scrolled(parent: QWidget, max_hint: int = 100000) -> tuple[QVBoxLayout, QScrollArea]:
    """A vertical layout in a scroll area that fills ``parent``: a dock can be shorter than its controls
    and scrolls instead of growing the window."""
    outer = QVBoxLayout(parent)
    outer.setContentsMargins(0, 0, 0, 0)
    area = VerticalScroll(max_hint)
    inner = QWidget()
    area.setWidget(inner)
    outer.addWidget(area)
    return QVBoxLayout(inner), area


def build(parent: QWidget) -> SimpleNamespace:
    """Create every control inside ``parent`` and return them by name."""
    ui = SimpleNamespace()
    outer, ui.scroll = scrolled(parent)

    # image and model ---------------------------------------------------------------------------------
    g = QGroupBox("Image and model")
    f = QFormLayout(g)
    ui.image = QComboBox()
    ui.image.setToolTip("The image layer to segment (2-D grey/RGB or a 3-D stack; boxes act on the shown slice).")
    f.addRow("Image", ui.image)
    ui.backbone = QComboBox()
    ui.backbone.addItems(BACKBONES)
    ui.backbone.setToolTip("litemedsam: embedded, works offline on a CPU. SAM ViT-B/L/H: the paper's "
                           "setting, need Meta's checkpoint file. tiny: random weights, for tests.")
    f.addRow("Backbone", ui.backbone)
    ui.checkpoint = QLineEdit()
    ui.checkpoint.setPlaceholderText("backbone weights (SAM .pth); empty: embedded / cache")
    ui.checkpoint_browse = _button("…", "Choose a backbone checkpoint file")
    f.addRow("Checkpoint", _row(ui.checkpoint, ui.checkpoint_browse))
    ui.adapters = QLineEdit()
    ui.adapters.setPlaceholderText("embedded default head (if shipped)")
    ui.adapters_browse = _button("…", "Choose an adapters .safetensors file (from fine-tuning or training)")
    f.addRow("Adapters", _row(ui.adapters, ui.adapters_browse))
    ui.device = QComboBox()
    ui.device.addItems(["auto", *available_devices()])
    ui.device.setToolTip("auto picks cuda > mps > cpu; only devices present on this machine are listed.")
    ui.load = _button("Load model", "Load the chosen model (also happens on the first box).")
    f.addRow("Device", _row(ui.device, ui.load))
    ui.model_status = QLabel("no model loaded")
    ui.model_status.setWordWrap(True)
    f.addRow(ui.model_status)
    outer.addWidget(g)

    # CT window ----------------------------------------------------------------------------------------
    g = QGroupBox("Intensity window (what the model sees)")
    f = QFormLayout(g)
    ui.window = QComboBox()
    ui.window.addItems(windows.CHOICES)
    ui.window.setToolTip("CT presets in HU: abdomen [-125, 275] (the BCV training window), lung, bone, "
                         "brain, or custom. 'none' min-max scales each slice. The image layer is not changed.")
    ui.window_lo = QDoubleSpinBox()
    ui.window_hi = QDoubleSpinBox()
    for sb, v in ((ui.window_lo, -125.0), (ui.window_hi, 275.0)):
        sb.setRange(-10000.0, 40000.0)
        sb.setDecimals(0)
        sb.setValue(v)
        sb.setEnabled(False)
    f.addRow("Preset", _row(ui.window, ui.window_lo, ui.window_hi))
    ui.window_status = QLabel("")
    f.addRow(ui.window_status)
    outer.addWidget(g)

    # objects -----------------------------------------------------------------------------------------
    g = QGroupBox("Objects (draw boxes on the 'boxes' layer)")
    f = QFormLayout(g)
    ui.label = QSpinBox()
    ui.label.setRange(1, 2**31 - 1)
    ui.auto_increment = QCheckBox("auto-increment")
    ui.auto_increment.setChecked(True)
    f.addRow("Next label", _row(ui.label, ui.auto_increment))
    ui.label_name = QLineEdit()
    ui.label_name.setPlaceholderText("name of this label (optional)")
    ui.bcv = _button("BCV organs", "Name labels 1-13 after the BCV abdominal organs (spleen, kidneys, liver, …)")
    f.addRow("Name", _row(ui.label_name, ui.bcv))
    ui.current = QLabel("current object: none")
    ui.negative = QCheckBox("negative clicks (Shift+P)")
    ui.negative.setToolTip("Points on the 'clicks' layer refine the current object: positive clicks add a missed "
                           "part, negative ones remove a leak; a click with no current object starts a new one.")
    f.addRow(_row(ui.current, ui.negative))
    ui.undo = _button("Undo", "Undo the last commit (Ctrl+Z)")
    ui.redo = _button("Redo", "Redo (Ctrl+Shift+Z)")
    ui.clear = _button("Clear object", "Remove the current object from this slice (Shift+X)")
    f.addRow(_row(ui.undo, ui.redo, ui.clear))
    outer.addWidget(g)

    # views ---------------------------------------------------------------------------------------------
    g = QGroupBox("Views")
    f = QFormLayout(g)
    ui.hires = QCheckBox("high-resolution view (INR at screen resolution)")
    ui.hires.setChecked(True)
    ui.hires.setToolTip("Re-renders the objects for exactly the visible window at screen resolution when you "
                        "zoom or pan (Shift+H).")
    ui.outline = QCheckBox("outline only")
    ui.outline.setChecked(True)
    f.addRow(_row(ui.hires, ui.outline))
    ui.uncertainty = QCheckBox("uncertainty of the current object (MC-dropout variance)")
    ui.uncertainty.setToolTip("Where the model is unsure: check and correct there (Shift+U).")
    ui.next_uncertain = _button("Next uncertain object", "Go to the object (on any slice) whose mask the model is "
                                "least sure of, then the next one on each press: correct where it pays most "
                                "(Shift+R)")
    f.addRow(_row(ui.uncertainty, ui.next_uncertain))
    ui.contour_factor = QComboBox()
    ui.contour_factor.addItems(["1x", "2x", "4x", "8x"])
    ui.contour_factor.setCurrentText("4x")
    ui.contours = _button("Contours → Shapes", "Trace the objects of this slice as sub-pixel polygons (Shift+O)")
    f.addRow("Upsampling", _row(ui.contour_factor, ui.contours))
    outer.addWidget(g)

    # volume -----------------------------------------------------------------------------------------
    g = QGroupBox("3-D propagation")
    f = QFormLayout(g)
    ui.prop_limit = QSpinBox()
    ui.prop_limit.setRange(0, 10000)
    ui.prop_limit.setSpecialValueText("no limit")
    ui.prop_limit.setToolTip("At most this many slices in each direction (0: until the mask vanishes).")
    f.addRow("Slice limit", ui.prop_limit)
    ui.prop_start, ui.prop_end = QSpinBox(), QSpinBox()
    for spin, which in ((ui.prop_start, "first"), (ui.prop_end, "last")):
        spin.setRange(-1, 100000)
        spin.setValue(-1)
        spin.setSpecialValueText("not set")
        spin.setToolTip(f"The object's {which} slice, if you know it: propagation fills every slice up to it "
                        "(the stop rules then only watch for leaks).")
    f.addRow("Object from / to", _row(ui.prop_start, ui.prop_end))
    ui.prop_up = _button("▲ Up", "Propagate the current object to the following slices")
    ui.prop_down = _button("▼ Down", "Propagate the current object to the previous slices")
    ui.prop_both = _button("▲▼ Both", "Propagate both ways (Shift+T)")
    f.addRow(_row(ui.prop_down, ui.prop_up, ui.prop_both))
    ui.interpolate = _button("Interpolate between annotated slices",
                             "Segment the slices between the slices that hold a mask of the current object, with "
                             "boxes interpolated from both ends (one undo step)")
    f.addRow(ui.interpolate)
    ui.progress = QProgressBar()
    ui.progress.setVisible(False)
    ui.cancel = _button("Cancel", "Stop the running propagation (the slices done so far stay)")
    ui.cancel.setEnabled(False)
    f.addRow(_row(ui.progress, ui.cancel))
    outer.addWidget(g)

    # export -------------------------------------------------------------------------------------------
    g = QGroupBox("Export masks")
    f = QFormLayout(g)
    ui.export_factor = QComboBox()
    ui.export_factor.addItems(FACTORS)
    ui.export_factor.setToolTip("2x / 4x exports are INR renderings of the objects (nearest upsampling "
                                "where no box is known).")
    ui.export = _button("Export…", "Save the masks as TIFF, or NIfTI with the original affine")
    f.addRow("Resolution", _row(ui.export_factor, ui.export))
    outer.addWidget(g)

    ui.status = QLabel("")
    ui.status.setWordWrap(True)
    outer.addWidget(ui.status)
    outer.addStretch(1)
    return ui
