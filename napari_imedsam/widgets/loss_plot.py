"""A small live plot of the training loss (and held-out Dice) drawn with QPainter: no matplotlib needed."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(120, 150, 190)
SMOOTH_COLOR = QColor(79, 195, 247)
DICE_COLOR = QColor(255, 183, 77)


class LossPlot(QWidget):
    """Loss per step (thin), its running average (bold), and held-out Dice points on a 0-1 axis."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)
        self.total = 0
        self.losses: list[tuple[int, float]] = []
        self.smooth: list[tuple[int, float]] = []
        self.dice: list[tuple[int, float]] = []

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(260, 150)

    def clear(self, total: int = 0) -> None:
        self.total, self.losses, self.smooth, self.dice = int(total), [], [], []
        self.update()

    def add_loss(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            return
        self.losses.append((int(step), float(loss)))
        prev = self.smooth[-1][1] if self.smooth else loss
        self.smooth.append((int(step), 0.9 * prev + 0.1 * loss if len(self.smooth) > 2 else loss))
        self.update()

    def add_dice(self, step: int, dice: float) -> None:
        if math.isfinite(dice):
            self.dice.append((int(step), float(dice)))
            self.update()

    # ---- drawing -----------------------------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802 - Qt API
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing)
        text = self.palette().windowText().color()
        p.fillRect(self.rect(), self.palette().base())
        fm = p.fontMetrics()
        top, bottom = fm.height() + 4, self.height() - fm.height() - 4
        area = QRectF(6, top, max(10, self.width() - 12), max(10, bottom - top))
        grid = QColor(text)
        grid.setAlpha(60)
        p.setPen(QPen(grid, 1))
        p.drawRect(area)
        if not self.losses and not self.dice:
            p.setPen(text)
            p.drawText(area, Qt.AlignCenter, "loss and held-out Dice appear here while training")
            p.end()
            return
        xmax = max([self.total, 1] + [s for s, _ in self.losses + self.dice])
        values = [v for _, v in self.losses]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0

        def point(step: float, value: float, vlo: float, vhi: float) -> QPointF:
            x = area.left() + area.width() * step / xmax
            y = area.bottom() - area.height() * (value - vlo) / (vhi - vlo)
            return QPointF(x, y)

        for series, color, width in ((self.losses, LOSS_COLOR, 1.0), (self.smooth, SMOOTH_COLOR, 2.0)):
            if len(series) > 1:
                p.setPen(QPen(color, width))
                p.drawPolyline(QPolygonF([point(s, v, lo, hi) for s, v in series]))
        if len(self.dice) > 1:
            faint = QColor(DICE_COLOR)
            faint.setAlpha(110)
            p.setPen(QPen(faint, 1.0, Qt.DashLine))
            p.drawPolyline(QPolygonF([point(s, d, 0.0, 1.0) for s, d in self.dice]))
        p.setPen(QPen(DICE_COLOR, 1.5))
        p.setBrush(DICE_COLOR)
        for s, d in self.dice:
            p.drawEllipse(point(s, d, 0.0, 1.0), 3.0, 3.0)
        p.setPen(text)
        if self.smooth:
            p.drawText(6, fm.ascent() + 2, f"loss {self.smooth[-1][1]:.3f}")
        if self.dice:
            best = max(d for _, d in self.dice)
            label = f"held-out Dice {self.dice[-1][1]:.3f} (best {best:.3f})"
            p.setPen(DICE_COLOR)
            p.drawText(self.width() - fm.horizontalAdvance(label) - 6, fm.ascent() + 2, label)
            p.setPen(text)
        step = self.losses[-1][0] if self.losses else 0
        p.drawText(6, self.height() - fm.descent() - 2, f"step {step} / {self.total}" if self.total else "")
        p.end()
