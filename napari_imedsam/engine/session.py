"""Segmentation bookkeeping (no Qt): the objects prompted so far (label, name, box, slice) and label ids.

The high-resolution view, contour tracing and high-resolution export re-render objects from their boxes,
so every committed box is remembered here; undo/redo add and remove them with the label pixels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: The 13 abdominal organs of the BCV (Synapse multi-organ) challenge, label ids 1..13.
BCV_ORGANS = (
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
)


@dataclass(frozen=True)
class SegObject:
    """One box prompt and the label it was committed with. ``slice`` is the volume index (None in 2-D)."""

    label: int
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), image frame
    slice: int | None = None
    uid: int = 0


@dataclass
class ObjectStore:
    """The committed objects, in commit order."""

    objects: list[SegObject] = field(default_factory=list)
    _next_uid: int = 1

    def new(self, label: int, box: Sequence[float], slice_: int | None) -> SegObject:
        obj = SegObject(int(label), tuple(float(v) for v in box), slice_, self._next_uid)
        self._next_uid += 1
        return obj

    def add(self, objs: Iterable[SegObject]) -> None:
        for o in objs:
            if o not in self.objects:
                self.objects.append(o)

    def remove(self, objs: Iterable[SegObject]) -> None:
        gone = set(objs)
        self.objects = [o for o in self.objects if o not in gone]

    def on_slice(self, slice_: int | None) -> list[SegObject]:
        return [o for o in self.objects if o.slice == slice_]

    def with_label(self, label: int, slice_: int | None = None, any_slice: bool = False) -> list[SegObject]:
        return [o for o in self.objects if o.label == label and (any_slice or o.slice == slice_)]

    def slices(self) -> list[int | None]:
        return sorted({o.slice for o in self.objects}, key=lambda s: -1 if s is None else s)

    def labels(self) -> set[int]:
        return {o.label for o in self.objects}

    def apply(self, meta: dict, undo: bool) -> None:
        """Replay (or revert, ``undo=True``) the ``added``/``removed`` objects recorded with a history step."""
        added, removed = meta.get("added", []), meta.get("removed", [])
        if undo:
            self.remove(added)
            self.add(removed)
        else:
            self.remove(removed)
            self.add(added)

    def clear(self) -> None:
        self.objects.clear()


@dataclass
class LabelBook:
    """Which label id the next box gets, and the names of labels (e.g. :data:`BCV_ORGANS`)."""

    current: int = 1
    auto_increment: bool = True
    names: dict[int, str] = field(default_factory=dict)

    def take(self, used: Iterable[int] = ()) -> int:
        """The label for a new box; with auto-increment, advance to the next id not in ``used``."""
        label = int(self.current)
        if self.auto_increment:
            taken = set(used) | {label}
            nxt = label + 1
            while nxt in taken:
                nxt += 1
            self.current = nxt
        return label

    def name_of(self, label: int) -> str:
        return self.names.get(int(label), f"object {int(label)}")

    def set_name(self, label: int, name: str) -> None:
        name = name.strip()
        if name:
            self.names[int(label)] = name
        else:
            self.names.pop(int(label), None)

    def use_preset(self, names: Sequence[str]) -> None:
        """Name labels 1..n after ``names`` (e.g. the BCV organs)."""
        self.names = {i + 1: n for i, n in enumerate(names)}
