"""The embedded default head ships inside the package, loads by default and documents its origin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_imedsam.model import read_adapter_file
from napari_imedsam.model.build import default_adapters_path


def test_default_head_is_shipped_and_documented():
    path = default_adapters_path("litemedsam")
    assert path is not None, "napari_imedsam/weights/litemedsam_default.safetensors is missing"
    assert path.stat().st_size < 20 * 2**20  # SAM's mask decoder (4 M weights) and the INR heads, in fp32
    tensors, meta = read_adapter_file(path)  # safetensors: nothing is unpickled
    assert meta["backbone"] == "litemedsam"
    assert meta["training_command"].startswith("imedsam-train ")
    assert "--backbone litemedsam" in meta["training_command"] and "--head-data" in meta["training_command"]
    assert meta["head"] in ("trained", "zero-correction")
    card = path.with_name("MODEL_CARD.md").read_text()
    assert " ".join(meta["training_command"].split()) in " ".join(card.split())
    if meta["head"] == "zero-correction":
        assert meta["why"] and "zero correction" in card
    else:  # a trained head names its data and the held-out numbers it shipped on, as the card does
        assert "head_data" in meta["data"] and json.loads(meta["heldout"])["dsb_nuclei"]
        assert "mask_decoder" in json.loads(meta["stored_parts"])
        assert any(k.startswith("box_decoder.mask_decoder.transformer.") for k in tensors)


@pytest.mark.slow
def test_the_plain_backbone_is_one_call_away():
    from napari_imedsam import load_model

    plain, default = load_model("litemedsam", adapters=None), load_model("litemedsam")
    key = "box_decoder.mask_decoder.transformer.layers.0.mlp.lin1.weight"
    _, meta = read_adapter_file(default_adapters_path("litemedsam"))
    differs = not torch.equal(plain.state_dict()[key], default.state_dict()[key])
    assert differs == (meta["head"] == "trained")  # adapters=None: LiteMedSAM's own decoder, untouched


@pytest.mark.slow
def test_load_model_uses_the_default_head():
    from napari_imedsam import Predictor, load_model

    model = load_model("litemedsam")
    _, meta = read_adapter_file(default_adapters_path("litemedsam"))
    assert model.backbone_hash == meta["backbone_hash"]
    yy, xx = np.mgrid[:96, :96]
    image = (100 + 80 * (((yy - 48) / 20.0) ** 2 + ((xx - 40) / 25.0) ** 2 < 1)).astype(np.uint8)
    pred = Predictor(model, device="cpu")
    pred.set_image(image)
    box = (12, 24, 70, 72)
    head = pred.predict(box, out_shape=(192, 192), dense=True)
    backbone = pred.predict_backbone(box, out_shape=(192, 192))
    if meta["head"] == "zero-correction":
        np.testing.assert_allclose(head, backbone, atol=1e-5)
    assert (head > 0.5).sum() > 0.5 * np.pi * 40 * 50  # the ellipse, at 2x
