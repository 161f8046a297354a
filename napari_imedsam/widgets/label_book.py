"""The Segment panel's label state: which label id the next box gets, and the names of labels."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: The 13 abdominal organs of the BCV (Synapse multi-organ) challenge, label ids 1..13.
BCV_ORGANS = (
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
)



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
