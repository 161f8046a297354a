"""Remake docs/ct_3d_5mm.png: the CT phantom with 5 mm slices, four organs each propagated from one tight box
on its middle slice (the engine's default PropagationSettings, as the widget's *Both* runs it), shown in
napari's 3-D view at the volume's physical scale.

    xvfb-run -a python scripts/screenshot_3d.py [--out docs/ct_3d_5mm.png]

Prints, per organ, the slices propagated against the organ's true extent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "ct_3d_5mm.png"))
    args = parser.parse_args(argv)

    import napari
    import torch

    from napari_imedsam import Predictor, load_model
    from napari_imedsam.engine.propagation import propagate_volume
    from napari_imedsam.engine.segmenter import Segmenter, SliceImage
    from napari_imedsam.engine.windows import PRESETS
    from napari_imedsam.samples.phantom import ORGAN_IDS, make_ct_phantom
    from src_training.data.boxes import mask_to_box

    hu, truth, spacing = make_ct_phantom((20, 256, 256), seed=0)
    window = PRESETS["abdomen"]
    segmenter = Segmenter(Predictor(load_model("litemedsam")))
    labels = np.zeros(truth.shape, np.uint8)
    with torch.no_grad():
        for name in ("liver", "spleen", "right_kidney", "left_kidney"):
            organ = truth == ORGAN_IDS[name]
            zs = np.flatnonzero(organ.any(axis=(1, 2)))
            z0 = int(zs[len(zs) // 2])
            seed = segmenter.full_logits(SliceImage(("seed", z0), lambda z=z0: hu[z], window),
                                         tuple(mask_to_box(organ[z0]))) > 0
            labels[z0][seed] = ORGAN_IDS[name]
            gen = propagate_volume(segmenter, hu, z0, seed, window=window)
            done = [z0]
            try:
                while True:
                    step = next(gen)
                    labels[step.slice][step.mask] = ORGAN_IDS[name]
                    done.append(step.slice)
            except StopIteration as stop:
                reasons = stop.value
            print(f"{name}: slices {min(done)}-{max(done)} (true extent {zs[0]}-{zs[-1]}); {reasons}")

    viewer = napari.Viewer(show=True, ndisplay=3)  # a shown window: a hidden canvas renders nothing
    viewer.add_image(np.clip(hu, *window), scale=spacing, name="CT (5 mm slices)", colormap="gray",
                     rendering="mip", opacity=0.25)
    viewer.add_labels(labels, scale=spacing, name="propagated organs")
    viewer.window.resize(900, 760)
    viewer.reset_view()
    viewer.camera.angles = (-25, 30, 115)
    viewer.camera.zoom *= 0.95
    napari.qt.get_qapp().processEvents()
    viewer.screenshot(args.out, canvas_only=True, flash=False)
    viewer.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
