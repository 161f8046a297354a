"""I-MedSAM model: identity at initialisation, what trains, parameter counts, INR pieces."""

from __future__ import annotations

import json
import math

import pytest
import torch

from napari_imedsam.model import PART_NAMES, build_model, default_config
from napari_imedsam.model.backbones import build_backbone, build_tiny, resize_sam_state
from napari_imedsam.model.inr import positional_encoding, topk_uncertain


def _plain_encoder(name: str, size: int):
    parts = build_backbone(name, size)
    for m in (parts.image_encoder, parts.prompt_encoder, parts.mask_decoder):
        m.eval()
    return parts


def _plain_embedding(parts, images01):
    mean = torch.tensor(parts.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(parts.pixel_std).view(1, 3, 1, 1)
    return parts.image_encoder((images01 - mean) / std)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("name", ["tiny", pytest.param("litemedsam", marks=pytest.mark.slow)])
def test_adapted_encoder_equals_backbone_at_init(name, fast):
    """At init the adapters are the identity: the embedding is the released backbone's, bit for bit with the
    released code, to rounding with the fast paths (fused attention, BatchNorm folded, channels-last)."""
    cfg = default_config(name, fast_backbone=fast)
    model = build_model(cfg)
    plain = _plain_encoder(name, cfg.image_size)
    images = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = model.encode(images)
        reference = _plain_embedding(plain, images)
    assert adapted.shape == reference.shape
    if fast:
        torch.testing.assert_close(adapted, reference, rtol=0, atol=1e-5)
    else:
        assert torch.equal(adapted, reference)


def test_adapters_change_the_encoder_once_trained():
    model = build_model(default_config("tiny"))
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before = model.encode(images)
        for _, p in model.named_part_parameters()["lora"] + model.named_part_parameters()["fa"]:
            p.add_(0.05 * torch.randn_like(p))
        after = model.encode(images)
    assert not torch.allclose(before, after)


def test_fresh_residual_model_predicts_backbone_logit():
    model = build_model(default_config("tiny"))
    plain = _plain_encoder("tiny", 128)
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    box = torch.tensor([[20.0, 30.0, 90.0, 100.0]])
    with torch.no_grad():
        emb = _plain_embedding(plain, images)
        sparse, dense = plain.prompt_encoder(points=None, boxes=box, masks=None)
        low, _ = plain.mask_decoder(emb, plain.prompt_encoder.get_dense_pe(), sparse, dense, False)
        feats = model.decode_box(model.encode(images), box)
        pts = torch.rand(1, 500, 2, generator=torch.Generator().manual_seed(3)) * 128
        valid = torch.tensor([[128.0, 128.0]])
        logits, _ = model.query(feats, pts, valid, model.uncertainty_threshold(feats, valid))
        grid = (pts / 128 * 2 - 1).unsqueeze(2)
        expected = torch.nn.functional.grid_sample(low, grid, mode="bilinear", padding_mode="border",
                                                   align_corners=False)[0, 0, :, 0]
    assert torch.allclose(logits[0], expected, atol=1e-5)


def test_optimizer_step_changes_only_adapters():
    model = build_model(default_config("tiny", residual=False))
    model.set_trainable(PART_NAMES)  # every part, SAM's mask decoder included
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    parts = model.named_part_parameters()
    assert trainable == {n for group in parts.values() for n, _ in group}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    out = model.forward_train(torch.rand(2, 3, 128, 128), torch.tensor([[10.0, 10, 60, 70], [30, 20, 100, 90]]),
                              torch.rand(2, 256, 2) * 128, torch.tensor([[128.0, 128], [128, 128]]))
    loss = out["coarse"].pow(2).mean() + out["fine"].pow(2).mean()
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in frozen if not torch.equal(frozen[k], after[k])}
    assert changed, "nothing trained"
    assert changed <= trainable
    assert any(".q_b" in k or ".v_b" in k for k in changed)  # LoRA
    assert any(k.startswith("encoder.fa.") for k in changed)  # frequency adapter
    assert any("output_upscaling" in k for k in changed)  # decoder part
    assert any("mask_decoder.transformer." in k for k in changed)  # mask_decoder part
    for k in frozen.keys() - trainable:
        assert torch.equal(frozen[k], after[k]), f"frozen tensor {k} changed"


def test_litemedsam_backbone_frozen_in_train_mode():
    """TinyViT has BatchNorm: train() must not let batch statistics leak into the frozen backbone."""
    model = build_model(default_config("litemedsam"))
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    model.train()
    with torch.no_grad():
        model.encode(torch.rand(1, 3, 256, 256))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in buffers.items())


def test_sam_vit_b_trainable_parameter_count_matches_paper():
    counts = {}
    for name in ("sam_vit_b", "sam_vit_h", "litemedsam", "tiny"):
        device = "meta" if name.startswith("sam") else "cpu"  # TinyViT's constructor needs real tensors
        counts[name] = build_model(default_config(name), device=device).trainable_parameter_count()
    assert abs(counts["sam_vit_b"] - 1.6e6) <= 0.25 * 1.6e6, counts
    assert counts["tiny"] < counts["litemedsam"] < counts["sam_vit_b"]


@pytest.mark.parametrize("size", [256, 384, 512])
def test_vit_any_input_size_resizes_position_tables(size):
    source = build_tiny(image_size=128)
    target = build_tiny(image_size=size, seed=5)
    state = resize_sam_state(source.image_encoder.state_dict(), target.image_encoder.state_dict())
    target.image_encoder.load_state_dict(state)  # strict: every resized shape fits
    assert target.image_encoder.pos_embed.shape[1] == size // 16
    cfg = default_config("tiny", image_size=size)
    model = build_model(cfg)
    with torch.no_grad():
        emb = model.encode(torch.rand(1, 3, size, size))
    assert emb.shape[-1] == size // 16


def test_positional_encoding_values():
    p = torch.tensor([[0.25, -0.5]])
    enc = positional_encoding(p, levels=3)
    assert enc.shape == (1, 2 + 4 * 3)
    assert torch.allclose(enc[0, :2], p[0])
    # layout: for each coordinate, sin at 2^k pi for k=0..2, then cos at the same frequencies
    sins = enc[0, 2:].view(2, 6)[:, :3]
    coss = enc[0, 2:].view(2, 6)[:, 3:]
    for c, value in enumerate((0.25, -0.5)):
        for k in range(3):
            assert math.isclose(sins[c, k].item(), math.sin(2**k * math.pi * value), abs_tol=1e-6)
            assert math.isclose(coss[c, k].item(), math.cos(2**k * math.pi * value), abs_tol=1e-6)


def test_ugs_picks_exactly_the_top_k_percent():
    var = torch.rand(3, 800, generator=torch.Generator().manual_seed(0))
    idx = topk_uncertain(var, 0.125)
    assert idx.shape == (3, 100)
    for b in range(3):
        chosen = set(idx[b].tolist())
        threshold = var[b].sort(descending=True).values[99]
        assert chosen == set(torch.nonzero(var[b] >= threshold).flatten().tolist())
    model = build_model(default_config("tiny", topk=0.25))
    model.train()
    out = model.forward_train(torch.rand(1, 3, 128, 128), torch.tensor([[10.0, 10, 60, 70]]),
                              torch.rand(1, 400, 2) * 128, torch.tensor([[128.0, 128]]))
    assert out["fine"].shape == (1, 100) and out["fine_index"].unique().numel() == 100


def test_mc_dropout_passes_differ_in_eval_mode():
    model = build_model(default_config("tiny", residual=False)).eval()
    x = torch.randn(1, 64, model.point_dim)
    a = model.coarse.mc_logits(x, 4, seed=None)
    b = model.coarse.mc_logits(x, 4, seed=None)
    assert not model.training
    assert not torch.allclose(a[0], a[1])  # passes within one call differ
    assert not torch.allclose(a, b)  # fresh draws differ
    base = torch.zeros(1, 64)
    var = model.mc_variance_of(x, base)
    assert (var > 0).all()
    # the inference default is a fixed draw: reproducible uncertainty
    assert torch.equal(model.mc_variance_of(x, base), var)


def _perturb(model, parts, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for part in parts:
            for _, p in model.named_part_parameters()[part]:
                p.add_(scale * torch.randn(p.shape, generator=g))


def _lora_modules(model):
    from napari_imedsam.model.lora import LoRAQKV

    return [m for m in model.modules() if isinstance(m, LoRAQKV)]


@pytest.mark.parametrize("name", ["tiny", pytest.param("litemedsam", marks=pytest.mark.slow)])
def test_merged_lora_equals_the_low_rank_path(name):
    """At inference LoRA runs as one merged weight; the embedding equals the unmerged computation."""
    model = build_model(default_config(name))
    _perturb(model, ["lora"], scale=0.2)
    size = model.image_size
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        merged = model.encode(images)
    assert all(m._merged is not None for m in _lora_modules(model))  # the merged path ran
    model.set_trainable(["lora"])
    with torch.enable_grad():
        unmerged = model.encode(images)  # gradients wanted: the low-rank path
    assert all(m._merged is None for m in _lora_modules(model))
    assert (merged - unmerged.detach()).abs().max().item() < 1e-5


def test_training_after_inference_uses_fresh_lora_weights():
    model = build_model(default_config("tiny"))
    model.set_trainable(["lora"])
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        before = model.encode(images)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.encode(images).pow(2).mean().backward()
    opt.step()
    with torch.no_grad():
        after = model.encode(images)  # merged again, from the stepped tensors
    model.set_trainable(["lora"])
    with torch.enable_grad():
        reference = model.encode(images).detach()
    assert not torch.allclose(before, after)
    assert (after - reference).abs().max().item() < 1e-5


def test_zero_frequency_adapters_are_skipped_exactly():
    """Blocks whose FA up-projection is zero add nothing; skipping them leaves the embedding as the full
    computation's (the one live block runs the fused inference path: equal to 1e-5, see the next test)."""
    model = build_model(default_config("tiny"))
    fa = model.encoder.fa
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        assert not any(fa.live())  # fresh: every up-projection is zero
        fa.adapters[0].up.weight.add_(0.1)
        assert fa.live()[0] and not any(fa.live()[1:])
        skipped = model.encode(images)
    assert all(fa.live())  # trainable and gradients wanted: every block runs
    full = model.encode(images).detach()
    assert (skipped - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("name, size", [("tiny", None), pytest.param("litemedsam", None, marks=pytest.mark.slow),
                                        pytest.param("sam_vit_b", 256, marks=pytest.mark.slow)])
def test_fused_frequency_adapters_equal_the_modules(name, size, monkeypatch):
    """At inference the FA runs in place with its LayerNorm folded into the down-projection (TinyViT's
    stages and SAM's ViT, random weights); the embedding equals the module path's, the one training uses."""
    from napari_imedsam.model import frequency

    fused_calls = []
    model = build_model(default_config(name) if size is None else default_config(name, image_size=size))
    _perturb(model, ["fa"], scale=0.2)
    size = model.image_size
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(7))
    plain_path = frequency.Adapter.forward
    with monkeypatch.context() as patch:
        patch.setattr(frequency.Adapter, "forward", lambda self, t: fused_calls.append(1) or plain_path(self, t))
        with torch.no_grad():
            fused = model.encode(images)
            again = model.encode(images)
    assert not fused_calls  # no block fell back to the module path
    assert torch.equal(fused, again)  # in-place work leaves nothing behind
    model.set_trainable(["fa"])
    with torch.enable_grad():
        modules = model.encode(images).detach()
    scale = modules.abs().max().item()
    assert (fused - modules).abs().max().item() < 1e-5 * max(1.0, scale)


def test_fingerprint_follows_every_change_and_only_changes(tmp_path):
    from napari_imedsam.model import load_adapters, save_adapters

    model = build_model(default_config("tiny"))
    enc, dec, whole = model.fingerprint("encoder"), model.fingerprint("decoder"), model.fingerprint()
    assert model.fingerprint("encoder") == enc and model.fingerprint() == whole  # stable when nothing changes
    with torch.no_grad():
        model.encode(torch.rand(1, 3, 128, 128))  # inference changes nothing
    assert model.fingerprint() == whole
    _perturb(model, ["inr"])
    assert model.fingerprint("encoder") == enc and model.fingerprint("decoder") != dec  # in place, decoder only
    path = tmp_path / "a.safetensors"
    save_adapters(model, path)
    saved = model.saved_parts()
    trained = model.fingerprint(saved)
    fresh = build_model(default_config("tiny"))
    assert fresh.fingerprint(saved) != trained
    load_adapters(fresh, path)
    assert fresh.fingerprint(saved) == trained  # content, not identity
    fresh.set_trainable(["lora"])
    opt = torch.optim.SGD([p for p in fresh.parameters() if p.requires_grad], lr=1.0)
    fresh.encode(torch.rand(1, 3, 128, 128)).pow(2).mean().backward()
    decoder = fresh.fingerprint("decoder")
    opt.step()
    assert fresh.fingerprint("encoder") != enc and fresh.fingerprint("decoder") == decoder


def test_bounded_correction_makes_skipping_settled_points_exact():
    """Where the backbone's logit is beyond the bound the INR cannot flip the sign, so inference skips it
    there: the mask equals the one from running the heads at every point."""
    model = build_model(default_config("tiny", ugs=False))
    _perturb(model, ["inr"], scale=3.0)  # a head with large corrections
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    box = torch.tensor([[20.0, 30.0, 90.0, 100.0]])
    valid = torch.tensor([[128.0, 128.0]])
    pts = torch.rand(1, 4000, 2, generator=torch.Generator().manual_seed(8)) * 128
    with torch.no_grad():
        feats = model.decode_box(model.encode(images), box)
        bound = float(model.base_logit(feats, pts).abs().median())  # half the points settled
        model.config = model.config.with_(residual_bound=bound)
        logits, _ = model.query(feats, pts, valid, None)
        x, base = model.point_inputs(feats, pts, valid)
        full = model._combine(base, model.coarse(x)[0])
        settled = model.settled(base)
    assert 0 < int(settled.sum()) < settled.numel()  # both kinds of points present
    assert (full - base).abs().max().item() <= bound * (1 + 1e-5)  # the correction is bounded
    assert (full - base).abs().max().item() > 0.5 * bound  # ... and large: the test can fail
    assert torch.equal(logits > 0, full > 0)
    assert torch.allclose(logits[~settled], full[~settled], atol=1e-6)


def test_files_written_before_the_bound_stay_unbounded():
    from napari_imedsam.model.config import IMedSAMConfig

    cfg = default_config("tiny")
    assert cfg.residual_bound is not None
    data = json.loads(cfg.to_json())
    del data["residual_bound"]
    assert IMedSAMConfig.from_json(json.dumps(data)).residual_bound is None
    assert not cfg.architecture_differences(cfg.with_(residual_bound=None))  # same weights fit both


def test_dense_positional_encoding_is_made_once_and_follows_its_matrix():
    """The box decoder's dense PE (SAM's ``get_dense_pe``, a constant of the model) is cached, equals SAM's,
    and is made again when the PE matrix changes (in place, or another device's copy)."""
    decoder = build_model(default_config("tiny")).box_decoder
    pe = decoder.dense_pe()
    assert pe.is_contiguous() and decoder.dense_pe() is pe
    assert torch.equal(pe, decoder.prompt_encoder.get_dense_pe())
    with torch.no_grad():
        decoder.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
    again = decoder.dense_pe()
    assert again is not pe and not torch.equal(again, pe)
    assert torch.equal(again, decoder.prompt_encoder.get_dense_pe())


def test_uncertainty_threshold_equals_the_top_k_of_every_grid_point():
    """The top-K cut is taken over the whole reference grid, the settled points (variance 0) sorted out
    before the heads run: the same cut as the variance of every grid point."""
    model = build_model(default_config("tiny", ugs_reference_grid=48, topk=0.3))
    _perturb(model, ["inr"], scale=0.05)
    images = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    valid = torch.tensor([[128.0, 128.0]])
    with torch.no_grad():
        feats = model.decode_box(model.encode(images), torch.tensor([[20.0, 30.0, 90.0, 100.0]]))
        n = model.config.ugs_reference_grid
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * 128 / n
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        pts = torch.stack([gx, gy], dim=-1).reshape(1, -1, 2)
        for bound in (None, float(model.base_logit(feats, pts).abs().quantile(0.5))):  # none / half settled
            model.config = model.config.with_(residual_bound=bound)
            var = model.variance(feats, pts, valid)[0]
            want = var.topk(round(0.3 * var.numel())).values[-1].clamp_min(1e-12)
            assert want > 1e-12  # the cut falls on unsettled points: the test can tell a wrong one
            sizes, real = [], model.variance
            model.variance = lambda f, p, v, sizes=sizes, real=real: (sizes.append(p.shape[1]), real(f, p, v))[1]
            try:
                assert torch.equal(model.uncertainty_threshold(feats, valid)[0], want)
            finally:
                del model.variance
            settled = model.settled(model.base_logit(feats, pts))
            assert sum(sizes) == (pts.shape[1] if settled is None else int((~settled).sum()))
