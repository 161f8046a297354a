"""The Segment (I-MedSAM) dock widget in a real napari viewer (Qt + Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
# torchvision (via segment_anything) imports triton; doing that after napari's OpenGL (Mesa) has loaded LLVM
# segfaults, so tests that build models themselves import it first (the widget guards its own imports).
import segment_anything  # noqa: E402, F401

pytestmark = pytest.mark.gui

# ---- helpers ---------------------------------------------------------------------------------------------
def rect(y0, x0, y1, x1, z=None) -> np.ndarray:
    """Rectangle vertices in data coordinates (pixel centres at integers)."""
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float)
    return corners if z is None else np.column_stack([np.full(4, float(z)), corners])


@pytest.fixture(scope="module")
def litemedsam():
    from napari_imedsam import load_model

    return load_model("litemedsam", adapters=None)


def draw(widget, *rects):
    sess = widget.session()
    sess.boxes.add_rectangles(list(rects))
    assert widget.wait_idle(60), "workers did not finish"
    return sess


# ---- 1. manifest -------------------------------------------------------------------------------------------
def test_opens_from_manifest_and_finds_the_image(make_napari_viewer, disk_image):
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-imedsam", "Segment (I-MedSAM)")
    assert w.wait_idle(10)
    assert w.image_layer() is viewer.layers["scan"]
    assert w.predictor is None and w.current_model() is None
    names = [lay.name for lay in viewer.layers]
    assert "scan boxes" in names and "scan masks" in names and "scan clicks" in names
    assert viewer.layers.selection.active.name == "scan boxes"
    assert viewer.layers["scan boxes"].mode == "add_rectangle"
    assert "Ctrl+Z" in w.toolTip()
    assert w.ui.window.currentText() == "none"
    # the manifest route hands the widget a proxied viewer: layers must keep one identity all the same
    w.load_model_now("tiny")
    sess = draw(w, rect(30.5, 40.5, 90.5, 100.5))
    assert sess is w.session() and sess.labels.data.any()
    assert w.hires.renders >= 1  # rendered after the commit ...
    w.camera.zoom *= 1.5  # ... and again after the zoom
    assert w.wait_idle(60)
    assert w.hires.renders >= 2
    assert [lay.name for lay in viewer.layers].count("scan high-res (INR)") == 1
    assert len(viewer.layers) == 5  # image, masks, high-res view, boxes, clicks


# ---- 2. boxes, labels, undo/redo ---------------------------------------------------------------------------
def test_box_commits_mask_inside_box_and_undo_redo(make_napari_viewer, disk_image, segment_widget):
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    w = segment_widget(viewer)
    sess = draw(w, rect(30.5, 40.5, 90.5, 100.5))
    labels = sess.labels.data
    assert labels.shape == (128, 160)
    assert set(np.unique(labels)) <= {0, 1}
    ys, xs = np.nonzero(labels)
    assert ys.size > 0, "the tiny model gives a non-empty mask for this box"
    # rows 31..90, cols 41..100 are the pixels inside the box (edges at centre +- 0.5)
    assert ys.min() >= 31 and ys.max() <= 90 and xs.min() >= 41 and xs.max() <= 100
    first = labels.copy()
    draw(w, rect(5.5, 110.5, 40.5, 150.5))
    assert 2 in np.unique(labels) and w.ui.label.value() == 3
    assert set(np.unique(labels[:, :110])) <= {0, 1}
    w.undo()
    np.testing.assert_array_equal(labels, first)
    w.undo()
    assert not labels.any()
    w.redo()
    np.testing.assert_array_equal(labels, first)
    w.redo()
    assert 2 in np.unique(labels)
    assert len(sess.store.objects) == 2


# ---- 3. high-resolution view -------------------------------------------------------------------------------
def test_hires_view_follows_the_camera(make_napari_viewer, litemedsam, disk_image, segment_widget):
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    w = segment_widget(viewer, litemedsam)
    sess = draw(w, rect(30.5, 40.5, 90.5, 100.5))
    low = sess.labels.data
    assert 0.8 < (low == 1).sum() / (np.pi * 25**2) < 1.2, "litemedsam segments the bright disk"
    cam = w.camera
    cam.center = (0.0, 60.0, 70.0)
    cam.zoom = 8.0
    assert w.wait_idle(60)
    hires = sess.hires
    assert hires is not None and w.hires.renders >= 1
    view = w.hires.last_view
    assert hires.data.shape == view.out_shape
    assert hires.scale[0] == pytest.approx(1 / 8, rel=1e-3)  # 8 screen px per image pixel
    canvas = viewer.canvas.size
    assert max(abs(a - b) for a, b in zip(hires.data.shape, canvas)) <= 2  # one output px per screen px
    # output pixel (i, j) sits at world i * scale + translate; compare with the low-res mask there
    ii, jj = np.mgrid[: hires.data.shape[0], : hires.data.shape[1]]
    wy = ii * hires.scale[0] + hires.translate[0]
    wx = jj * hires.scale[1] + hires.translate[1]
    assert wy.min() == pytest.approx(60 - canvas[0] / 16, abs=0.5)  # centred on the camera
    assert wx.min() == pytest.approx(70 - canvas[1] / 16, abs=0.5)
    r, c = np.round(wy).astype(int), np.round(wx).astype(int)
    inside = (r >= 0) & (r < low.shape[0]) & (c >= 0) & (c < low.shape[1])
    lo = low[r[inside], c[inside]]
    hi = hires.data[inside]
    from scipy import ndimage

    edge = ndimage.binary_dilation(low == 1) & ~ndimage.binary_erosion(low == 1)
    away = ~edge[r[inside], c[inside]]
    assert (lo[away] == hi[away]).mean() > 0.995
    assert (hi == 1).sum() > 0.2 * hi.size  # the disk fills a quarter of this window
    # zooming again re-renders; the layer keeps following
    before = w.hires.renders
    cam.zoom = 16.0
    assert w.wait_idle(60)
    assert w.hires.renders > before and sess.hires.scale[0] == pytest.approx(1 / 16, rel=1e-3)
    # off: the layer hides
    w.toggle_hires()
    assert not sess.hires.visible


# ---- 4. volumes and propagation ----------------------------------------------------------------------------
def blob_volume(nz=12, n=96, rng=0):
    zz, yy, xx = np.mgrid[:nz, :n, :n]
    inside = ((zz - 5.5) / 3.2) ** 2 + ((yy - 48) / 22) ** 2 + ((xx - 44) / 18) ** 2 < 1
    vol = np.where(inside, 200.0, 20.0) + np.random.default_rng(rng).normal(0, 5, (nz, n, n))
    return vol.astype(np.float32), inside


@pytest.mark.parametrize("scale", [(1.0, 1.0, 1.0), (5.0, 0.7, 0.7)], ids=["isotropic", "5 mm slices"])
def test_volume_box_writes_its_slice_and_propagation_stops_at_the_blob_end(make_napari_viewer, litemedsam,
                                                                           segment_widget, scale):
    """Also for a CT-like volume with 5 mm slices and 0.7 mm pixels: napari shows it at physical scale, while
    boxes, masks and propagation work in the volume's own pixel grid."""
    viewer = make_napari_viewer()
    vol, inside = blob_volume()
    image = viewer.add_image(vol, name="vol", scale=scale)
    w = segment_widget(viewer, litemedsam)
    viewer.dims.set_current_step(0, 5)
    assert w.current_slice() == 5
    sess = draw(w, rect(22.5, 22.5, 73.5, 66.5, z=5))
    assert tuple(sess.labels.scale) == tuple(image.scale) == tuple(sess.boxes.scale)
    labels = sess.labels.data
    assert labels.shape == vol.shape
    assert set(np.nonzero(labels.any(axis=(1, 2)))[0]) == {5}
    ys, xs = np.nonzero(labels[5] == 1)
    assert ys.min() >= 22 and ys.max() <= 74 and xs.min() >= 22 and xs.max() <= 67  # inside the box, in pixels
    w.propagate("both")
    assert w.wait_idle(120)
    done = set(np.nonzero(labels.any(axis=(1, 2)))[0])
    blob = set(np.nonzero(inside.any(axis=(1, 2)))[0])  # slices 3..8
    assert {4, 5, 6, 7} <= done <= blob, (done, w.tools.last_propagation)
    for z in done:
        iou = ((labels[z] == 1) & inside[z]).sum() / ((labels[z] == 1) | inside[z]).sum()
        assert iou > 0.5, (z, iou)
    assert len(sess.store.objects) == len(done)
    w.undo()  # one step undoes the whole propagation
    assert set(np.nonzero(labels.any(axis=(1, 2)))[0]) == {5}


# ---- 5. NIfTI round trip -------------------------------------------------------------------------------------
def test_nifti_segment_export_2x_read_back(make_napari_viewer, litemedsam, tmp_path, segment_widget):
    import nibabel as nib

    from napari_imedsam.io.export import fine_affine
    from napari_imedsam.io.volumes import load_nifti

    vol, _ = blob_volume()  # (z, y, x)
    hu = np.where(vol > 100, 150.0, -100.0) + (vol - np.where(vol > 100, 200.0, 20.0))
    yy, xx = np.mgrid[:96, :96]
    hu[:, (yy - 48) ** 2 + (xx - 48) ** 2 > 46**2] = -1000.0  # air around the body: HU data
    source = np.ascontiguousarray(hu.transpose(2, 1, 0)).astype(np.float32)  # (x, y, z) as stored in NIfTI
    affine = np.array([[0.8, 0, 0, -40.0], [0, 0.8, 0, -30.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
    src_path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(source, affine), str(src_path))

    viewer = make_napari_viewer()
    viewer.open(str(src_path), plugin="napari-imedsam")
    layer = viewer.layers[0]
    assert layer.metadata["is_hu"] and layer.data.shape == (12, 96, 96)
    w = segment_widget(viewer, litemedsam)
    assert w.ui.window.currentText() == "abdomen" and w.current_window() == (-125.0, 275.0)
    viewer.dims.set_current_step(0, 5)
    ys, xs = np.nonzero(layer.data[5] > 0)
    sess = draw(w, rect(ys.min() - 3.5, xs.min() - 3.5, ys.max() + 3.5, xs.max() + 3.5, z=5))
    coarse = np.array(sess.labels.data)
    assert (coarse[5] == 1).sum() > 0.7 * (layer.data[5] > 0).sum()

    out = tmp_path / "masks_2x.nii.gz"
    w.export_masks(out, factor=2)
    assert w.wait_idle(60) and out.is_file(), w.notifier.log
    img = nib.load(str(out))
    assert img.shape == (192, 192, 12)
    np.testing.assert_allclose(img.affine, fine_affine(affine, (0, 1), 2), atol=1e-5)
    fine = load_nifti(out).data  # back in the viewer's (z, y, x) order
    assert fine.shape == (12, 192, 192)
    assert set(np.unique(fine)) == {0, 1} and set(np.nonzero(fine.any(axis=(1, 2)))[0]) == {5}
    nearest = np.repeat(np.repeat(coarse, 2, axis=1), 2, axis=2)
    from scipy import ndimage

    edge = ndimage.binary_dilation(coarse[5] == 1) ^ ndimage.binary_erosion(coarse[5] == 1)
    away = ~np.repeat(np.repeat(edge, 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(fine[5][away], nearest[5][away])
    assert (fine[5] != nearest[5]).any(), "the 2x export is rendered by the INR, not nearest upsampling"
    # 1x TIFF of the same masks
    tif = tmp_path / "masks.tif"
    w.export_masks(tif, factor=1)
    assert w.wait_idle(30)
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tif), coarse)


# ---- 6. bad input ----------------------------------------------------------------------------------------------
@pytest.fixture
def notes(monkeypatch):
    """Capture napari notifications sent by the widget (the functions its module calls)."""
    from napari.utils import notifications

    seen: list[tuple[str, str]] = []
    for level in ("info", "warning", "error"):
        monkeypatch.setattr(notifications, f"show_{level}", lambda msg, level=level: seen.append((level, msg)))
    return seen


def _has(notes, level, *words):
    return any(lv == level and all(w.lower() in m.lower() for w in words) for lv, m in notes)


def test_box_partly_outside_is_clipped_and_zero_area_ignored(make_napari_viewer, notes, disk_image, segment_widget):
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    w = segment_widget(viewer)
    sess = draw(w, rect(-20.5, -30.5, 40.5, 50.5))
    assert _has(notes, "info", "clipped")
    assert sess.labels.data.any() and not sess.labels.data[41:].any() and not sess.labels.data[:, 51:].any()
    n = len(sess.boxes.data)
    draw(w, rect(10.0, 10.0, 10.0, 60.0))  # a line: zero height
    assert _has(notes, "info", "zero area")
    assert len(sess.boxes.data) == n  # the stray rectangle is removed again
    draw(w, rect(300.5, 300.5, 320.5, 330.5))
    assert _has(notes, "warning", "outside")
    assert len(sess.store.objects) == 1


def test_unsupported_layers_are_refused_with_a_message(make_napari_viewer, notes, segment_widget):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 3, 32, 32), np.float32), name="4d")
    w = segment_widget(viewer)
    assert _has(notes, "warning", "4d", "not supported") or _has(notes, "warning", "4 spatial dimensions")
    assert w.session() is None
    viewer.add_image(np.zeros((64, 64, 2), np.float32), name="two-channel")
    w.select_image(viewer.layers["two-channel"])
    assert _has(notes, "warning", "2-channel", "not supported")
    assert w.session() is None


def test_result_goes_to_its_slice_even_if_the_view_moves(make_napari_viewer, notes, segment_widget):
    viewer = make_napari_viewer()
    vol, _ = blob_volume()
    viewer.add_image(vol, name="vol")
    w = segment_widget(viewer)
    viewer.dims.set_current_step(0, 5)
    sess = w.session()
    sess.boxes.add_rectangles([rect(22.5, 22.5, 73.5, 66.5, z=5)])
    viewer.dims.set_current_step(0, 8)  # the user moves on while the worker runs
    assert w.wait_idle(60)
    assert set(np.nonzero(sess.labels.data.any(axis=(1, 2)))[0]) == {5}
    # removing the image while a box is segmented drops the result, with a message
    viewer.dims.set_current_step(0, 2)
    sess.boxes.add_rectangles([rect(22.5, 22.5, 73.5, 66.5, z=2)])
    viewer.layers.remove(viewer.layers["vol"])
    assert w.wait_idle(60)
    assert _has(notes, "warning", "removed", "dropped")
    assert not sess.labels.data[2].any()


def test_model_errors_name_the_file_and_backbone(make_napari_viewer, notes, tmp_path, disk_image):
    from napari_imedsam.engine.model_loading import ModelLoadError

    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    from napari_imedsam.widgets.segment_widget import SegmentWidget

    w = SegmentWidget(viewer)
    missing = tmp_path / "sam_vit_b_01ec64.pth"
    w.ui.backbone.setCurrentText("sam_vit_b")
    w.ui.checkpoint.setText(str(missing))
    w.ui.load.click()  # the GUI path: a worker, errors become notifications
    assert w.wait_idle(60)
    assert _has(notes, "error", str(missing), "sam_vit_b")
    assert w.predictor is None
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="garbage.pth"):
        w.load_model_now("litemedsam", checkpoint=bad)
    assert _has(notes, "error", "garbage.pth", "litemedsam")
    # a box drawn while no model can be loaded is dropped with a message, nothing escapes
    w.ui.backbone.setCurrentText("sam_vit_b")
    w.session().boxes.add_rectangles([rect(30.5, 40.5, 90.5, 100.5)])
    assert w.wait_idle(60)
    assert _has(notes, "warning", "not segmented")


def test_absent_device_falls_back_with_a_notice(make_napari_viewer, notes, monkeypatch, disk_image, segment_widget):
    from napari_imedsam.engine import model_loading

    monkeypatch.setattr(model_loading, "available_devices", lambda: ["cpu"])
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    w = segment_widget(viewer, backbone="tiny")
    w.load_model_now("tiny", device="cuda")
    assert _has(notes, "warning", "cuda", "not available", "cpu")
    assert str(w.predictor.device) == "cpu"


# ---- 7. screenshots (the docs pictures are made by `imedsam-demo --screenshot docs`, with the same code) ----------
@pytest.mark.slow
def test_screenshot_retina(make_napari_viewer, litemedsam, segment_widget, tmp_path):
    from skimage.io import imread

    from napari_imedsam.demo import segment_pictures

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    w = segment_widget(viewer, litemedsam, description="litemedsam, plain backbone, on cpu")
    shots = segment_pictures(viewer, w, tmp_path, timeout=60)
    assert [p.name for p in shots] == ["segment_widget.png", "segment_widget_zoom.png"]
    assert all(p.parent == tmp_path and p.is_file() for p in shots)
    sess = w.session()
    assert sess.image.name == "retina" and (sess.labels.data == 1).sum() > 3000
    assert w.book.name_of(1) == "optic disc"
    # the close-up: image pixels (blocky masks layer) under the INR outline rendered at screen resolution
    assert sess.hires.scale[0] == pytest.approx(1 / 14, rel=1e-3)
    assert imread(shots[1]).std() > 5


# ---- more features: contours, uncertainty, the fine-tune contract, shortcuts ------------------------------------
def test_contours_uncertainty_and_model_swap(make_napari_viewer, qtbot, disk_image, segment_widget):
    from napari_imedsam import load_model

    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    model = load_model("tiny", adapters=None, residual=False)  # a coarse head with signal: nonzero MC variance
    w = segment_widget(viewer, model)
    sess = draw(w, rect(30.5, 40.5, 90.5, 100.5))
    w.trace_contours(4)
    assert w.wait_idle(60)
    polys = sess.contours.data
    assert polys and all(p.shape[1] == 2 for p in polys)
    allv = np.concatenate(polys)
    assert allv[:, 0].min() >= 30.5 - 0.3 and allv[:, 0].max() <= 90.5 + 0.3  # inside the box (data coords)
    assert (np.abs(allv - np.round(allv * 4) / 4) > 1e-6).any() or len(allv) > 50  # sub-pixel vertices
    w.ui.uncertainty.setChecked(True)
    assert w.wait_idle(60)
    unc = sess.uncertainty
    assert unc is not None and unc.visible and unc.data.max() > 0
    assert unc.data.ndim == 2 and max(unc.data.shape) <= 256
    # the fine-tune widget's contract
    other = load_model("tiny", adapters=None)
    renders = w.hires.renders
    with qtbot.waitSignal(w.model_changed, timeout=5000):
        w.apply_model(other, "fine-tuned adapters")
    assert w.current_model() is other and w.predictor.model is other
    assert any("fine-tuned adapters" in m for m in w.notifier.messages("info"))
    assert w.wait_idle(60) and w.hires.renders > renders  # the view re-rendered with the new model
    assert w.current_window() is None and w.image_layer() is viewer.layers["scan"]


def test_keyboard_shortcuts_are_bound(make_napari_viewer, disk_image, segment_widget):
    from napari.utils.key_bindings import coerce_keybinding

    from napari_imedsam.widgets.shortcuts import SHORTCUTS, markdown_table

    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    w = segment_widget(viewer)
    sess = draw(w, rect(30.5, 40.5, 90.5, 100.5))
    for target in (viewer, sess.boxes):
        for key, *_ in SHORTCUTS:
            assert coerce_keybinding(key) in target.keymap, (target, key)
    undo = viewer.keymap[coerce_keybinding("Control-Z")]
    undo(viewer)
    assert not sess.labels.data.any()
    sess.boxes.keymap[coerce_keybinding("Control-Shift-Z")](sess.boxes)
    assert sess.labels.data.any()
    sess.boxes.keymap[coerce_keybinding("Shift-H")](sess.boxes)
    assert not w.ui.hires.isChecked()
    assert "| Ctrl+Z |" in markdown_table()


def test_moving_a_box_resegments_its_object(make_napari_viewer, disk_image, segment_widget):
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    w = segment_widget(viewer)
    sess = draw(w, rect(30.5, 40.5, 90.5, 100.5), rect(5.5, 110.5, 40.5, 150.5))
    labels = sess.labels.data
    before = labels.copy()
    moved = [np.asarray(d) for d in sess.boxes.data]
    moved[0] = rect(60.5, 10.5, 120.5, 60.5)  # the user drags the first box elsewhere
    sess.boxes.data = moved  # every box is reported changed; only the moved one is re-run
    assert w.wait_idle(60)
    ys, xs = np.nonzero(labels == 1)
    assert ys.size and ys.min() >= 61 and ys.max() <= 120 and xs.min() >= 11 and xs.max() <= 60
    np.testing.assert_array_equal(labels == 2, before == 2)
    assert [o.label for o in sess.store.objects] == [2, 1] and w.ui.label.value() == 3
    w.undo()
    np.testing.assert_array_equal(labels, before)


def test_3d_display_is_refused_politely(make_napari_viewer, segment_widget):
    viewer = make_napari_viewer()
    vol, _ = blob_volume()
    viewer.add_image(vol, name="vol")
    w = segment_widget(viewer)
    viewer.dims.ndisplay = 3
    sess = w.session()
    sess.boxes.add_rectangles([rect(22.5, 22.5, 73.5, 66.5, z=5)])
    assert w.wait_idle(30)
    assert any("2-D" in m for m in w.notifier.messages("warning"))
    assert not sess.labels.data.any()


# ---- a newcomer's first minutes: the model loads as the widget opens; the status line follows the image -----------
def test_model_starts_loading_when_the_widget_is_shown(make_napari_viewer, disk_image, monkeypatch):
    import threading

    from napari_imedsam import load_model
    from napari_imedsam.engine import model_loading
    from napari_imedsam.widgets.segment_widget import SegmentWidget

    release, asked = threading.Event(), []

    def slow_load(backbone, *_args):
        asked.append(backbone)
        release.wait(30)
        return model_loading.LoadedModel(load_model("tiny"), "cpu", "tiny (for the test)")

    monkeypatch.setattr(model_loading, "load", slow_load)
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="scan")
    w = SegmentWidget(viewer)
    assert not w.workers.running and w.predictor is None  # not shown yet: nothing loads
    w.show()
    assert not w.wait_idle(0.5)  # the loader runs in a worker ...
    assert asked == ["litemedsam"] and w.ui.model_status.text().startswith("loading litemedsam")
    sess = w.session()
    sess.boxes.add_rectangles([rect(30.5, 40.5, 90.5, 100.5)])  # ... the first box waits for it, not longer
    assert not sess.labels.data.any()
    release.set()
    assert w.wait_idle(60)
    assert asked == ["litemedsam"] and w.predictor is not None and sess.labels.data.any()
    assert "tiny (for the test)" in w.ui.model_status.text()
    w.close()


def test_status_line_follows_the_current_image(make_napari_viewer, disk_image, segment_widget):
    viewer = make_napari_viewer()
    viewer.add_image(disk_image(), name="one")
    viewer.add_image(disk_image(radius=15, seed=1), name="two")
    w = segment_widget(viewer)
    w.select_image(viewer.layers["one"])
    draw(w, rect(30.5, 40.5, 90.5, 100.5))
    line = w.ui.status.text()
    assert line.startswith("high-res view") or line.startswith("label 1"), line
    w.select_image(viewer.layers["two"])
    assert w.wait_idle(30)
    assert w.ui.status.text() == ""  # nothing segmented on this image yet: not the other image's numbers
    w.select_image(viewer.layers["one"])
    assert w.ui.status.text() == line


def test_both_widgets_share_the_viewers_model_and_workers(make_napari_viewer, segment_widget, finetune_widget,
                                                          tiny_model):
    from napari_imedsam.widgets.services import for_viewer

    viewer = make_napari_viewer()
    seg = segment_widget(viewer, tiny_model)
    tune = finetune_widget(viewer)
    services = for_viewer(viewer)
    assert tune.holder is seg.holder is services.model and tune.workers is seg.workers is services.workers
    assert tune.segment_widget() is seg and tune.current_model() is tiny_model
    assert for_viewer(make_napari_viewer()) is not services  # one per viewer
    seg.close()
    assert tune.segment_widget() is None and tune.current_model() is tiny_model  # the model stays with the viewer


# ---- 6. DICOM in, DICOM SEG out ----------------------------------------------------------------------------
def test_dicom_export_writes_a_seg_that_opens_back(make_napari_viewer, tmp_path, segment_widget):
    """A DICOM slice opened through the plugin, a box, *Export*: the TIFF and a DICOM SEG referencing the
    series, whose segment reads back as the same label image."""
    import shutil

    from pydicom.data import get_testdata_file

    from napari_imedsam import load_model
    from napari_imedsam.io.dicom_seg import read_dicom_seg

    series = tmp_path / "series"
    series.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), series / "CT_small.dcm")
    viewer = make_napari_viewer()
    viewer.open(str(series / "CT_small.dcm"), plugin="napari-imedsam")
    layer = viewer.layers[0]
    assert layer.metadata.get("source_format") == "dicom"
    w = segment_widget(viewer, load_model("tiny"))
    w.book.set_name(1, "liver")
    sess = draw(w, rect(30.5, 40.5, 90.5, 100.5))
    labels = np.asarray(sess.labels.data)
    assert (labels == 1).any()
    out = tmp_path / "masks.tif"
    w.export_masks(out, factor=1)
    assert w.wait_idle(60) and out.is_file(), w.notifier.log
    seg_file = tmp_path / "masks.seg.dcm"
    assert seg_file.is_file(), w.notifier.log
    back, kwargs, kind = read_dicom_seg(seg_file, series)
    assert kind == "labels"
    np.testing.assert_array_equal(np.asarray(back).reshape(labels.shape), labels)
    assert "DICOM SEG" in " ".join(str(m) for m in w.notifier.log)


# ---- 7. clicks ---------------------------------------------------------------------------------------------
def click(widget, y, x):
    sess = widget.session()
    sess.clicks.add(np.array([[y, x]], dtype=float))
    assert widget.wait_idle(60), "workers did not finish"
    return sess


def test_clicks_refine_the_current_object_with_undo(make_napari_viewer, segment_widget, halo_image):
    """The embedded default model: a box on a core in a halo; a positive click on the missed halo grows the
    mask (keeping what it had), a negative click on the halo's lower edge shrinks it (removing only); Ctrl+Z
    restores each previous mask; the clicks layer says which object and slice each click is of."""
    from napari_imedsam import load_model

    viewer = make_napari_viewer()
    viewer.add_image(halo_image(), name="scan")
    w = segment_widget(viewer, load_model("litemedsam"))
    sess = draw(w, rect(25.0, 35.0, 94.0, 104.0))
    first = np.asarray(sess.labels.data) == 1
    assert first.sum() > 2000
    click(w, 60, 98)  # the halo, right of the mask: object
    grown = np.asarray(sess.labels.data) == 1
    assert grown.sum() > 1.05 * first.sum() and (grown & first).sum() == first.sum()
    w.clicks.set_negative(True)
    assert w.ui.negative.isChecked()
    click(w, 88, 70)  # the halo's lower edge: background
    shrunk = np.asarray(sess.labels.data) == 1
    assert shrunk.sum() < grown.sum() and not (shrunk & ~grown).any()
    click(w, 27, 37)  # a box corner, already background: nothing to remove, and the user is told so
    np.testing.assert_array_equal(np.asarray(sess.labels.data) == 1, shrunk)
    assert any("changed nothing" in m for m in w.notifier.messages("info"))
    feats = sess.clicks.features
    assert list(feats["label"]) == [1, 1, 1] and list(feats["positive"]) == [True, False, False]
    assert list(feats["slice"]) == [0, 0, 0]
    obj = sess.store.on_slice(None)[-1]
    assert obj.clicks == ((98.5, 60.5, 1), (70.5, 88.5, 0), (37.5, 27.5, 0)) and obj.box_prompt and obj.label == 1
    w.clicks.toggle_negative()
    assert not w.ui.negative.isChecked()
    w.undo()
    np.testing.assert_array_equal(np.asarray(sess.labels.data) == 1, shrunk)
    w.undo()
    np.testing.assert_array_equal(np.asarray(sess.labels.data) == 1, grown)
    # an undone click leaves the clicks layer (without re-segmenting), a redone one comes back
    assert list(sess.clicks.features["positive"]) == [True]
    np.testing.assert_allclose(sess.clicks.data, [[60, 98]])
    w.redo()
    np.testing.assert_array_equal(np.asarray(sess.labels.data) == 1, shrunk)
    assert list(sess.clicks.features["positive"]) == [True, False]
    np.testing.assert_allclose(sess.clicks.data, [[60, 98], [88, 70]])
    w.undo()
    w.undo()
    np.testing.assert_array_equal(np.asarray(sess.labels.data) == 1, first)
    assert len(sess.clicks.data) == 0 and w.wait_idle(60)
    np.testing.assert_array_equal(np.asarray(sess.labels.data) == 1, first)  # nothing was re-segmented
    click(w, 60, 98)  # after undo the restored object is current: the click refines it, not a new object
    obj = sess.store.on_slice(None)[-1]
    assert obj.label == 1 and obj.box_prompt and obj.clicks == ((98.5, 60.5, 1),)
    np.testing.assert_array_equal(np.asarray(sess.labels.data) == 1, grown)
    assert len(sess.clicks.data) == 1


def test_a_click_without_an_object_starts_one_and_clear_removes_its_clicks(make_napari_viewer, segment_widget,
                                                                          disk_image):
    viewer = make_napari_viewer()
    viewer.add_image(disk_image((128, 160), centre=(60, 70), radius=30), name="scan")
    w = segment_widget(viewer)  # tiny model
    sess = click(w, 60, 70)  # no box yet: the click alone starts object 1
    obj = sess.store.on_slice(None)[-1]
    assert not obj.box_prompt and obj.clicks == ((70.5, 60.5, 1),) and obj.label == 1
    assert list(sess.clicks.features["label"]) == [1]
    w.objects.next_object()
    click(w, 20, 20)  # after "new object": another object, not a click of the first
    assert sess.store.on_slice(None)[-1].label == 2
    w.clear_object()
    assert list(sess.clicks.features["label"]) == [1]  # object 2's click went with it


def test_interpolation_fills_between_annotated_slices_as_one_undo_step(make_napari_viewer, litemedsam,
                                                                       segment_widget):
    viewer = make_napari_viewer()
    vol, inside = blob_volume()  # the blob spans slices 3-8
    viewer.add_image(vol, name="vol")
    w = segment_widget(viewer, litemedsam)
    w.ui.auto_increment.setChecked(False)  # both boxes are the same object (label 1)
    for z in (3, 8):
        viewer.dims.set_current_step(0, z)
        ys, xs = np.nonzero(inside[z])
        sess = draw(w, rect(ys.min() - 2.5, xs.min() - 2.5, ys.max() + 2.5, xs.max() + 2.5, z=z))
    before = np.array(sess.labels.data, copy=True)
    assert set(np.nonzero(before.any(axis=(1, 2)))[0]) == {3, 8}
    w.ui.interpolate.click()
    assert w.wait_idle(120)
    labels = np.asarray(sess.labels.data)
    filled = set(np.nonzero(labels.any(axis=(1, 2)))[0])
    assert filled == set(range(3, 9)), (filled, w.notifier.log)  # the slices between and nothing else
    for z in range(4, 8):
        iou = ((labels[z] == 1) & inside[z]).sum() / ((labels[z] == 1) | inside[z]).sum()
        assert iou > 0.5, (z, iou)
    w.undo()  # one step undoes the whole interpolation
    np.testing.assert_array_equal(np.asarray(sess.labels.data), before)


def test_a_marked_extent_outside_the_current_slice_is_refused(make_napari_viewer, litemedsam, segment_widget):
    viewer = make_napari_viewer()
    vol, inside = blob_volume()
    viewer.add_image(vol, name="vol")
    w = segment_widget(viewer, litemedsam)
    viewer.dims.set_current_step(0, 5)
    ys, xs = np.nonzero(inside[5])
    sess = draw(w, rect(ys.min() - 2.5, xs.min() - 2.5, ys.max() + 2.5, xs.max() + 2.5, z=5))
    w.ui.prop_start.setValue(7)
    w.propagate("both")
    assert w.wait_idle(60)
    assert set(np.nonzero(np.asarray(sess.labels.data).any(axis=(1, 2)))[0]) == {5}
    assert any("outside the marked extent" in str(m) for m in w.notifier.log)
    w.ui.prop_start.setValue(3)
    w.ui.prop_end.setValue(8)
    w.propagate("both")
    assert w.wait_idle(120)
    done = set(np.nonzero(np.asarray(sess.labels.data).any(axis=(1, 2)))[0])
    assert done <= set(range(3, 9)) and {4, 6} <= done  # filled towards the marked ends, never past them


def test_undo_and_redo_of_a_click_on_a_volume_slice_keep_the_clicks_layer_in_step(make_napari_viewer,
                                                                                  segment_widget, disk_image):
    """A click on slice 3 of an anisotropic volume: undo takes its point off the clicks layer, redo puts it
    back where it was (slice 3, same pixel), with its object's features."""
    viewer = make_napari_viewer()
    vol = np.stack([disk_image((96, 112), centre=(50, 60), radius=20)] * 6)
    viewer.add_image(vol, name="stack", scale=(5.0, 1.0, 1.0))
    w = segment_widget(viewer)  # tiny model
    viewer.dims.set_current_step(0, 3)
    sess = w.session()
    sess.clicks.add(np.array([[3, 50, 60]], dtype=float))
    assert w.wait_idle(60), "workers did not finish"
    obj = sess.store.on_slice(3)[-1]
    assert obj.clicks == ((60.5, 50.5, 1),) and (np.asarray(sess.labels.data)[3] == obj.label).any()
    w.undo()
    assert len(sess.clicks.data) == 0 and not (np.asarray(sess.labels.data)[3] == obj.label).any()
    w.redo()
    np.testing.assert_allclose(sess.clicks.data, [[3, 50, 60]])
    assert list(sess.clicks.features["label"]) == [obj.label] and list(sess.clicks.features["slice"]) == [3]
    assert w.wait_idle(60) and len(sess.store.on_slice(3)) == 1  # the redo re-segmented nothing
