"""Segmentation bookkeeping (no Qt): the objects prompted so far (label, box, slice, id).

The high-resolution view, contour tracing and high-resolution export re-render objects from their boxes,
so every committed box is remembered here; undo/redo add and remove them with the label pixels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SegObject:
    """One prompt and the label it was committed with. ``slice`` is the volume index (None in 2-D).

    ``box`` is the object's extent in the image frame: the box prompt, grown to hold the clicks; for an
    object made from clicks alone (``box_prompt`` False) the extent of its mask and clicks. ``clicks`` are
    (x, y, label) with label 1 for the object, 0 for background."""

    label: int
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), image frame
    slice: int | None = None
    uid: int = 0
    clicks: tuple[tuple[float, float, int], ...] = ()
    box_prompt: bool = True

    def prompt(self) -> dict:
        """The Predictor's prompt arguments for this object."""
        if not self.clicks:
            return {"box": self.box}
        return {"box": self.box if self.box_prompt else None, "points": [[x, y] for x, y, _ in self.clicks],
                "point_labels": [int(v) for *_, v in self.clicks]}


@dataclass
class ObjectStore:
    """The committed objects, in commit order."""

    objects: list[SegObject] = field(default_factory=list)
    _next_uid: int = 1

    def new(self, label: int, box: Sequence[float], slice_: int | None,
            clicks: Sequence[Sequence[float]] = (), box_prompt: bool = True) -> SegObject:
        obj = SegObject(int(label), tuple(float(v) for v in box), slice_, self._next_uid,
                        tuple((float(x), float(y), int(v)) for x, y, v in clicks), bool(box_prompt))
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
