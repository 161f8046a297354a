"""``imedsam-demo``: napari with both I-MedSAM widgets docked, a sample image, one box and its mask, zoomed
so that the high-resolution (INR) view is visible.

``imedsam-demo --screenshot DIR`` makes the pictures of the documentation in ``DIR`` (``demo.png``,
``segment_widget.png``, ``segment_widget_zoom.png``, ``finetune_widget.png``) and exits; with a ``.png``
file name it writes only the demo picture there. Without a display (a server, a container) it says so and
prints the ``xvfb-run -a`` command that runs it under a virtual X server."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PLUGIN = "napari-imedsam"
SEGMENT, FINETUNE = "Segment (I-MedSAM)", "Fine-tune (I-MedSAM)"
PICTURES = ("demo.png", "segment_widget.png", "segment_widget_zoom.png", "finetune_widget.png")  # in that order


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
#: slices of the phantom whose true organ masks stand for the user's corrections in the fine-tune picture
CORRECTED_SLICES = (12, 17, 22, 27)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imedsam-demo",
        description="Open napari with the I-MedSAM widgets, a sample image, a box and its mask.",
    )
    p.add_argument("--sample", choices=sorted(SCENES), default="ct_phantom",
                   help="sample image to open (default: the synthetic abdominal CT phantom, left kidney)")
    p.add_argument("--backbone", default="litemedsam", help="model backbone (default: the embedded litemedsam)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--screenshot", metavar="DIR",
                   help="write the documentation's pictures into DIR and exit (a .png path: the demo picture only)")
    p.add_argument("--quit", action="store_true", help="close napari once the demo is set up")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the model and the mask")
    return p


# ---- without a display ---------------------------------------------------------------------------------------------
def display_problem(env=os.environ, platform: str = sys.platform) -> str | None:
    """Why Qt cannot open a window here (Linux without X11/Wayland display and no Qt platform chosen), or None."""
    if not platform.startswith("linux") or env.get("QT_QPA_PLATFORM"):
        return None
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return "no display found (DISPLAY is not set), so napari cannot open its window."


def xvfb_hint(argv: list[str]) -> str:
    """The command that runs this demo under a virtual X server, with the same arguments."""
    prog = sys.argv[0] if sys.argv and sys.argv[0].endswith("imedsam-demo") else "imedsam-demo"
    if shutil.which("imedsam-demo") and Path(shutil.which("imedsam-demo")).resolve() == Path(prog).resolve():
        prog = "imedsam-demo"
    args = argv if any(a.startswith("--screenshot") for a in argv) else [*argv, "--screenshot", "docs"]
    return shlex.join(["xvfb-run", "-a", prog, *args])


# ---- scenes ----------------------------------------------------------------------------------------------------------
def _draw_box(seg, scene: DemoScene, timeout: float) -> None:
    sess = seg.session(create=True)
    boxes = seg.ensure_boxes(sess)
    x0, y0, x1, y1 = scene.box
    a, b, c, d = y0 - 0.5, x0 - 0.5, y1 - 0.5, x1 - 0.5  # pixel centres are at integers: edges at -0.5
    corners = [[a, b], [a, d], [c, d], [c, b]]
    if scene.z is not None:
        corners = [[scene.z, *c] for c in corners]
    boxes.add_rectangles([corners])
    if not seg.wait_idle(timeout):
        raise TimeoutError(f"the mask did not arrive within {timeout:.0f} s")


def _zoom_to(viewer, seg, centre_yx, extent_px: float) -> None:
    """Centre the camera on image pixel ``centre_yx`` with ``extent_px`` image pixels across the canvas."""
    layer = seg.image_layer()
    sy, sx = (float(v) for v in layer.scale[-2:])
    ty, tx = (float(v) for v in layer.translate[-2:])
    centre = [ty + centre_yx[0] * sy, tx + centre_yx[1] * sx]
    camera = seg.camera
    camera.center = (camera.center[0], *centre) if len(camera.center) == 3 else centre
    camera.zoom = min(viewer.canvas.size) / (extent_px * max(sy, sx))


def run_demo(viewer, scene: DemoScene, backbone: str = "litemedsam", device: str = "auto",
             timeout: float = 300.0):
    """Populate ``viewer``: sample layer, docked widgets (the model loads as the Segment widget opens), one
    box, zoomed camera. Returns the segmentation widget."""
    from napari_imedsam import sample_data

    for data, kwargs, layer_type in getattr(sample_data, scene.sample)():
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    seg_dock, seg = viewer.window.add_plugin_dock_widget(PLUGIN, SEGMENT)
    viewer.window.add_plugin_dock_widget(PLUGIN, FINETUNE, tabify=True)
    seg_dock.raise_()  # the segmentation widget is the one in front
    seg.ui.backbone.setCurrentText(backbone)
    seg.ui.device.setCurrentText(device)
    seg.start_loading()
    if scene.z is not None:
        viewer.dims.set_current_step(0, scene.z)
    seg.wait_idle(timeout)
    _draw_box(seg, scene, timeout)
    x0, y0, x1, y1 = scene.box
    _zoom_to(viewer, seg, ((y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5), max(x1 - x0, y1 - y0) * scene.zoom_box)
    seg.wait_idle(timeout)
    return seg


def _close_toasts(viewer) -> None:
    """Close notification pop-ups (they stay in the notification list) and bring the Segment widget to the
    front, so the screenshot shows the work."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QApplication, QDockWidget

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    for dock in viewer.window._qt_window.findChildren(QDockWidget):
        if dock.windowTitle().startswith(SEGMENT):
            dock.raise_()  # the segmentation widget in front of its tabbed neighbour
    QApplication.processEvents()


def _save(image, path: Path) -> Path:
    from skimage.io import imsave

    imsave(path, image, check_contrast=False)
    return path


def segment_pictures(viewer, seg, out: Path, timeout: float = 120.0) -> list[Path]:
    """The retina with a box on the optic disc: the whole window, then a close-up of the INR outline over
    the image pixels (``seg`` has a model; the viewer is shown)."""
    from skimage import data

    seg.select_image(viewer.add_image(data.retina(), name="retina", rgb=True))
    seg.book.set_name(1, "optic disc")
    _draw_box(seg, DemoScene("retina", (150.0, 560.0, 300.0, 710.0), None, 1.0), timeout)
    seg.camera.center, seg.camera.zoom = (0.0, 640.0, 230.0), 3.0
    seg.wait_idle(timeout)
    _close_toasts(viewer)
    paths = [_save(viewer.screenshot(canvas_only=False, flash=False), out / "segment_widget.png")]
    # close-up on the upper-right boundary: image pixels (blocky masks layer) under the INR outline
    import numpy as np

    ys, xs = np.nonzero(seg.session().labels.data == 1)
    r = np.sqrt(ys.size / np.pi)
    seg.camera.center, seg.camera.zoom = (0.0, ys.mean() - 0.7 * r, xs.mean() + 0.7 * r), 14.0
    seg.wait_idle(timeout)
    paths.append(_save(viewer.screenshot(canvas_only=True, flash=False), out / "segment_widget_zoom.png"))
    return paths


def finetune_picture(viewer, tune, out: Path, steps: int = 30, timeout: float = 900.0) -> Path:
    """Fine-tune on the phantom's true organ masks of a few slices (standing for corrected masks) and
    picture the Fine-tune widget with its loss curve and held-out Dice."""
    import numpy as np

    from napari_imedsam.samples.phantom import make_ct_phantom

    _hu, truth, _spacing = make_ct_phantom()
    corrected = np.zeros_like(truth)
    corrected[list(CORRECTED_SLICES)] = truth[list(CORRECTED_SLICES)]
    image = viewer.layers["CT phantom"]
    viewer.add_labels(corrected, name="corrected masks", scale=image.scale, visible=False)
    tune.ui.image.setCurrentText(image.name)
    tune.ui.labels.setCurrentText("corrected masks")
    folder = Path(tempfile.mkdtemp(prefix="imedsam-demo-"))
    try:
        tune.open_project(folder / "CT phantom_imedsam")
        tune.add_all_slices()
        tune.ui.steps.setValue(steps)
        if not tune.start_training() or not tune.wait_idle(timeout):
            raise RuntimeError("fine-tuning did not finish: " + " | ".join(tune.notifier.messages()))
        _close_toasts(viewer)
        inner = tune.ui.scroll.widget()  # all the controls, not only the part the dock shows
        path = out / "finetune_widget.png"
        inner.grab().save(str(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def _demo_viewer(args):
    import napari

    viewer = napari.Viewer(title="napari-imedsam demo")
    viewer.window._qt_window.resize(1500, 950)
    try:
        seg = run_demo(viewer, SCENES[args.sample], args.backbone, args.device, args.timeout)
    except Exception:
        viewer.close()
        raise
    return viewer, seg


def make_pictures(target: Path, args) -> list[Path]:
    """Every picture of the documentation into the folder ``target`` (a ``.png`` path: the demo picture
    only, there)."""
    import napari

    only_demo = target.suffix.lower() == ".png"
    out = target.parent if only_demo else target
    out.mkdir(parents=True, exist_ok=True)
    viewer, seg = _demo_viewer(args)
    try:
        _close_toasts(viewer)
        paths = [target if only_demo else out / "demo.png"]
        viewer.window.screenshot(str(paths[0]), canvas_only=False)
        if only_demo:
            return paths
        model, description = seg.current_model(), seg.holder.description  # before fine-tuning on the phantom
        tune = next(w for w in viewer.window.dock_widgets.values() if type(w).__name__ == "FinetuneWidget")
        paths.append(finetune_picture(viewer, tune, out, timeout=args.timeout * 3))
    finally:
        viewer.close()
    viewer = napari.Viewer(title="napari-imedsam")
    viewer.window._qt_window.resize(1600, 1000)
    try:
        _dock, seg = viewer.window.add_plugin_dock_widget(PLUGIN, SEGMENT)
        seg.apply_model(model, description)
        paths[1:1] = segment_pictures(viewer, seg, out, args.timeout)
    finally:
        viewer.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    problem = display_problem()
    if problem:
        print(f"imedsam-demo: {problem}\nRun it under a virtual X server (Debian package xvfb); it saves the "
              f"pictures instead of showing a window:\n\n    {xvfb_hint(argv)}\n", file=sys.stderr)
        return 2
    import napari

    if args.screenshot:
        try:
            paths = make_pictures(Path(args.screenshot), args)
        except Exception as exc:  # noqa: BLE001 - shown to the user as one line
            print(f"imedsam-demo: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        for path in paths:
            print(f"screenshot written to {path}")
        return 0
    viewer = napari.Viewer(title="napari-imedsam demo")
    viewer.window._qt_window.resize(1500, 950)
    try:
        run_demo(viewer, SCENES[args.sample], args.backbone, args.device, args.timeout)
    except Exception as exc:  # noqa: BLE001 - shown to the user, then napari stays open (or exits 1)
        print(f"imedsam-demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.quit:
            viewer.close()
            return 1
    if args.quit:
        viewer.close()
        return 0
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
