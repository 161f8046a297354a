"""Project folder (pairs, manifest, versions): no viewer, no torch."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from napari_imedsam.finetune.project import (
    MANIFEST,
    Project,
    ProjectError,
    default_project_dir,
    safetensors_metadata,
)


def _slice(seed: int = 0, ids=(1, 2)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 20, (48, 64)).astype(np.float32)
    labels = np.zeros((48, 64), np.uint8)
    for k, i in enumerate(ids):
        labels[5 + 15 * k : 15 + 15 * k, 10 + k : 30 + k] = i
    return image, labels


def _fake_safetensors(path, meta: dict) -> None:
    header = json.dumps({"__metadata__": meta}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def test_add_slice_makes_one_pair_per_object_and_persists(tmp_path):
    project = Project(tmp_path / "p")
    image, labels = _slice()
    report = project.add_slice(image, labels, "CT", "Labels", (7,), window=(-125, 275))
    assert len(report.added) == 2 and not report.updated
    pairs = project.pairs
    assert [p.label_id for p in pairs] == [1, 2]
    p = pairs[0]
    assert p.box == (10.0, 5.0, 30.0, 15.0) and p.area == 200 and p.slice == (7,)
    img, mask = project.load_pair(p)
    np.testing.assert_array_equal(img, image)
    np.testing.assert_array_equal(mask, labels == 1)
    assert pairs[0].image_file == pairs[1].image_file  # one image file per slice
    assert "2 pairs: CT / Labels, slices 7" == project.summary()
    # reopened: same pairs
    again = Project(tmp_path / "p", create=False)
    assert [q.to_json() for q in again.pairs] == [q.to_json() for q in pairs]
    assert again.problems == []


def test_re_adding_a_slice_updates_and_removes(tmp_path):
    project = Project(tmp_path)
    image, labels = _slice()
    project.add_slice(image, labels, "CT", "Labels", (3,))
    first = {p.label_id: p.id for p in project.pairs}
    labels2 = labels.copy()
    labels2[labels2 == 2] = 0
    labels2[30:40, 40:50] = 5
    report = project.add_slice(image, labels2, "CT", "Labels", (3,))
    assert [p.label_id for p in report.updated] == [1] and [p.label_id for p in report.added] == [5]
    assert [p.label_id for p in report.removed] == [2]
    assert {p.label_id for p in project.pairs} == {1, 5}
    assert project.pairs[0].id == first[1]
    assert len(list((tmp_path / "pairs").glob("*.npz"))) == 2
    project.add_slice(image + 1, labels2, "CT", "Labels", (4,))
    assert project.summary() == "4 pairs: CT / Labels, slices 3-4"
    assert project.remove_pairs([p.id for p in project.pairs if p.slice == (3,)]) == 2
    assert len(list((tmp_path / "images").glob("*.npz"))) == 1  # unused image removed


def test_bad_input_is_a_clear_error_and_leaves_the_folder_consistent(tmp_path):
    project = Project(tmp_path)
    image, labels = _slice()
    with pytest.raises(ProjectError, match="No objects on slice"):
        project.add_slice(image, np.zeros_like(labels), "CT", "Labels", (2,))
    with pytest.raises(ProjectError, match="must cover the same pixels"):
        project.add_slice(image, labels[:40], "CT", "Labels", (2,))
    with pytest.raises(ProjectError, match="not integer ids"):
        project.add_slice(image, labels.astype(np.float32), "CT", "Labels", (2,))
    assert project.pairs == [] and Project(tmp_path).problems == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ProjectError, match="not writable"):
            Project(folder)
    finally:
        folder.chmod(0o700)


def test_unwritable_folder_reported(tmp_path, monkeypatch):
    import napari_imedsam.finetune.project as project_module

    def refuse(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(project_module.tempfile, "mkstemp", refuse)
    with pytest.raises(ProjectError, match="not writable.*Permission denied"):
        Project(tmp_path)


def test_unwritable_folder_via_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProjectError, match="is a file"):
        Project(tmp_path / "file")
    with pytest.raises(ProjectError, match="Cannot create"):
        Project(tmp_path / "file" / "sub")


def test_manifest_is_rebuilt_from_files(tmp_path):
    project = Project(tmp_path)
    image, labels = _slice()
    project.add_slice(image, labels, "CT", "Labels", (1,))
    project.add_slice(image * 2, labels, "CT", "Labels", (2,))
    ids = sorted(p.id for p in project.pairs)
    (tmp_path / MANIFEST).write_text("{ truncated")
    (tmp_path / "pairs" / ".x.npz.123.tmp").write_bytes(b"half")  # interrupted write
    again = Project(tmp_path)
    assert sorted(p.id for p in again.pairs) == ids
    assert any("rebuilt" in msg for msg in again.problems)
    assert not list((tmp_path / "pairs").glob(".*.tmp"))
    # a pair file deleted behind our back is dropped; a junk file is reported, not fatal
    (tmp_path / again.pairs[0].file).unlink()
    (tmp_path / "pairs" / "junk.npz").write_bytes(b"not a zip")
    third = Project(tmp_path)
    assert len(third.pairs) == 3
    assert any("lost its file" in m for m in third.problems)
    assert any("junk.npz" in m for m in third.problems)
    assert len(json.loads((tmp_path / MANIFEST).read_text())["pairs"]) == 3


def test_versions_record_activate_import_and_recover(tmp_path):
    project = Project(tmp_path / "p")
    path = project.new_version_path()
    assert path.name == "v001.safetensors"
    _fake_safetensors(path, {"kind": "trained", "dice_after": "0.8", "pairs": "4", "parts": '["inr"]'})
    v1 = project.record_version(path, activate=True, kind="trained", dice_before=0.5, dice_after=0.8, pairs=4,
                                parts=("inr",), backbone="tiny")
    assert project.active == v1 and v1.parts == ("inr",)
    other = tmp_path / "elsewhere.safetensors"
    _fake_safetensors(other, {"backbone": "tiny", "dice_after": "0.7"})
    v2 = project.import_adapters(other)
    assert v2.version == 2 and v2.kind == "imported" and v2.dice_after == 0.7
    assert project.active.version == 1
    project.set_active(2)
    with pytest.raises(ProjectError, match="no adapters v9"):
        project.set_active(9)
    assert Project(tmp_path / "p").active.version == 2
    # a version file written but not recorded (crash) is recovered from its metadata
    path3 = project.new_version_path()
    _fake_safetensors(path3, {"kind": "trained", "dice_after": "0.9", "pairs": "6"})
    again = Project(tmp_path / "p")
    assert [v.version for v in again.versions] == [1, 2, 3] and again.version(3).dice_after == 0.9
    # the active file deleted: none active, said so
    (tmp_path / "p" / "adapters" / "v002.safetensors").unlink()
    third = Project(tmp_path / "p")
    assert third.active is None and any("missing" in m for m in third.problems)
    with pytest.raises(ProjectError, match="Cannot read adapters"):
        project.import_adapters(tmp_path / "nope.safetensors")


def test_helpers(tmp_path):
    meta = tmp_path / "a.safetensors"
    _fake_safetensors(meta, {"x": "1"})
    assert safetensors_metadata(meta) == {"x": "1"}
    img = tmp_path / "scan.nii.gz"
    img.write_text("")
    assert default_project_dir("CT", img) == tmp_path / "scan_imedsam"
    assert default_project_dir("my CT/1", None).name == "my_CT_1"
    p = Project(tmp_path / "t")
    p.set_seconds_per_step("tiny|cpu", 0.25)
    assert Project(tmp_path / "t").seconds_per_step("tiny|cpu") == 0.25


def test_rgb_slices_and_2d(tmp_path):
    project = Project(tmp_path)
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    labels = np.zeros((32, 32), np.int32)
    labels[4:20, 4:20] = 3
    project.add_slice(rgb, labels, "photo", "Labels")
    (pair,) = project.pairs
    assert pair.slice == () and pair.window is None
    image, mask = project.load_pair(pair)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3) and mask.sum() == 256
    assert project.summary() == "1 pair: photo / Labels, 2-D"


def test_empty_mask_is_refused(tmp_path):
    project = Project(tmp_path)
    with pytest.raises(ProjectError, match="empty"):
        project._write_pair(np.zeros((8, 8), bool), "CT", "Labels", (0,), 1, None, "images/x.npz", None)
    assert project.pairs == []


# ---- the fine-tuning glue that needs no model -------------------------------------------------------------
def test_held_out_split_is_by_slice_and_stable(tmp_path):
    from napari_imedsam.finetune.settings import split_held_out

    project = Project(tmp_path)
    for z in range(10):
        image, labels = _slice(z, ids=(1, 2))
        project.add_slice(image, labels, "CT", "Labels", (z,))
    train, held, rule = split_held_out(project.pairs, 0.2)
    assert rule == "slices"
    assert len(held) == 4 and len(train) == 16  # 2 of 10 slices, both objects of each
    assert not {p.case_id for p in train} & {p.case_id for p in held}
    # adding slices later keeps most old held-out slices held out (hash order, not position)
    image, labels = _slice(99)
    project.add_slice(image, labels, "CT", "Labels", (10,))
    _, held2, _ = split_held_out(project.pairs, 0.2)
    assert {p.case_id for p in held} & {p.case_id for p in held2}
    # one slice only: objects are held out instead (and said so); one object: nothing can be held out
    one = [p for p in project.pairs if p.slice == (0,)]
    train1, held1, rule1 = split_held_out(one, 0.5)
    assert rule1 == "objects" and len(train1) == 1 and len(held1) == 1
    assert {p.label_id for p in train1} | {p.label_id for p in held1} == {1, 2}
    assert split_held_out(one, 0.5, encoder_trains=True)[2] == "objects-encoder"
    assert split_held_out(one[:1], 0.5) == (one[:1], [], "none")
    assert len(split_held_out(project.pairs, 0.99)[0]) == 2  # at least one slice stays for training


def test_settings_are_checked():
    from napari_imedsam.finetune.settings import FinetuneError, FinetuneSettings

    cases = ((dict(steps=-1), "at least one"), (dict(lr=0.0), "learning rate"), (dict(parts=()), "at least one part"),
             (dict(parts=("lora", "x")), "Unknown parts"), (dict(held_out=1.0), "held-out"))
    for bad, msg in cases:
        with pytest.raises(FinetuneError, match=msg):
            FinetuneSettings(**bad).check()
    FinetuneSettings().check()
