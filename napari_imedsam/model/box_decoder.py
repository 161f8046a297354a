"""Box features: SAM's prompt encoder + two-way transformer, then ``output_upscaling`` (4x) of the image side.

Also returns the backbone's own low-resolution mask logit for the box (the residual path's base, and the
baseline the INR is compared against)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BoxFeatures:
    upscaled: torch.Tensor  # (B, C_up, 4h, 4w) over the padded encoder input
    lowres_logit: torch.Tensor  # (B, 1, 4h, 4w) the backbone decoder's own mask logit
    boxes: torch.Tensor  # (B, 4) xyxy in encoder-input pixels

    def detach(self) -> BoxFeatures:
        return BoxFeatures(self.upscaled.detach(), self.lowres_logit.detach(), self.boxes.detach())

    def index(self, i: int) -> BoxFeatures:
        return BoxFeatures(self.upscaled[i : i + 1], self.lowres_logit[i : i + 1], self.boxes[i : i + 1])


class BoxDecoder(nn.Module):
    """Wraps SAM's prompt encoder and mask decoder; one box per image embedding (no repeat over prompts)."""

    def __init__(self, prompt_encoder: nn.Module, mask_decoder: nn.Module):
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def upscaled_channels(self) -> int:
        return self.mask_decoder.output_upscaling[-2].out_channels

    @property
    def pe_channels(self) -> int:
        return 2 * self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.shape[1]

    def positional_encoding(self, coords01: torch.Tensor) -> torch.Tensor:
        """SAM's random-Fourier positional encoding at continuous coords (x, y) in [0, 1] of the input."""
        return self.prompt_encoder.pe_layer._pe_encoding(coords01.to(torch.float32))

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor) -> BoxFeatures:
        dec = self.mask_decoder
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes.float(), masks=None)
        dense = dense.expand(embedding.shape[0], -1, -1, -1) if dense.shape[0] == 1 else dense
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
        src = embedding + dense
        pos = self.prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos, tokens)
        mask_token = hs[:, 1, :]  # single-mask output, as SAM with multimask_output=False
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = dec.output_upscaling(src)
        hyper = dec.output_hypernetworks_mlps[0](mask_token)  # (B, C_up)
        lowres = torch.einsum("bc,bchw->bhw", hyper, upscaled).unsqueeze(1)
        return BoxFeatures(upscaled, lowres, boxes.float())
