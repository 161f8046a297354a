"""The controls of the Fine-tune widget, laid out in group boxes (construction only, no behaviour)."""

from __future__ import annotations

from types import SimpleNamespace

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QProgressBar,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..finetune.settings import default_parts
from ..model.device import available_devices
from ..model.imedsam import PART_NAMES
from .loss_plot import LossPlot
from .panels import _button, _row, scrolled

PART_LABELS = {"lora": "LoRA", "fa": "FA", "decoder": "upscaling", "mask_decoder": "mask decoder", "inr": "INR"}


def _label(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    return label


def build(parent: QWidget) -> SimpleNamespace:
    """Create every control inside ``parent`` and return them by name."""
    ui = SimpleNamespace()
    # asks for less height than its controls: docked under the Segment widget on a 1080 px screen, both
    # show their main controls (the rest scrolls)
    outer, ui.scroll = scrolled(parent, max_hint=380)

    g = QGroupBox("Project folder (pairs and adapters are saved at once)")
    f = QVBoxLayout(g)
    ui.project = _label("none yet: one is made beside the image when you add pairs")
    ui.folder = _button("Folder…", "Open a project folder, or choose an empty one for a new project")
    f.addWidget(_row(ui.project, ui.folder))
    outer.addWidget(g)

    g = QGroupBox("Training pairs (each object id on a corrected slice)")
    f = QFormLayout(g)
    ui.image, ui.labels = QComboBox(), QComboBox()
    ui.image.setToolTip("The image the masks were drawn on (2-D grey/RGB or a 3-D stack).")
    ui.labels.setToolTip("The Labels layer with your corrected masks (same shape as the image).")
    f.addRow("Image", ui.image)
    f.addRow("Labels", ui.labels)
    ui.add_slice = _button("Add current slice", "Every object id on the shown slice becomes a pair "
                           "(adding a slice again replaces its pairs)")
    ui.add_all = _button("Add all annotated slices", "Every slice with a label becomes pairs")
    f.addRow(_row(ui.add_slice, ui.add_all))
    ui.pairs = _label("No training pairs yet.")
    f.addRow(ui.pairs)
    ui.pair_list = QListWidget()
    ui.pair_list.setSelectionMode(QListWidget.ExtendedSelection)
    ui.pair_list.setMaximumHeight(90)
    f.addRow(ui.pair_list)
    ui.remove = _button("Remove selected pairs", "Forget the selected pairs (their files are deleted)")
    f.addRow(ui.remove)
    outer.addWidget(g)

    g = QGroupBox("Fine-tune")
    f = QFormLayout(g)
    ui.steps = QSpinBox()
    ui.steps.setRange(0, 100000)
    ui.steps.setSpecialValueText("auto")
    ui.steps.setValue(0)
    ui.steps.setToolTip("Optimisation steps (one batch of pairs each). auto: follows the number of pairs "
                        "(16 passes over them, 40 to 400 steps); training also stops when the held-out "
                        "Dice has not improved for 3 checks.")
    ui.lr = QDoubleSpinBox()
    ui.lr.setDecimals(5)
    ui.lr.setRange(1e-5, 0.1)
    ui.lr.setSingleStep(1e-4)
    ui.lr.setValue(1e-3)
    ui.lr.setToolTip("Learning rate of the INR decoder; LoRA, FA and SAM's decoder parts use 1/20 of it, as "
                     "the paper.")
    ui.held_out = QDoubleSpinBox()
    ui.held_out.setRange(0.0, 0.9)
    ui.held_out.setSingleStep(0.05)
    ui.held_out.setValue(0.2)
    ui.held_out.setToolTip("Fraction of the annotated slices kept out of training to measure Dice before and "
                           "after (0: no check; with a single slice, objects are held out). The best adapters "
                           "on them are kept.")
    ui.batch = QSpinBox()
    ui.batch.setRange(1, 64)
    ui.batch.setValue(4)
    f.addRow("Steps", _row(ui.steps, QLabel("LR"), ui.lr))
    f.addRow("Held out", _row(ui.held_out, QLabel("Batch"), ui.batch))
    ui.part_boxes = {p: QCheckBox(PART_LABELS[p]) for p in PART_NAMES}
    for p, box in ui.part_boxes.items():
        box.setChecked(p in default_parts("auto"))
        box.setToolTip("LoRA and FA tune the image encoder: best on a GPU, several times slower on a CPU (the "
                       "estimate below says how long)." if p in ("lora", "fa")
                       else "Trains on cached image embeddings (one encode per slice): fast, also on a CPU.")
    f.addRow("Train", _row(*ui.part_boxes.values()))
    ui.device = QComboBox()
    ui.device.addItems(["auto", *available_devices()])
    ui.device.setToolTip("auto: the GPU when there is one.")
    f.addRow("Device", ui.device)
    ui.estimate = _label("")
    f.addRow(ui.estimate)
    ui.start = _button("Start fine-tuning", "Train on the project's pairs in the background")
    ui.stop = _button("Stop", "End training now, keeping the best adapters so far")
    ui.stop.setEnabled(False)
    f.addRow(_row(ui.start, ui.stop))
    ui.progress = QProgressBar()
    ui.progress.setFormat("%v / %m steps")
    f.addRow(ui.progress)
    ui.result = _label("Held-out Dice before and after training appears here.")
    ui.result.setStyleSheet("font-weight: bold")
    f.addRow(ui.result)
    ui.resegment = _button("Re-segment the other objects", "Segment again, with the active adapters, the "
                           "objects on the slice shown that are not training pairs, to see the gain")
    ui.resegment.setEnabled(False)
    f.addRow(ui.resegment)
    ui.plot = LossPlot()
    f.addRow(ui.plot)
    outer.addWidget(g)

    g = QGroupBox("Adapters")
    f = QFormLayout(g)
    ui.versions = QComboBox()
    ui.versions.setToolTip("Every run saves a version in the project folder; [active] is in use.")
    f.addRow("Version", ui.versions)
    ui.activate = _button("Activate", "Use the chosen version in the Segment widget (revert, or use anyway)")
    ui.load = _button("Load adapters…", "Import an adapters file trained elsewhere (e.g. by imedsam-train)")
    f.addRow(_row(ui.activate, ui.load))
    outer.addWidget(g)
    outer.addStretch(1)
    return ui
