"""The default head's training data and recipe: cross-resolution samples the project makes itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src_training.head_data import HeadMix, cell_field, head_samples


def test_cell_fields_are_deterministic_nuclei_with_visible_objects():
    image, labels = cell_field(3, 1, size=128)
    again, labels2 = cell_field(3, 1, size=128)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels2)
    ids = np.unique(labels[labels > 0])
    assert len(ids) >= 5
    inside, outside = image[labels > 0].mean(), image[labels == 0].mean()
    assert abs(inside - outside) > 0.05  # objects stand out from the background (bright or dark)
    other, _ = cell_field(3, 2, size=128)
    assert not np.array_equal(image, other)


def test_samples_keep_the_full_size_mask_while_the_input_shrinks():
    mix = HeadMix(cells=1, per_image=3, ct_seeds=1, ct_slices=1, shapes=1, size=64)
    samples = head_samples(mix, seed=0)
    families = {s.case_id.split("-")[0] for s in samples}
    assert families == {"cells", "ct", "shapes"}
    for s in samples:
        f = int(s.source.rsplit("1/", 1)[1])
        assert f in mix.factors
        assert s.mask.shape == (64, 64) and s.mask.any()
        assert s.image.shape[:2] == (64 // f, 64 // f)
        assert s.image.dtype == np.float32 and 0.0 <= s.image.min() and s.image.max() <= 1.0
    # every object appears once per factor, with the same full-size mask
    by_object: dict[str, list] = {}
    for s in samples:
        by_object.setdefault(s.source.rsplit(" input", 1)[0], []).append(s)
    for group in by_object.values():
        assert len(group) == len(mix.factors)
        for s in group[1:]:
            np.testing.assert_array_equal(s.mask, group[0].mask)
    ct = [s for s in samples if s.case_id.startswith("ct")]
    assert ct and all(s.label_name for s in ct) and all(s.spacing is not None for s in ct)


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_at_toy_size(tmp_path):
    """imedsam-train --head-data on the tiny backbone: the mask decoder is trained and stored."""
    from napari_imedsam.model import read_adapter_file
    from src_training.train import main

    out = tmp_path / "head"
    rc = main(["--head-data", "0.05", "--head-size", "64", "--backbone", "tiny", "--steps", "3", "--batch-size", "2",
               "--points", "64", "--cache-embeddings", "--parts", "decoder", "mask_decoder", "inr", "--click-prob",
               "0.5", "--out", str(out)])
    assert rc == 0
    tensors, meta = read_adapter_file(out / "adapters.safetensors")
    assert "mask_decoder" in json.loads(meta["stored_parts"])
    assert any("mask_decoder.transformer" in k for k in tensors)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_val_dice"] is not None


def test_bad_head_data_options_are_refused(tmp_path, capsys):
    from src_training.train import main

    assert main(["--head-data", "0", "--backbone", "tiny", "--out", str(tmp_path / "x")]) == 2
    assert "--head-data needs a positive scale" in capsys.readouterr().err
