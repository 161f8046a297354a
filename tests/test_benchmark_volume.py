"""``python -m benchmarks.volume --quick`` runs end to end (tiny model, a crop of the 3-D nuclei, a small
phantom and one MRI structure) and writes well-formed JSON with every row, the calibration signals and the
targets. No accuracy is asserted: the tiny model has random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_volume_benchmark_quick(tmp_path):
    pytest.importorskip("tifffile")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "volume.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.volume", "--quick", "--device", "cpu", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "| shipped |" in proc.stdout and "| ceiling |" in proc.stdout
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    result = json.loads(text)
    assert result["backbone"] == "tiny" and result["quick"] is True
    assert [r["dataset"] for r in result["results"]] == ["nuclei", "phantom", "mri"]
    for r in result["results"]:
        summary = r["summary"]
        assert {"shipped", "new", "marked extent", "ceiling"} <= set(summary)
        assert any(k.startswith("interpolate") for k in summary)
        for row in summary.values():
            assert 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["coverage"] <= 1.0 and row["past_max"] >= 0
        assert summary["ceiling"]["coverage"] == 1.0  # a box on every slice of the object
        assert {s["signal"] for s in r["signals"]} >= {"overlap", "relative_stability", "relative_contrast"}
        assert r["timing"]["encode_s_per_slice"] > 0 and r["timing"]["decode_s_per_box"] > 0
    assert len(result["targets"]) == 9
    for t in result["targets"]:
        assert set(t) == {"target", "value", "met"} and isinstance(t["met"], bool)
