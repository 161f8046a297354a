"""The benchmarks run end to end on tiny settings (``--quick``) and write well-formed JSON.

No timing is asserted: the numbers depend on the machine. Each benchmark runs as a subprocess from the
repository root, exactly as a user runs it."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, json_path: Path, *extra: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick", "--device", "cpu", "--json",
                           str(json_path), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| " in proc.stdout  # a markdown table was printed
    text = json_path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    return json.loads(text)


def check_machine(info: dict) -> None:
    for key in ("cpu", "logical_cpus", "torch_threads", "torch", "gpu"):
        assert key in info


@pytest.mark.slow
def test_speed_quick(tmp_path):
    result = run_benchmark("speed", tmp_path / "speed.json")
    check_machine(result["machine"])
    for key in ("encoder", "box_to_mask", "view", "finetune", "targets"):
        assert result[key], key
    enc = result["encoder"][0]
    for key in ("backbone", "image_size", "device", "plain", "adapted", "overhead", "target_met"):
        assert key in enc
    assert enc["plain"]["median_s"] > 0 and enc["adapted"]["median_s"] > 0
    # the encoder's share of the matmul rate: one per repeat, the matmul timed in turn with the encoders
    assert len(enc["encoder_shares"]) == enc["plain"]["repeats"] and enc["encoder_share"] > 0
    methods = {r["method"] for r in result["box_to_mask"]}
    assert {"backbone decoder + bilinear", "I-MedSAM adaptive", "I-MedSAM dense"} <= methods
    for r in result["box_to_mask"]:
        assert r["median_s"] > 0
        if r["method"].startswith("I-MedSAM"):
            assert 0 < r["points_per_pixel"] <= 1.0
            assert 0.0 <= r["dice_vs_dense"] <= 1.0
    assert {4} <= {r["scale"] for r in result["box_to_mask"]}
    assert any(r.get("target_met") is not None for r in result["view"])
    # the allocation peak of a fresh box and of a cached one, measured in a fresh process
    if sys.platform.startswith("linux"):
        probe = result["render_setting"]["allocation_peak"]
        assert [r["scale"] for r in probe["rows"]] == [1, 4]
        for r in probe["rows"]:
            assert r["fresh_box_mib"] > 0 and r["box_cached_mib"] > 0
        assert any("peak memory" in t["target"] for t in result["targets"])
    for r in result["finetune"]:
        assert r["median_s"] > 0 and r["backbone"] == "tiny"
    for t in result["targets"]:
        assert set(t) == {"target", "value", "met"} and isinstance(t["met"], bool)


@pytest.mark.slow
def test_accuracy_quick(tmp_path):
    if importlib.util.find_spec("stardist") is None:
        pytest.skip("needs the stardist data files: pip install --no-deps stardist==0.9.1")
    result = run_benchmark("accuracy", tmp_path / "accuracy.json")
    check_machine(result["machine"])
    assert result["data"]["nuclei"] > 0
    rows = result["rows"]
    assert {r["method"] for r in rows} == {"I-MedSAM", "backbone + bilinear", "box as mask"}
    assert len({r["setting"] for r in rows}) == 3  # native, 1/2, 1/4
    for r in rows:
        assert 0.0 <= r["dice"] <= 1.0 and r["n"] == result["data"]["nuclei"]
        assert r["hd95"] is None or (math.isfinite(r["hd95"]) and r["hd95"] >= 0)
    assert result["finetune"]
    for r in result["finetune"]:
        assert r["train_nuclei"] > 0 and r["held_out"] > 0
        assert 0.0 <= r["before"]["dice"] <= 1.0 and 0.0 <= r["after"]["dice"] <= 1.0
    assert result["finetune_settings"]["parts"]


@pytest.mark.slow
def test_finetune_curve_quick(tmp_path):
    if importlib.util.find_spec("stardist") is None:
        pytest.skip("needs the stardist data files: pip install --no-deps stardist==0.9.1")
    result = run_benchmark("finetune_curve", tmp_path / "curve.json", "--sections", "dsb", "phantom", "nuclei3d",
                           "mri", "ablation")
    check_machine(result["machine"])
    names = {r["data"] for r in result["rows"]}
    assert {"DSB nuclei", "phantom kidneys, same volume", "phantom kidneys, another seed",
            "stardist 3-D nuclei, other z-slices",
            "MRI (nibabel anatomical.nii) dark structures, other slices"} <= names
    mri = next(r for r in result["rows"] if r["data"].startswith("MRI"))
    assert 0.0 <= mri["plain_backbone"]["dice"] <= 1.0 and mri["split"] == "slices"
    for r in result["rows"]:
        assert r["corrected"] > 0 and r["trained"] + r["held_out_pairs"] == r["corrected"]
        assert r["split"] in ("slices", "objects", "none")
        for key in ("before", "after", "box"):
            assert r[key]["dice"] is None or 0.0 <= r[key]["dice"] <= 1.0
        assert r["seconds"] > 0
    assert len(result["ablation"]) >= 5 and all(r["encodes"] >= 1 for r in result["ablation"])
    assert result["settings"]["parts"] == ["decoder", "mask_decoder", "inr"]


def test_clicks_quick(tmp_path):
    if importlib.util.find_spec("stardist") is None:
        pytest.skip("needs the stardist data files: pip install --no-deps stardist==0.9.1")
    result = run_benchmark("clicks", tmp_path / "clicks.json")
    check_machine(result["machine"])
    nuclei = result["results"]["DSB nuclei"]
    assert nuclei["objects"] == 3 and len(nuclei["imedsam"]) == len(nuclei["backbone"]) == result["clicks"] + 1
    assert all(0.0 <= v <= 1.0 for v in nuclei["imedsam"] + nuclei["backbone"])
    for obj in result["objects"]["DSB nuclei"]:
        assert len(obj["imedsam"]) == result["clicks"] + 1

