"""Simulated corrective clicks (src_training.clicks): where the click goes, and training with clicks."""

from __future__ import annotations

import numpy as np
import torch

from src_training.clicks import corrective_click, simulated_clicks, truth_on_grid


def test_corrective_click_goes_to_the_largest_error():
    truth = np.zeros((40, 40), bool)
    truth[5:25, 5:25] = True
    pred = truth.copy()
    pred[5:25, 15:25] = False  # a 20x10 miss
    pred[30:34, 30:34] = True  # a small leak
    x, y, label = corrective_click(pred, truth)
    assert label == 1 and 17 <= x <= 23 and 8 <= y <= 22  # inside the miss, away from its edge
    assert corrective_click(truth, truth) is None
    x, y, label = corrective_click(truth | (np.arange(40)[:, None] > 30), truth)
    assert label == 0 and y > 30


def test_truth_on_the_low_resolution_grid_and_clicks_in_input_pixels():
    mask = np.zeros((64, 80), bool)
    mask[10:30, 20:60] = True
    grid = truth_on_grid([mask], [(51, 64)], size=64, grid=16)  # 80 px wide image resized to 64, padded
    assert grid.shape == (1, 16, 16) and not grid[0, 13:].any()  # the padding is background
    assert grid[0].sum() > 0
    lowres = torch.full((1, 1, 16, 16), -5.0)  # the backbone found nothing: a positive click is due
    pts, labels = simulated_clicks(lambda *_: lowres, grid, 64, 1.0, np.random.default_rng(0))
    assert labels.tolist() == [[1.0]]
    x, y = pts[0, 0].tolist()
    assert 16 <= x <= 48 and 8 <= y <= 24  # inside the object, in input pixels (64 / 16 = 4 per cell)
    _, none = simulated_clicks(lambda *_: lowres, grid, 64, 0.0, np.random.default_rng(0))
    assert none.tolist() == [[-1.0]]  # probability 0: a padding point only


def test_training_with_clicks_prompts_the_decoder(tiny_model, disk_image, monkeypatch):
    from src_training.data.sample import Sample
    from src_training.trainer import TrainConfig, fit

    img = disk_image((64, 64), centre=(30, 32), radius=12)
    sample = Sample(image=(img - img.min()) / (img.max() - img.min()), mask=img > 100, source="disk", case_id="disk")
    calls = []
    original = tiny_model.decode_prompt
    monkeypatch.setattr(tiny_model, "decode_prompt", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    cfg = TrainConfig(steps=2, batch_size=2, points=64, parts=("inr",), device="cpu", click_prob=1.0,
                      cache_embeddings=True)
    fit(tiny_model, [sample, sample], None, cfg)
    assert calls and all(labels.shape == (2, 1) for labels in calls)
    assert any((labels >= 0).any() for labels in calls)  # real clicks, not only padding


def test_several_clicks_each_come_from_the_mask_given_the_clicks_before():
    truth = torch.zeros((1, 16, 16), dtype=torch.bool)
    truth[0, 4:10, 4:10] = True
    seen = []

    def lowres_of(points, labels):
        seen.append(labels.clone())
        out = torch.full((1, 1, 16, 16), -5.0)
        if points.shape[1]:  # after the first (positive) click: the object found, with a leak on its right
            out[0, 0, 4:10, 4:14] = 5.0
        return out

    pts, labels = simulated_clicks(lowres_of, truth, 64, 1.0, np.random.default_rng(1), max_clicks=3)
    assert pts.shape == (1, 3, 2) and labels.shape == (1, 3)
    k = int((labels[0] >= 0).sum())
    assert [s.shape[1] for s in seen] == list(range(k))  # one decode per click, with the clicks before it
    assert labels[0, 0] == 1 and (k < 2 or labels[0, 1] == 0)  # found nothing: add; then the leak: remove
    if k >= 2:
        assert pts[0, 1, 0] > 40  # the negative click lies in the leak (cells 10-13, x > 40 input pixels)
    counts = {int((simulated_clicks(lowres_of, truth, 64, 1.0, np.random.default_rng(s), 3)[1][0] >= 0).sum())
              for s in range(20)}
    assert counts == {1, 2, 3}
