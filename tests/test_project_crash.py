"""The project folder under crashes and concurrent writers: every change reopens as before or after, never a
mix; a second writer waits or is refused; nobody deletes another writer's files. No viewer, no torch."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from napari_imedsam.finetune.project import MANIFEST, Project, ProjectError

FILE_OPS = ("replace", "rename", "unlink", "fsync")  # every write ends in fsync + replace; every delete unlinks


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so no clean-up handler of the code under test runs."""


@contextlib.contextmanager
def killed_after(n: int, monkeypatch):
    """Let ``n`` file operations happen, then make this and every later one fail, as a dead process would."""
    state = {"done": 0, "dead": False}

    def wrap(fn):
        def op(*args, **kwargs):
            if state["dead"] or state["done"] >= n:
                state["dead"] = True
                raise Killed(f"killed after {n} file operations")
            state["done"] += 1
            return fn(*args, **kwargs)

        return op

    with monkeypatch.context() as m:
        for name in FILE_OPS:
            m.setattr(os, name, wrap(getattr(os, name)))
        yield state


def _slice(seed: int, ids, shape=(24, 32)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 20, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for k, i in enumerate(ids):
        labels[2 + 5 * k : 6 + 5 * k, 3 + 2 * i : 12 + 2 * i] = i
    return image, labels


def _fake_adapters(path, meta: dict) -> None:
    header = json.dumps({"__metadata__": {k: str(v) for k, v in meta.items()}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes() + str(a.shape).encode()).hexdigest()[:12]


def state_of(folder) -> tuple:
    """What a user sees on reopening: every pair with its mask and image, the versions, the active one."""
    project = Project(folder)
    pairs = []
    for p in project.pairs:
        image, mask = project.load_pair(p)
        pairs.append((p.image_layer, p.labels_layer, p.slice, p.label_id, p.window, _digest(mask), _digest(image)))
    versions = tuple((v.version, v.file) for v in project.versions)
    return tuple(sorted(pairs)), versions, project.active.version if project.active else None


def _base(folder) -> Project:
    project = Project(folder)
    project.add_slice(*_slice(0, (2,)), "CT", "Labels", (3,), window=(-100, 200))
    project.add_slice(*_slice(1, (1, 2)), "CT", "Labels", (4,))
    for n in (1, 2):
        path = project.new_version_path()
        _fake_adapters(path, {"kind": "trained", "dice_after": 0.5 + n / 10})
        project.record_version(path, activate=n == 1, kind="trained", dice_after=0.5 + n / 10)
    path = project.new_version_path()  # written by a training run, not yet recorded
    _fake_adapters(path, {"kind": "trained", "dice_after": 0.9})
    return project


def _pair_ids(project, slice_index):
    return [p.id for p in project.pairs if p.slice == slice_index]


CHANGES = {
    # the example: old labels [2] -> new [1, 2, 3], on a new image of the same slice
    "add_slice_update": lambda p: p.add_slice(*_slice(7, (1, 2, 3)), "CT", "Labels", (3,), window=(-100, 200)),
    "add_slice_shrink": lambda p: p.add_slice(*_slice(1, (2,)), "CT", "Labels", (4,)),
    "add_slice_new": lambda p: p.add_slice(*_slice(9, (1, 4)), "CT", "Labels", (8,)),
    "remove_pairs": lambda p: p.remove_pairs(_pair_ids(p, (4,)) + _pair_ids(p, (3,))),
    "record_version": lambda p: p.record_version(p.root / "adapters" / "v003.safetensors", activate=True,
                                                 kind="trained", dice_after=0.9),
    "set_active": lambda p: p.set_active(2),
    "import_adapters": lambda p: p.import_adapters(p.root.parent / "outside.safetensors"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_crash_after_any_file_operation_reopens_as_before_or_after(tmp_path, monkeypatch, change):
    base = tmp_path / "base"
    _base(base)
    _fake_adapters(tmp_path / "outside.safetensors", {"kind": "trained", "backbone": "tiny", "dice_after": 0.7})
    before = state_of(shutil.copytree(base, tmp_path / "before"))
    after_dir = shutil.copytree(base, tmp_path / "after")
    CHANGES[change](Project(after_dir))
    after = state_of(after_dir)
    assert before != after
    seen = []
    for n in range(200):
        folder = shutil.copytree(base, tmp_path / f"kill{n}")
        project = Project(folder)
        with killed_after(n, monkeypatch) as counter:
            try:
                CHANGES[change](project)
            except Killed:
                pass
        reopened = state_of(folder)
        assert reopened in (before, after), f"{change} killed after {n} file operations left a mixed state"
        seen.append(reopened == after)
        if not counter["dead"]:
            break
    assert seen[-1] and not seen[0], "the change ran to the end and the first kill came before its commit"
    assert len(seen) >= 3  # at least: before any write, between the writes and the commit, after the commit
    leftovers = [f.name for f in (tmp_path / f"kill{len(seen) - 2}").rglob("*") if f.name.endswith(".tmp")]
    assert not leftovers  # reopening removed the half-written temp files


def test_uncommitted_pairs_are_discarded_and_said_so(tmp_path, monkeypatch):
    project = _base(tmp_path / "p")
    before = state_of(tmp_path / "p")
    with killed_after(4, monkeypatch):  # image + 1 pair written, the second pair not, no commit
        with pytest.raises(Killed):
            project.add_slice(*_slice(5, (1, 2)), "CT", "Labels", (9,))
    again = Project(tmp_path / "p")
    assert any("interrupted before it was saved" in m for m in again.problems)
    assert state_of(tmp_path / "p") == before
    assert len(list((tmp_path / "p" / "pairs").glob("*.npz"))) == 3


def test_two_project_objects_on_one_folder_keep_each_others_pairs(tmp_path):
    a, b = Project(tmp_path), Project(tmp_path)
    a.add_slice(*_slice(0, (1,)), "CT", "Labels", (0,))
    b.add_slice(*_slice(1, (1, 2)), "CT", "Labels", (1,))  # b first adopts a's pair, then adds its own
    a.add_slice(*_slice(2, (3,)), "CT", "Labels", (2,))
    b.remove_pairs([p.id for p in b.pairs if p.slice == (2,)])  # b sees a's newest pair and may remove it
    a.add_slice(*_slice(3, (1,)), "CT", "Labels", (3,))
    assert len(a.pairs) == len(b.pairs) == 4  # readers see the other writer's commits too
    reopened = Project(tmp_path)
    assert reopened.problems == [] and len(reopened.pairs) == 4
    for p in reopened.pairs:
        reopened.load_pair(p)  # every image the pairs use is still there
    assert len(list((tmp_path / "images").glob("*.npz"))) == 3


def test_concurrent_writers_in_threads_lose_nothing(tmp_path):
    errors = []

    def writer(k: int) -> None:
        try:
            project = Project(tmp_path)
            for z in range(6):
                project.add_slice(*_slice(10 * k + z, (1, 2)), "CT", f"Labels{k}", (z,))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    reopened = Project(tmp_path)
    assert len(reopened.pairs) == 36 and reopened.problems == []
    assert len(list((tmp_path / "pairs").glob("*.npz"))) == 36
    assert len(list((tmp_path / "images").glob("*.npz"))) == 18


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are fcntl's")
def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    project = Project(tmp_path, lock_timeout=0.3)
    project.add_slice(*_slice(0, (1,)), "CT", "Labels", (0,))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.ftruncate(fd, 0); os.write(fd, f'{os.getpid()} otherhost 2026-01-01T00:00:00'.encode())\n"
         "print('locked', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ProjectError, match=rf"being changed by process {holder.pid} on otherhost.*try again"):
            project.add_slice(*_slice(1, (1,)), "CT", "Labels", (1,))
        with pytest.raises(ProjectError, match="being changed"):
            Project(tmp_path, lock_timeout=0.1)
        with pytest.raises(ProjectError, match="being changed"):
            project.set_active(None)
    finally:
        holder.kill()
        holder.wait()
    project.add_slice(*_slice(1, (1,)), "CT", "Labels", (1,))  # the lock died with its holder
    assert len(Project(tmp_path).pairs) == 2


def test_version_numbers_are_reserved_between_writers(tmp_path):
    a, b = Project(tmp_path), Project(tmp_path)
    pa, pb = a.new_version_path(), b.new_version_path()  # two training runs at once
    assert pa != pb
    _fake_adapters(pb, {"kind": "trained"})
    _fake_adapters(pa, {"kind": "trained"})
    b.record_version(pb, kind="trained")
    a.record_version(pa, kind="trained", activate=True)
    reopened = Project(tmp_path)
    assert [v.version for v in reopened.versions] == [1, 2] and reopened.active.version == 1
    assert not list((tmp_path / "adapters").glob(".v*.reserved"))


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"a string"', '{"pairs": 5}', '{"active": [1]}', "{}", "7",
                                  '{"format": "napari-imedsam-project", "pairs": 5}',
                                  '{"format": "napari-imedsam-project", "pairs": [5]}',
                                  '{"format": "napari-imedsam-project", "active": [1]}',
                                  '{"format": "napari-imedsam-project", "versions": {"v": 1}}',
                                  '{"format": "napari-imedsam-project", "timing": []}'])
def test_a_manifest_of_the_wrong_shape_is_rebuilt_from_the_files(tmp_path, text):
    project = _base(tmp_path)
    expected = {(p.slice, p.label_id) for p in project.pairs}
    (tmp_path / MANIFEST).write_text(text)
    again = Project(tmp_path)
    assert {(p.slice, p.label_id) for p in again.pairs} == expected
    assert [v.version for v in again.versions] == [1, 2, 3]
    [message] = [m for m in again.problems if "unusable" in m]
    assert "rebuilt it from the pair and adapter files" in message and "broken-" in message
    [kept] = list(tmp_path.glob(f"{MANIFEST}.broken-*"))
    assert kept.read_text() == text and kept.name in message
    assert Project(tmp_path).problems == []  # repaired once, for good


def test_rebuilding_takes_each_slice_from_one_change(tmp_path, monkeypatch):
    project = _base(tmp_path)
    with killed_after(6, monkeypatch):  # the new image and two of three new pairs of slice 3 written
        with pytest.raises(Killed):
            project.add_slice(*_slice(7, (1, 2, 3)), "CT", "Labels", (3,), window=(-100, 200))
    (tmp_path / MANIFEST).write_text("{ truncated")  # and the manifest lost as well
    again = Project(tmp_path)
    by_slice = {}
    for p in again.pairs:
        by_slice.setdefault(p.slice, set()).add(p.txn)
    assert all(len(txns) == 1 for txns in by_slice.values())  # never old and new pairs of one slice mixed


def _corrupt_copies(tmp_path):
    project = Project(tmp_path)
    for z in range(6):
        project.add_slice(*_slice(z, (1,), shape=(24 + 4 * z, 32)), "CT", "Labels", (z,))
    pairs = sorted(project.pairs, key=lambda p: p.slice)
    files = [tmp_path / p.file for p in pairs]
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # cut short
    files[1].write_bytes(b"")  # empty
    data = bytearray(files[2].read_bytes())
    i = data.index(b"mask.npy") + 60  # a byte inside the compressed mask: the CRC no longer matches
    data[i] ^= 0xFF
    files[2].write_bytes(bytes(data))
    # metadata that disagrees with its arrays: area, and an image of another size
    from napari_imedsam.finetune.project import npz_bytes

    with np.load(files[3]) as z:
        meta, mask = json.loads(str(z["meta"])), z["mask"]
    files[3].write_bytes(npz_bytes(mask=mask, meta=np.array(json.dumps({**meta, "area": meta["area"] + 5}))))
    with np.load(files[4]) as z:
        meta, mask = json.loads(str(z["meta"])), z["mask"]
    files[4].write_bytes(npz_bytes(mask=mask, meta=np.array(json.dumps({**meta, "image_file": pairs[5].image_file}))))
    return pairs


def test_bad_pair_files_are_quarantined_and_named(tmp_path):
    pairs = _corrupt_copies(tmp_path)
    again = Project(tmp_path)
    assert [p.slice for p in again.pairs] == [(5,)]
    messages = "\n".join(again.problems)
    for p, reason in zip(pairs, ("not a complete .npz", "empty (0 bytes)", "CRC check", "disagrees with its mask",
                                 "its mask is")):
        line = next(m for m in again.problems if p.file in m)
        assert reason in line and "moved it to quarantine/" in line, (reason, messages)
        assert (tmp_path / "quarantine" / p.file.split("/")[1]).is_file()  # kept, not deleted
    assert Project(tmp_path).problems == []
    image, mask = again.load_pair(again.pairs[0])
    assert image.shape == mask.shape


def test_a_corrupt_image_file_quarantines_it_and_its_pairs(tmp_path):
    project = Project(tmp_path)
    project.add_slice(*_slice(0, (1, 2)), "CT", "Labels", (0,))
    project.add_slice(*_slice(1, (1,)), "CT", "Labels", (1,))
    bad = project.pairs[0].image_file
    (tmp_path / bad).write_bytes((tmp_path / bad).read_bytes()[:50])
    again = Project(tmp_path)
    assert [p.slice for p in again.pairs] == [(1,)]
    assert sum(bad in m for m in again.problems) == 3  # two pairs and the image itself
    assert (tmp_path / "quarantine" / bad.split("/")[1]).is_file()


def test_load_pair_checks_the_files_against_the_pair(tmp_path):
    project = Project(tmp_path)
    project.add_slice(*_slice(0, (1,)), "CT", "Labels", (0,))
    project.add_slice(*_slice(1, (1,), shape=(40, 40)), "CT", "Labels", (1,))
    p0, p1 = sorted(project.pairs, key=lambda p: p.slice)
    data = (tmp_path / p0.file).read_bytes()
    (tmp_path / p0.file).write_bytes(data[: len(data) // 3])  # damaged after opening
    with pytest.raises(ProjectError, match=r"CT slice 0, label 1 .*cannot be read.*add the slice again"):
        project.load_pair(p0)
    from dataclasses import replace

    with pytest.raises(ProjectError, match=r"its image .* is \(40, 40\) but its mask is \(24, 32\)"):
        project.load_pair(replace(p1, shape=(24, 32)))
