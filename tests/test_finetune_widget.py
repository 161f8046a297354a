"""The Fine-tune (I-MedSAM) dock widget in a real napari viewer (Qt + Xvfb), on the tiny model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

# ---- helpers ---------------------------------------------------------------------------------------------
def ellipse_volume(n: int = 10, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A stack of noisy slices, each with one bright ellipse (label 1) and a dimmer distractor."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(40, 12, (n, size, size)).astype(np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for z in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        ry, rx = rng.uniform(0.12, 0.22, 2) * size
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        image[z][inside] += 150
        labels[z][inside] = 1
    return image, labels


@pytest.fixture
def scene(make_napari_viewer, tmp_path, segment_widget, finetune_widget):
    """``scene(n=10, segment=True)``: a viewer with the volume, its corrected labels, a Segment widget (tiny
    model) and the Fine-tune widget."""

    def build(n: int = 10, segment: bool = True):
        viewer = make_napari_viewer()  # first: the plugin's triton guard checks what the viewer loaded
        image, labels = ellipse_volume(n)
        viewer.add_image(image, name="scan")
        viewer.add_labels(labels, name="truth")
        seg = segment_widget(viewer, adapters=False) if segment else None
        w = finetune_widget(viewer, projects_root=tmp_path / "projects")
        w.ui.image.setCurrentText("scan")
        w.ui.labels.setCurrentText("truth")
        return viewer, seg, w

    return build


def fast(w, steps: int, **advanced) -> None:
    """Small, quick runs for the 2-core test machine: decoder + INR, few query points, every step run."""
    w.ui.steps.setValue(steps)
    w.ui.lr.setValue(2e-2)
    w.ui.batch.setValue(4)
    w.ui.held_out.setValue(0.2)
    for part, box in w.ui.part_boxes.items():
        box.setChecked(part in ("decoder", "inr"))
    w.advanced = {"points": 256, "patience": 0, **advanced}


def messages(w, level=None) -> str:
    return " | ".join(w.notifier.messages(level))


def folder_consistent(folder: Path) -> object:
    """Reopening finds nothing to repair and every listed file exists."""
    from napari_imedsam.finetune.project import Project

    project = Project(folder)
    assert project.problems == [], project.problems
    assert not list(folder.glob("**/.*.tmp"))
    for v in project.versions:
        assert project.path_of(v).is_file()
    return project


def adapters_equal(a, b) -> bool:
    sa, sb = a.adapter_state_dict(), b.adapter_state_dict()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k].cpu().numpy(), sb[k].cpu().numpy()) for k in sa)


# ---- 1 + 3: fine-tuning helps, the result is handed over and saved exactly ------------------------------------
@pytest.mark.slow
def test_finetune_improves_heldout_dice_and_hands_over(tmp_path, scene):
    from qtpy.QtCore import QTimer

    from napari_imedsam import Predictor, load_model
    from napari_imedsam.finetune.settings import split_held_out

    viewer, seg, w = scene()
    w.open_project(tmp_path / "proj")
    assert w.add_all_slices() == 10
    assert w.ui.pair_list.count() == 10 and "10 pairs: scan / truth, slices 0-9" in w.ui.pairs.text()
    start_model = seg.current_model()
    fast(w, steps=60)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(50)
    assert w.start_training()
    assert w.wait_idle(600), "fine-tuning did not finish"
    timer.stop()
    out = w.last_outcome
    assert out is not None, messages(w)
    # the GUI stayed responsive: the timer kept firing (no gap over 2 s) while the worker trained
    assert len(ticks) > 20 and max(np.diff(ticks)) < 2.0
    # held-out Dice rose by a clear margin and the widget says so
    assert out.status == "improved", out.message
    assert out.dice_after - out.dice_before > 0.15, (out.dice_before, out.dice_after)
    assert f"{out.dice_after:.3f}" in w.ui.result.text()
    assert w.ui.plot.losses and len(w.ui.plot.dice) >= 2 and w.ui.progress.value() == 60
    # the new adapters are active in the Segment widget, the old model is untouched
    assert seg.current_model() is out.model and not adapters_equal(start_model, out.model)
    project = folder_consistent(tmp_path / "proj")
    assert project.active == out.version and project.active.dice_after == pytest.approx(out.dice_after, abs=1e-4)
    # the saved file reproduces the widget's predictions exactly, in a fresh Predictor
    _, held, _ = split_held_out(project.pairs, 0.2)
    z, box = held[0].slice[0], held[0].box
    image = viewer.layers["scan"].data[z]
    seg.predictor.set_image(image, window=seg.current_window())
    expected = seg.predictor.predict(box)
    fresh = Predictor(load_model("tiny", adapters=project.path_of(out.version)), device="cpu")
    fresh.set_image(image, window=seg.current_window())
    np.testing.assert_array_equal(fresh.predict(box), expected)
    shot = tmp_path / "finetune_widget.png"  # the docs picture comes from `imedsam-demo --screenshot docs`
    assert w.ui.scroll.widget().grab().save(str(shot)) and shot.stat().st_size > 0


# ---- 2: Stop ends the run quickly and keeps the best adapters ---------------------------------------------
@pytest.mark.slow
def test_stop_ends_quickly_and_keeps_best(tmp_path, qtbot, scene):
    from napari_imedsam.model.adapters import read_adapter_file

    viewer, seg, w = scene(n=6)
    w.open_project(tmp_path / "proj")
    w.add_all_slices()
    fast(w, steps=100000, val_every=2)
    assert w.start_training()
    qtbot.waitUntil(lambda: len(w.ui.plot.dice) >= 3, timeout=120000)  # before + two validations
    assert not w.start_training() and "already running" in messages(w, "warning")
    t0 = time.monotonic()
    w.stop_training()
    assert w.wait_idle(5.0), "Stop took more than 5 s"
    assert time.monotonic() - t0 < 5.0
    out = w.last_outcome
    assert out.stopped and out.version is not None and 0 < out.steps_done < 100000
    best = max(d for s, d in w.ui.plot.dice if s > 0)
    assert out.dice_after == pytest.approx(best)
    tensors, meta = read_adapter_file(folder_consistent(tmp_path / "proj").path_of(out.version))
    assert float(meta["dice_after"]) == pytest.approx(best, abs=1e-4)
    state = out.model.adapter_state_dict()
    assert all(np.array_equal(tensors[k].numpy(), state[k].cpu().numpy()) for k in tensors)
    assert w.ui.start.isEnabled() and not w.ui.stop.isEnabled()


# ---- 4: collected pairs survive closing the viewer ----------------------------------------------------------
def test_pairs_survive_closing_the_viewer(tmp_path, scene):
    viewer, _, w = scene(n=4, segment=False)
    viewer.dims.set_current_step(0, 2)
    assert w.add_current_slice() == 1  # no project chosen: the default one is made
    folder = w.project.root
    assert folder == tmp_path / "projects" / "scan"
    viewer.layers["truth"].data[3, 5:9, 5:9] = 2
    assert w.add_all_slices() == 5
    listed = [w.ui.pair_list.item(i).text() for i in range(w.ui.pair_list.count())]
    assert len(listed) == 5
    viewer.close()
    viewer2, _, w2 = scene(n=4, segment=False)
    w2.open_project(folder)
    assert [w2.ui.pair_list.item(i).text() for i in range(w2.ui.pair_list.count())] == listed
    assert "5 pairs: scan / truth, slices 0-3" in w2.ui.pairs.text()


# ---- 5: bad input and faults: a message each, never a traceback, folder consistent ---------------------------
def test_bad_input_messages(tmp_path, monkeypatch, scene):
    viewer, seg, w = scene(n=4)
    assert not w.start_training()
    assert "No training pairs yet" in messages(w, "warning")
    # an empty slice
    viewer.layers["truth"].data[1] = 0
    viewer.dims.set_current_step(0, 1)
    w.open_project(tmp_path / "proj")
    assert w.add_current_slice() == 0 and "No objects on slice [1]" in messages(w, "warning")
    # labels of another shape than the image
    viewer.add_labels(np.zeros((4, 32, 32), np.uint8), name="small")
    w.ui.labels.setCurrentText("small")
    assert w.add_current_slice() == 0 and "must match pixel for pixel" in messages(w, "warning")
    w.ui.labels.setCurrentText("truth")
    assert w.add_all_slices() == 3
    folder_consistent(tmp_path / "proj")
    # a project folder that cannot be used
    (tmp_path / "a_file").write_text("x")
    assert w.open_project(tmp_path / "a_file" / "proj") is None and "Cannot create" in messages(w, "error")
    import napari_imedsam.finetune.project as project_module

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(project_module.tempfile, "mkstemp", refuse)
    assert w.open_project(tmp_path / "other") is None and "not writable" in messages(w, "error")
    monkeypatch.undo()
    assert w.project.root == tmp_path / "proj"  # the open project stays
    # NaN loss: stop, keep the previous adapters, say so
    import src_training.trainer as trainer

    real_loss = trainer.training_loss

    def nan_loss(*args, **kwargs):
        loss, parts = real_loss(*args, **kwargs)
        return loss * float("nan"), parts

    monkeypatch.setattr(trainer, "training_loss", nan_loss)
    before = seg.current_model()
    fast(w, steps=5)
    assert w.start_training() and w.wait_idle(120)
    assert w.last_outcome.status == "nan" and "NaN" in messages(w, "error")
    assert seg.current_model() is before
    project = folder_consistent(tmp_path / "proj")
    assert [v.kind for v in project.versions] == ["start"] and project.active.kind == "start"
    assert len(project.pairs) == 3
    # every held out: a clear message
    monkeypatch.undo()
    w.ui.held_out.setValue(0.9)
    w.project.remove_pairs([p.id for p in w.project.pairs][1:])
    assert w.start_training() is True and w.wait_idle(120)  # one slice only: nothing can be held out
    assert w.last_outcome.status == "unchecked"


def test_viewer_closed_during_training_stops_worker(tmp_path, qtbot, scene):
    viewer, _, w = scene(n=4)
    w.open_project(tmp_path / "proj")
    w.add_all_slices()
    fast(w, steps=100000, val_every=1)
    assert w.start_training()
    run = w._run
    qtbot.waitUntil(lambda: w.ui.progress.value() >= 1, timeout=60000)
    viewer.close()
    assert run.done.wait(10), "the worker did not stop when the viewer closed"
    project = folder_consistent(tmp_path / "proj")
    assert len(project.pairs) == 4
    assert all(v.kind in ("start", "trained") for v in project.versions)


# ---- adapters trained elsewhere, revert, mismatch -------------------------------------------------------------
def test_load_adapters_and_revert(tmp_path, scene):
    import copy

    import torch

    from napari_imedsam import load_model
    from napari_imedsam.model.adapters import save_adapters

    viewer, seg, w = scene(n=2)
    w.open_project(tmp_path / "proj")
    original = seg.current_model()
    other = copy.deepcopy(original)
    with torch.no_grad():
        for _, p in other.named_part_parameters()["inr"]:
            p.add_(0.01)
    save_adapters(other, tmp_path / "from_gpu.safetensors", extra={"dice_after": 0.9})
    assert w.load_adapters_file(tmp_path / "from_gpu.safetensors")
    assert adapters_equal(seg.current_model(), other)
    v = w.project.active
    assert v.kind == "imported" and v.dice_after == 0.9 and "[active]" in w.ui.versions.currentText()
    # an adapters file made for another configuration is refused, naming both
    mismatched = load_model("tiny", adapters=None, lora_rank=8)
    save_adapters(mismatched, tmp_path / "rank8.safetensors")
    assert not w.load_adapters_file(tmp_path / "rank8.safetensors")
    assert "lora_rank" in messages(w, "error") and adapters_equal(seg.current_model(), other)
    # revert to the original adapters, saved as the start version of a (stopped) run
    path = w.project.new_version_path()
    save_adapters(original, path)
    start = w.project.record_version(path, kind="start")
    assert w.activate_version(start.version)
    assert adapters_equal(seg.current_model(), original)
    assert w.project.active.version == start.version
    folder_consistent(tmp_path / "proj")


def test_worse_result_keeps_previous_adapters_until_chosen(tmp_path, monkeypatch, scene):
    import torch

    import src_training.trainer as trainer

    def worse_fit(model, train, val, config, callbacks=None, **_kw):
        with torch.no_grad():
            for _, p in model.named_part_parameters()["inr"]:
                p.add_(0.05)
        callbacks.on_step(1, config.steps, 0.5, {})
        return trainer.FitResult(0.0, 1, 1, False, [], {}, None)

    monkeypatch.setattr(trainer, "fit", worse_fit)
    viewer, seg, w = scene(n=5)
    w.open_project(tmp_path / "proj")
    w.add_all_slices()
    before = seg.current_model()
    fast(w, steps=3)
    assert w.start_training() and w.wait_idle(60)
    out = w.last_outcome
    assert out.status == "worse" and "did not help" in messages(w, "warning")
    assert "not better" in w.ui.result.text()
    assert seg.current_model() is before and w.project.active.kind == "start"
    assert w.activate_version(out.version.version)  # the user chooses it anyway
    assert adapters_equal(seg.current_model(), out.model) and w.project.active == out.version


def test_without_segment_widget_loads_its_own_model(tmp_path, monkeypatch, qtbot, scene):
    from napari_imedsam import load_model
    from napari_imedsam.engine import model_loading

    monkeypatch.setattr(model_loading, "load", lambda *_a, **_k: model_loading.LoadedModel(
        load_model("tiny", adapters=None), "cpu", "tiny"))
    viewer, _, w = scene(n=3, segment=False)
    w.open_project(tmp_path / "proj")
    w.add_all_slices()
    fast(w, steps=2)
    assert not w.start_training()  # loads a model first, then starts by itself
    assert "loading LiteMedSAM" in messages(w, "info")
    qtbot.waitUntil(lambda: w.last_outcome is not None, timeout=120000)
    assert w.wait_idle(60)
    assert w.last_outcome.version is not None


def test_opens_from_manifest_and_defaults_beside_the_image(make_napari_viewer, tmp_path):
    from napari.layers._source import layer_source

    viewer = make_napari_viewer()
    image, labels = ellipse_volume(2)
    scan = tmp_path / "data" / "scan.tif"
    scan.parent.mkdir()
    scan.write_bytes(b"")
    with layer_source(path=str(scan)):
        viewer.add_image(image, name="scan")
    viewer.add_labels(labels, name="truth")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-imedsam", "Fine-tune (I-MedSAM)")
    assert type(w).__name__ == "FinetuneWidget" and w.segment_widget() is None
    w.ui.labels.setCurrentText("truth")
    assert w.add_current_slice() == 1
    assert w.project.root == tmp_path / "data" / "scan_imedsam"
    assert (w.project.root / "project.json").is_file()


# ---- after a run: the objects the user did not correct are re-segmented with the new adapters -------------
def test_resegment_redoes_only_the_uncorrected_objects(tmp_path, qtbot, scene):
    viewer, seg, w = scene(n=4)
    image = viewer.layers["scan"]
    seg.select_image(image)
    viewer.dims.set_current_step(0, 1)
    sess = seg.session()
    # two boxes on slice 1 (labels 1 and 2 of the masks layer); the user corrects label 1 only
    sess.boxes.add_rectangles([np.array([[1, 5.5, 5.5], [1, 5.5, 30.5], [1, 30.5, 30.5], [1, 30.5, 5.5]]),
                               np.array([[1, 34.5, 34.5], [1, 34.5, 60.5], [1, 60.5, 60.5], [1, 60.5, 34.5]])])
    assert seg.wait_idle(60)
    assert [o.label for o in sess.store.objects] == [1, 2]
    masks = sess.labels
    masks.data[1][masks.data[1] == 1] = 0
    masks.data[1][viewer.layers["truth"].data[1] == 1] = 1  # the correction: the true ellipse
    corrected = masks.data[1] == 1
    w.ui.labels.setCurrentText(masks.name)
    w.open_project(tmp_path / "proj")
    assert w.add_current_slice() == 2  # both object ids on the slice became pairs ...
    w.project.remove_pairs([p.id for p in w.project.pairs if p.label_id == 2])  # ... the user keeps label 1
    w._refresh_project()
    fast(w, steps=3)
    w.ui.held_out.setValue(0.0)
    assert not w.ui.resegment.isEnabled()
    assert w.start_training() and w.wait_idle(300)
    assert w.last_outcome.activate and w.ui.resegment.isEnabled()
    before = masks.data[1].copy()
    from qtpy.QtCore import Qt

    qtbot.mouseClick(w.ui.resegment, Qt.LeftButton)
    assert seg.wait_idle(60)
    np.testing.assert_array_equal(masks.data[1] == 1, corrected)  # the corrected object is left alone
    assert [o.label for o in sess.store.objects] == [1, 2] and len(sess.store.objects) == 2
    assert "Re-segmenting 1 object" in messages(w, "info")
    # label 2 was segmented again with the new adapters: its pixels may differ, nothing else did
    changed = before != masks.data[1]
    assert not (changed & ~((before == 2) | (masks.data[1] == 2))).any()
    seg.undo()  # one undo step restores the old mask of label 2
    np.testing.assert_array_equal(masks.data[1], before)


def test_layers_are_chosen_by_reference(scene):
    viewer, _, w = scene(n=2, segment=False)
    viewer.add_labels(np.zeros((2, 64, 64), np.uint8), name="other")
    viewer.layers["truth"].name = "corrected"  # renaming the chosen layer keeps it chosen
    assert w.ui.labels.currentText() == "corrected" and w.ui.labels.currentData() is viewer.layers["corrected"]
    viewer.dims.set_current_step(0, 1)
    assert w.add_current_slice() == 1
    assert [tuple(p.slice) for p in w.project.pairs] == [(1,)] and w.project.pairs[0].labels_layer == "corrected"
