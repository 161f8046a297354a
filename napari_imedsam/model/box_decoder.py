"""Prompt features: SAM's prompt encoder (boxes, clicks, a mask) + two-way transformer, then
``output_upscaling`` (4x) of the image side.

Also returns the backbone's own low-resolution mask logit for the prompt (the residual path's base, and the
baseline the INR is compared against). The INR is prompt-agnostic: it reads these feature maps, so adapters
trained with boxes keep working with clicks."""

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
        self._dense_pe: tuple[tuple, torch.Tensor] | None = None  # (what it was made from, the encoding)

    @property
    def upscaled_channels(self) -> int:
        return self.mask_decoder.output_upscaling[-2].out_channels

    @property
    def pe_channels(self) -> int:
        return 2 * self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.shape[1]

    def positional_encoding(self, coords01: torch.Tensor) -> torch.Tensor:
        """SAM's random-Fourier positional encoding at continuous coords (x, y) in [0, 1] of the input."""
        return self.prompt_encoder.pe_layer._pe_encoding(coords01.to(torch.float32))

    def dense_pe(self) -> torch.Tensor:
        """SAM's positional encoding of the embedding grid (1, C, h, w), contiguous. It depends only on the
        prompt encoder's fixed random matrix (a buffer, never trained), so it is made once per device and
        matrix instead of on every prompt (SAM's ``get_dense_pe``: 16 MiB of temporaries for LiteMedSAM's 64 x
        64 grid); always in fp32, also under autocast."""
        pe_layer = self.prompt_encoder.pe_layer
        matrix = pe_layer.positional_encoding_gaussian_matrix
        key = (matrix.device, matrix.data_ptr(), matrix._version, tuple(self.prompt_encoder.image_embedding_size))
        if self._dense_pe is None or self._dense_pe[0] != key:
            with torch.no_grad(), torch.autocast(matrix.device.type, enabled=False):
                pe = pe_layer(self.prompt_encoder.image_embedding_size).unsqueeze(0).contiguous()
            self._dense_pe = (key, pe)
        return self._dense_pe[1]

    @property
    def mask_input_size(self) -> tuple[int, int]:
        """The side of SAM's mask prompt grid (4x the image embedding), over the padded input."""
        return tuple(self.prompt_encoder.mask_input_size)

    def forward(self, embedding: torch.Tensor, boxes: torch.Tensor | None, points: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> BoxFeatures:
        """boxes (B, 4) xyxy and/or points (B, N, 2) xy in input pixels (pixel edges at integers) with labels
        (B, N) 1 object / 0 background; masks (B, 1, *mask_input_size) logits of a previous prediction."""
        dec = self.mask_decoder
        clicks = None
        if points is not None:
            # SAM's encoder takes pixel indices and adds 0.5; ours are continuous with edges at integers
            clicks = (points.float() - 0.5, labels.float())
        sparse, dense = self.prompt_encoder(points=clicks, boxes=None if boxes is None else boxes.float(),
                                            masks=None if masks is None else masks.float())
        dense = dense.expand(embedding.shape[0], -1, -1, -1) if dense.shape[0] == 1 else dense
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1), sparse), dim=1)
        src = embedding + dense
        pos = self.dense_pe().expand(src.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos, tokens)
        mask_token = hs[:, 1, :]  # single-mask output, as SAM with multimask_output=False
        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = dec.output_upscaling(src)
        hyper = dec.output_hypernetworks_mlps[0](mask_token)  # (B, C_up)
        lowres = torch.einsum("bc,bchw->bhw", hyper, upscaled).unsqueeze(1)
        if boxes is None:
            boxes = _extent(lowres, points, labels, float(self.prompt_encoder.input_image_size[0]))
        return BoxFeatures(upscaled, lowres, boxes.float())


def _extent(lowres: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, size: float) -> torch.Tensor:
    """Without a box, the box the INR's box-relative coordinates refer to: the extent of the backbone's mask
    and the positive clicks (input pixels)."""
    b, _, h, w = lowres.shape
    out = []
    for i in range(b):
        pos = points[i][labels[i] > 0]
        ys, xs = torch.nonzero(lowres[i, 0] > 0, as_tuple=True)
        xy = torch.cat([torch.stack([xs, ys], -1).float() * (size / w), pos.float()]) if len(xs) else pos.float()
        if len(xy) == 0:
            out.append(torch.tensor([0.0, 0.0, size, size], device=lowres.device))
            continue
        lo, hi = xy.min(0).values, xy.max(0).values + size / w
        out.append(torch.cat([lo, hi]).clamp(0.0, size))
    return torch.stack(out)
