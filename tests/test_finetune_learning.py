"""What fine-tuning needs to learn from a handful of objects: points where the objects are, the trainable mask
decoder, adapter files old and new, and one encode per distinct slice. (How much it learns on real data is
measured by ``benchmarks/finetune_curve.py``; here the tiny backbone's random features only show the direction.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_imedsam import load_model
from napari_imedsam.model.adapters import load_adapters, read_adapter_file, save_adapters
from src_training.data.sample import Sample
from src_training.trainer import TrainConfig, evaluate_dice, fit

OLD_FILE = Path(__file__).parent / "data" / "tiny_adapters_v1.safetensors"


def disc_images(n_images: int, per: int = 5, size: int = 128, seed: int = 0, radius=(4.0, 8.0),
                contrast: float = 0.5) -> list[Sample]:
    """Bright discs of radius 4-8 px on a noisy background; one sample per disc, ``per`` discs per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    out = []
    for i in range(n_images):
        img = 0.2 + 0.05 * rng.standard_normal((size, size))
        masks: list[np.ndarray] = []
        while len(masks) < per:
            r = rng.uniform(radius[0], radius[1])
            cy, cx = rng.uniform(12, size - 12, 2)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            if not any((m & other).any() for other in masks):
                masks.append(m)
                img[m] += contrast
        img = np.clip(img, 0, 1).astype(np.float32)
        out += [Sample(image=img, mask=m, source=f"disc {i}.{j}", case_id=f"img{i}", label_id=j + 1)
                for j, m in enumerate(masks)]
    return out


def _perturb(model, part: str, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_part_parameters()[part]:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


# ---- learning from small objects ----------------------------------------------------------------------
@pytest.mark.slow
def test_the_default_point_mix_learns_small_objects_that_uniform_points_miss():
    """Discs of 6-12 px radius, six per 256x256 image: 4 per image train, the other 2 are held out (the encoder
    is frozen, so objects of one image do not leak). With the same steps, uniform points over the image
    (almost all far background) teach the decoders nothing about the discs; the default mix does."""
    samples = disc_images(4, per=6, size=256, radius=(6.0, 12.0), seed=0)
    train = [s for s in samples if s.label_id <= 4]
    held_out = [s for s in samples if s.label_id > 4]
    cfg = dict(steps=300, batch_size=4, points=256, parts=("decoder", "mask_decoder", "inr"), lr_rest=3e-3,
               cache_embeddings=True, device="cpu", jitter_fraction=0.1, seed=0)
    before = evaluate_dice(load_model("tiny"), held_out, "cpu")
    after = {}
    for name, mix in (("uniform", dict(mix_box=0.0, mix_boundary=0.0, mix_uniform=1.0)), ("default", {})):
        model = load_model("tiny")
        fit(model, train, None, TrainConfig(**cfg, **mix))
        after[name] = evaluate_dice(model, held_out, "cpu")
    # measured (seeds 0-3 of the discs): before <= 0.01, uniform <= 0.001, the default mix 0.12-0.20
    assert before < 0.05
    assert after["uniform"] < 0.05, after
    assert after["default"] > before + 0.08, after
    assert after["default"] > after["uniform"] + 0.08, after


# ---- adapter files ------------------------------------------------------------------------------------
def test_files_written_before_the_mask_decoder_part_still_load():
    model = load_model("tiny", adapters=OLD_FILE)
    tensors, meta = read_adapter_file(OLD_FILE)
    assert "stored_parts" not in meta and not any("mask_decoder.transformer" in k for k in tensors)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in tensors.items())
    assert not model.mask_decoder_tuned()
    # a model whose mask decoder was tuned goes back to SAM's own one: the file was made with it
    other = load_model("tiny")
    _perturb(other, "mask_decoder")
    assert other.mask_decoder_tuned()
    load_adapters(other, OLD_FILE)
    assert not other.mask_decoder_tuned()


def test_adapter_files_store_the_mask_decoder_only_once_tuned(tmp_path):
    model = load_model("tiny")
    small = save_adapters(model, tmp_path / "plain.safetensors")
    tensors, meta = read_adapter_file(small)
    assert json.loads(meta["stored_parts"]) == ["lora", "fa", "decoder", "inr"]
    assert not any(".transformer." in k for k in tensors)
    _perturb(model, "mask_decoder", seed=1)
    _perturb(model, "inr", seed=2)
    big = save_adapters(model, tmp_path / "tuned.safetensors")
    assert "mask_decoder" in json.loads(read_adapter_file(big)[1]["stored_parts"])
    fresh = load_model("tiny", adapters=big)
    assert fresh.mask_decoder_tuned()
    a, b = model.adapter_state_dict(), fresh.adapter_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- the embedding cache ------------------------------------------------------------------------------
def test_ten_objects_of_two_images_are_encoded_twice():
    samples = disc_images(2, per=5)
    model = load_model("tiny")
    calls = []
    encode = model.encode
    model.encode = lambda images: (calls.append(len(images)), encode(images))[1]
    cfg = TrainConfig(steps=4, batch_size=4, points=256, parts=("decoder", "mask_decoder", "inr"),
                      cache_embeddings=True, device="cpu", val_every=2, val_window=True)
    result = fit(model, samples[:8], samples[8:], cfg)  # the held-out objects lie on the same two images
    assert sum(calls) == 2 and result.encoder_calls == 2
    assert len(result.validations) == 2
