"""The npe2 manifest is found and valid; the API imports without loading torch models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import npe2

ROOT = Path(__file__).resolve().parent.parent


def test_npe2_validate_passes():
    exe = Path(sys.executable).with_name("npe2")
    result = subprocess.run([str(exe), "validate", "napari-imedsam"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_plugin_manager_lists_the_plugin_and_its_contributions():
    pm = npe2.PluginManager()
    pm.discover()
    manifest = pm.get_manifest("napari-imedsam")
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Segment (I-MedSAM)", "Fine-tune (I-MedSAM)"} <= widgets
    assert {s.key for s in manifest.contributions.sample_data} >= {"retina", "ct_slice", "mri_volume", "ct_phantom"}
    assert manifest.contributions.readers


def test_manifest_inside_the_package_is_the_root_manifest():
    import napari_imedsam

    packaged = Path(napari_imedsam.__file__).with_name("napari.yaml")
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()


def test_import_is_light():
    code = "import sys, napari_imedsam; assert 'torch' not in sys.modules, 'torch imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
