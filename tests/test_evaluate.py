"""Evaluation: dense rendering equals the Predictor, cross-resolution protocol, and both CLIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.io
import torch

from napari_imedsam.engine.predictor import Predictor
from napari_imedsam.model import build_model, default_config
from src_training import evaluate, train
from src_training.data import mask_to_box
from src_training.synthetic import make_synthetic_samples


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one intra-op thread is faster, and far faster on a shared, busy CPU (no spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(default_config("tiny", image_size=64, ugs_reference_grid=32))


def test_output_shape_and_nearest_resize():
    assert evaluate.output_shape((30, 50), None) == (30, 50)
    assert evaluate.output_shape((30, 50), 100) == (60, 100)
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    up = evaluate.resize_nearest(mask, (8, 12))
    assert np.array_equal(up, np.kron(mask, np.ones((2, 2), bool)))
    assert np.array_equal(evaluate.resize_nearest(up, (4, 6)), mask)


def test_dense_rendering_matches_predictor(model):
    samples = make_synthetic_samples(2, size=40, seed=4, aspect=(0.6, 1.4))
    rendered = dict(evaluate.render_logits(model, samples, "cpu", 2, (None, 72), baseline=True))
    pred = Predictor(model, device="cpu")
    for i, s in enumerate(samples):
        pred.set_image(s.image, window=(0.0, 1.0))  # samples are already in [0, 1]: the identity window
        box = mask_to_box(s.mask)
        for res in (None, 72):
            inr, base = rendered[i][res]
            shape = evaluate.output_shape(s.mask.shape, res)
            ref = pred.predict(box, out_shape=shape, dense=True, return_logits=True)
            assert inr.shape == shape and np.allclose(inr, ref, atol=1e-3)
            ref_base = pred.predict_backbone(box, out_shape=shape)
            assert np.allclose(1 / (1 + np.exp(-base)), ref_base, atol=1e-4)


def test_evaluate_samples_rows_and_mm(model):
    samples = make_synthetic_samples(2, size=32, seed=6, spacing=(0.5, 0.25))
    result = evaluate.evaluate_samples(model, samples, resolutions=[16, 64], device="cpu")
    rows = {(r["method"], r["resolution"]): r for r in result["rows"]}
    assert set(rows) == {(m, r) for m in evaluate.METHODS for r in (16, 64)}
    assert all(r["n"] == 2 and 0 <= r["dice"] <= 1 and "hd95_mm" in r for r in rows.values())
    assert len(result["per_sample"]) == 2 * 2 * 2
    table = evaluate.markdown_table(result["rows"])
    assert "| I-MedSAM | 64 |" in table and "| baseline | 16 |" in table and "HD95 mm" in table


def _kvasir_folder(root, n=4, size=48):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, s in enumerate(make_synthetic_samples(n, size=size, seed=9, distractors=0)):
        skimage.io.imsave(root / "images" / f"img{i}.png", (s.image * 255).astype(np.uint8), check_contrast=False)
        skimage.io.imsave(root / "masks" / f"img{i}.png", (s.mask * 255).astype(np.uint8), check_contrast=False)
    return root


def test_eval_cli_on_kvasir_style_folder(tmp_path, capsys):
    data = _kvasir_folder(tmp_path / "ks")
    out = tmp_path / "eval.json"
    code = evaluate.main(["--data", str(data), "--backbone", "tiny", "--adapters", "none", "--split", "all",
                          "--resolutions", "32", "96", "--json", str(out), "--device", "cpu"])
    assert code == 0
    text = capsys.readouterr().out
    assert "| I-MedSAM | 32 |" in text and "| baseline | 96 |" in text and "Dice %" in text
    report = json.loads(out.read_text())
    methods = {(r["method"], r["resolution"]) for r in report["rows"]}
    assert methods == {(m, r) for m in ("I-MedSAM", "baseline") for r in (32, 96)}
    assert report["n_samples"] == 4 and all(r["n"] == 4 for r in report["rows"])


def test_eval_cli_dataset_error_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert evaluate.main(["--data", str(tmp_path / "empty"), "--backbone", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "dataset error" in err and "Traceback" not in err


def test_train_cli_single_process(tmp_path, capsys):
    out = tmp_path / "run"
    code = train.main(["--synthetic", "4", "--synthetic-size", "40", "--backbone", "tiny", "--image-size", "64",
                       "--steps", "2", "--batch-size", "2", "--points", "32", "--device", "cpu", "--out", str(out)])
    assert code == 0
    assert {"adapters.safetensors", "last.ckpt", "metrics.json", "loss_log.csv"} <= {p.name for p in out.iterdir()}
    code = evaluate.main(["--synthetic", "2", "--backbone", "tiny", "--adapters", str(out / "adapters.safetensors"),
                          "--split", "test", "--device", "cpu"])
    assert code == 0 and "| I-MedSAM | native |" in capsys.readouterr().out


def test_train_cli_errors(tmp_path, capsys):
    assert train.main(["--data", str(tmp_path / "missing"), "--backbone", "tiny", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "dataset error" in err and "Traceback" not in err
    assert train.main(["--synthetic", "4", "--backbone", "tiny", "--out", str(tmp_path), "--parts", "lora",
                       "--cache-embeddings"]) == 2
    assert "cache_embeddings" in capsys.readouterr().err


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--resume", "--val-every", "--checkpoint", "--download", "--adapters", "--points", "--parts",
                   "--split-seed", "--image-size", "--no-residual", "--no-fa", "--no-ugs", "--fa-mode", "--lora-rank",
                   "--topk", "--mc-samples", "--window", "--workers", "--checkpoint-every", "--synthetic"):
        assert option in text
