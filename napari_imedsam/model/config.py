"""One dataclass holds every I-MedSAM setting; it travels inside the adapter file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

BACKBONES = ("tiny", "litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h")

# Settings that only change how a trained model is *queried*; adapters load across them.
INFERENCE_ONLY = ("mc_samples", "topk", "ugs_reference_grid", "residual_bound", "fast_backbone")


@dataclass(frozen=True)
class IMedSAMConfig:
    """Every architectural and method switch of I-MedSAM (DESIGN.md section 1)."""

    backbone: str = "litemedsam"
    image_size: int = 256  # encoder input side (multiple of 16); litemedsam is fixed at 256
    # LoRA on q and v of every attention qkv projection
    lora: bool = True
    lora_rank: int = 4
    lora_alpha: float = 4.0  # update scale = alpha / rank
    # Frequency adapter
    fa: bool = True
    fa_mode: str = "amplitude"  # or "phase" (ablation)
    fa_hidden: int = 8
    fa_scale: float = 1.0
    # Implicit decoder
    pe_levels: int = 10
    coarse_hidden: tuple[int, ...] = (1024, 512)
    coarse_feature: int = 256
    fine_hidden: tuple[int, ...] = (256, 256, 128)
    dropout: float = 0.5
    # Uncertainty-guided sampling
    ugs: bool = True  # off: coarse head only (the "no UGS" ablation)
    mc_samples: int = 8
    topk: float = 0.125
    ugs_reference_grid: int = 128  # inference: side of the grid the top-K threshold is taken on
    # Our residual path over the backbone's own low-resolution mask logit
    residual: bool = True
    # |correction| <= residual_bound logits (a scaled tanh): where the backbone's own logit is beyond the bound
    # the INR cannot flip the answer, so inference skips it there. None: unbounded (files made before it).
    # 12 = no pixel error of LiteMedSAM's DSB-nuclei masks lies beyond it (8: 1.6 %, 4: 11 %).
    residual_bound: float | None = 12.0
    box_coords: bool = True  # feed the point's coordinates relative to the box to the INR
    num_classes: int = 1
    # the frozen backbone runs exact, faster rewrites of its code (model/fast_paths.py: fused attention,
    # BatchNorm folded, channels-last); False: segment-anything's / TinyViT's code as released
    fast_backbone: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"Unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}.")
        if self.image_size % 16 or self.image_size < 64:
            raise ValueError(f"image_size must be a multiple of 16 and at least 64, got {self.image_size}.")
        if self.fa_mode not in ("amplitude", "phase"):
            raise ValueError(f"fa_mode must be 'amplitude' or 'phase', got {self.fa_mode!r}.")
        if not 0.0 < self.topk <= 1.0:
            raise ValueError(f"topk must be a fraction in (0, 1], got {self.topk}.")
        if self.mc_samples < 2:
            raise ValueError(f"mc_samples must be at least 2 to measure a variance, got {self.mc_samples}.")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}.")
        if self.residual_bound is not None and not self.residual_bound > 0:
            raise ValueError(f"residual_bound must be a positive number of logits or None, got {self.residual_bound}.")
        if self.num_classes != 1:
            raise ValueError("Only num_classes=1 (one box, one object) is supported.")
        object.__setattr__(self, "coarse_hidden", tuple(int(v) for v in self.coarse_hidden))
        object.__setattr__(self, "fine_hidden", tuple(int(v) for v in self.fine_hidden))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IMedSAMConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Adapter config has unknown settings {unknown}; was it made by a newer version?")
        data.setdefault("residual_bound", None)  # written before the bound: trained unbounded, kept so
        return cls(**data)

    def architecture_differences(self, other: IMedSAMConfig) -> list[str]:
        """Settings that differ and make weights incompatible (inference-only ones excluded)."""
        out = []
        for f in fields(self):
            if f.name in INFERENCE_ONLY or f.name == "extra":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: {a!r} vs {b!r}")
        return out

    def with_(self, **changes) -> IMedSAMConfig:
        return replace(self, **changes)


def default_config(backbone: str, **overrides) -> IMedSAMConfig:
    """The preset for a backbone: the paper's sizes for SAM, lighter heads for the CPU backbones."""
    presets: dict[str, dict] = {
        "sam_vit_b": dict(image_size=1024),
        "sam_vit_l": dict(image_size=1024),
        "sam_vit_h": dict(image_size=1024),
        "litemedsam": dict(
            image_size=256, coarse_hidden=(128, 64), coarse_feature=32, fine_hidden=(64, 32), mc_samples=4
        ),
        "tiny": dict(
            image_size=128, coarse_hidden=(64, 64), coarse_feature=32, fine_hidden=(64, 32), mc_samples=4,
            fa_hidden=8, lora_rank=4,
        ),
    }
    if backbone not in presets:
        raise ValueError(f"Unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}.")
    settings = {**presets[backbone], **overrides}
    return IMedSAMConfig(backbone=backbone, **settings)
