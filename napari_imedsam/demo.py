"""``imedsam-demo``: napari with both I-MedSAM widgets docked, a sample image, one box and its mask, zoomed
so that the high-resolution (INR) view is visible. ``--screenshot PATH --quit`` runs it headless."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

PLUGIN = "napari-imedsam"


@dataclass(frozen=True)
class DemoScene:
    """A sample, the box to draw (image pixels, x0 y0 x1 y1, pixel edges), the slice, and the zoom."""

    sample: str
    box: tuple[float, float, float, float]
    z: int | None
    zoom_box: float  # the camera shows this many box sizes across


SCENES = {
    "ct_phantom": DemoScene("ct_phantom", (154.0, 148.0, 188.0, 188.0), 20, 1.6),
    "retina": DemoScene("retina", (118.0, 505.0, 318.0, 770.0), None, 2.2),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imedsam-demo",
        description="Open napari with the I-MedSAM widgets, a sample image, a box and its mask.",
    )
    p.add_argument("--sample", choices=sorted(SCENES), default="ct_phantom",
                   help="sample image to open (default: the synthetic abdominal CT phantom, left kidney)")
    p.add_argument("--backbone", default="litemedsam", help="model backbone (default: the embedded litemedsam)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--screenshot", metavar="PATH", help="save a PNG of the whole window once the mask is shown")
    p.add_argument("--quit", action="store_true", help="close napari after the screenshot (headless runs)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the model and the mask")
    return p


def run_demo(viewer, scene: DemoScene, backbone: str = "litemedsam", device: str = "auto",
             timeout: float = 300.0):
    """Populate ``viewer``: sample layer, docked widgets, model, one box, zoomed camera. Returns the
    segmentation widget."""
    from napari_imedsam import sample_data

    for data, kwargs, layer_type in getattr(sample_data, scene.sample)():
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    seg_dock, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment (I-MedSAM)")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune (I-MedSAM)", tabify=True)
    seg_dock.raise_()  # the segmentation widget is the one in front
    seg.load_model_now(backbone, device=device)
    if scene.z is not None:
        viewer.dims.set_current_step(0, scene.z)
    seg.wait_idle(timeout)
    sess = seg.session(create=True)
    boxes = seg.ensure_boxes(sess)
    x0, y0, x1, y1 = scene.box
    # napari data coordinates put pixel centres at integers: edges are at -0.5
    a, b, c, d = y0 - 0.5, x0 - 0.5, y1 - 0.5, x1 - 0.5
    corners = [[a, b], [a, d], [c, d], [c, b]]
    if scene.z is not None:
        corners = [[scene.z, *c] for c in corners]
    boxes.add_rectangles([corners])
    if not seg.wait_idle(timeout):
        raise TimeoutError(f"the mask did not arrive within {timeout:.0f} s")
    layer = seg.image_layer()
    sy, sx = (float(v) for v in layer.scale[-2:])
    ty, tx = (float(v) for v in layer.translate[-2:])
    cy, cx = (y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5
    center = [ty + cy * sy, tx + cx * sx]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (camera.center[0], *center) if len(camera.center) == 3 else center
    canvas = viewer.window._qt_viewer.canvas.size
    extent = max((x1 - x0) * sx, (y1 - y0) * sy) * scene.zoom_box
    camera.zoom = min(canvas) / extent
    seg.wait_idle(timeout)
    return seg


def _close_toasts(viewer) -> None:
    """Close notification pop-ups (they stay in the notification list) and bring the Segment widget to the
    front, so the screenshot shows the work."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    from qtpy.QtWidgets import QApplication, QDockWidget

    for dock in viewer.window._qt_window.findChildren(QDockWidget):
        if dock.windowTitle().startswith("Segment (I-MedSAM)"):
            dock.raise_()  # the segmentation widget in front of its tabbed neighbour

    QApplication.processEvents()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-imedsam demo")
    viewer.window._qt_window.resize(1500, 950)
    seg = None
    try:
        seg = run_demo(viewer, SCENES[args.sample], args.backbone, args.device, args.timeout)
    except Exception as exc:  # noqa: BLE001 - shown to the user, then napari stays open (or exits 1)
        print(f"imedsam-demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.quit:
            viewer.close()
            return 1
    if args.screenshot:
        if seg is not None:
            seg.wait_idle(args.timeout)
        _close_toasts(viewer)
        viewer.window.screenshot(args.screenshot, canvas_only=False)
        print(f"screenshot written to {args.screenshot}")
    if args.quit:
        viewer.close()
        return 0
    QTimer.singleShot(0, lambda: None)
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
