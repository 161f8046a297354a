"""Image encoders with LoRA and the Frequency Adapter wired in.

What is adapted, per backbone:
- ViT (segment-anything's ``ImageEncoderViT``: ``tiny``, ``sam_vit_b/l/h``): LoRA on q and v of every block's
  fused qkv; FA: the spectrum is embedded by the frozen patch embedding plus the position embedding and
  one adapter per block carries it, adding a scaled copy to each block's output (the paper's design).
- TinyViT (``litemedsam``): LoRA on q and v of the qkv of every attention block (stages 1-3, 10 blocks);
  the first stage is convolutional (MBConv) and has no attention. FA on the 10 transformer blocks: the
  spectrum is average-pooled to each stage's token grid and embedded by a small trainable linear layer
  per stage (the frozen conv stem would double the encoder's cost), then carried by one adapter per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast_paths import TINYVIT_MEMORY_FORMAT
from .frequency import FrequencyAdapter, image_spectrum
from .lora import LoRAQKV, sam_qkv_indices, tinyvit_qkv_indices


class AdaptedViTEncoder(nn.Module):
    """segment-anything ``ImageEncoderViT`` + LoRA + FA. Input is already normalised for the backbone."""

    def __init__(self, encoder: nn.Module, config, pixel_mean: torch.Tensor, pixel_std: torch.Tensor):
        super().__init__()
        self.backbone = encoder
        self.use_fa = config.fa
        self.fa_mode = config.fa_mode
        dim = encoder.patch_embed.proj.out_channels
        if config.lora:
            for blk in encoder.blocks:
                q, v = sam_qkv_indices(dim)
                blk.attn.qkv = LoRAQKV(blk.attn.qkv, q, v, config.lora_rank, config.lora_alpha)
        blocks = len(encoder.blocks)
        self.fa = FrequencyAdapter([dim] * blocks, config.fa_hidden, config.fa_scale) if config.fa else None
        self.register_buffer("pixel_mean", pixel_mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", pixel_std.view(1, 3, 1, 1), persistent=False)

    def normalise(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.pixel_mean) / self.pixel_std

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        enc = self.backbone
        x = enc.patch_embed(self.normalise(images01))
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        live = self.fa.live() if self.fa is not None else ()
        if not any(live):
            for blk in enc.blocks:
                x = blk(x)
        else:
            spec = image_spectrum(images01, self.fa_mode).expand(-1, 3, -1, -1).to(images01.dtype)
            f = enc.patch_embed(self.normalise(spec))
            if enc.pos_embed is not None:
                f = f + enc.pos_embed
            # patch_embed's output is a permuted view, a layout the residual stream keeps: contiguous once
            # here, so that the FA adds into tokens and stream in place instead of copying them every block
            f, x = f.contiguous(), x.contiguous()
            for i, blk in enumerate(enc.blocks):
                if live[i]:
                    f, x = self.fa.step(i, f, blk(x))
                else:  # a zero up-projection: no delta, tokens unchanged
                    x = blk(x)
        return enc.neck(x.permute(0, 3, 1, 2))


class AdaptedTinyViTEncoder(nn.Module):
    """LiteMedSAM's TinyViT + LoRA (attention qkv) + FA on the transformer stages."""

    def __init__(self, encoder: nn.Module, config, pixel_mean: torch.Tensor, pixel_std: torch.Tensor):
        super().__init__()
        self.backbone = encoder
        self.use_fa = config.fa
        self.fa_mode = config.fa_mode
        # the layout the backbone's weights are in (fast_paths stores them channels-last)
        self.input_format = TINYVIT_MEMORY_FORMAT if config.fast_backbone else torch.contiguous_format
        dims: list[int] = []
        self.stage_of_block: list[int] = []
        for s, layer in enumerate(encoder.layers[1:], start=1):
            for blk in layer.blocks:
                attn = blk.attn
                if config.lora:
                    q, v = tinyvit_qkv_indices(attn.num_heads, attn.key_dim, attn.d)
                    attn.qkv = LoRAQKV(attn.qkv, q, v, config.lora_rank, config.lora_alpha)
                dims.append(blk.dim)
                self.stage_of_block.append(s)
        if config.fa:
            self.fa = FrequencyAdapter(dims, config.fa_hidden, config.fa_scale)
            stage_dims = {s: layer.dim for s, layer in enumerate(encoder.layers) if s >= 1}
            self.fa_embed = nn.ModuleDict({str(s): nn.Linear(1, d) for s, d in stage_dims.items()})
        else:
            self.fa = None
        self.register_buffer("pixel_mean", pixel_mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", pixel_std.view(1, 3, 1, 1), persistent=False)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        enc = self.backbone
        x = enc.patch_embed(((images01 - self.pixel_mean) / self.pixel_std).contiguous(memory_format=self.input_format))
        x = enc.layers[0](x)
        live = self.fa.live() if self.fa is not None else ()
        spec = image_spectrum(images01, self.fa_mode).to(images01.dtype) if any(live) else None
        index = 0
        for s in range(1, len(enc.layers)):
            layer = enc.layers[s]
            f = None
            if spec is not None:
                h, w = layer.input_resolution
                pooled = F.adaptive_avg_pool2d(spec, (h, w)).flatten(2).transpose(1, 2)  # (B, L, 1)
                f = self.fa_embed[str(s)](pooled)
            for blk in layer.blocks:
                if f is not None and live[index]:
                    f, x = self.fa.step(index, f, blk(x))
                else:  # no FA, or a zero up-projection: no delta, tokens unchanged
                    x = blk(x)
                index += 1
            if layer.downsample is not None:
                x = layer.downsample(x)
        b, _, c = x.shape
        side = int(round(x.shape[1] ** 0.5))
        x = x.view(b, side, side, c).permute(0, 3, 1, 2)
        return enc.neck(x)
