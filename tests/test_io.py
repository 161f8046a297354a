"""Reader (NIfTI, DICOM) and label export (TIFF, NIfTI on the original grid)."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.data import get_testdata_file

from napari_imedsam.io.dicom import load_dicom
from napari_imedsam.io.export import (
    export_tiff,
    fine_affine,
    upsample_labels,
    write_labels_nifti,
    write_labels_tiff,
)
from napari_imedsam.io.reader import get_reader, read_image
from napari_imedsam.io.volumes import CT_WINDOW, load_nifti, make_metadata

# Axes of the test file: i -> patient left (0.7 mm), j -> superior (3 mm), k -> anterior (0.9 mm).
AFFINE = np.array([
    [-0.7, 0.0, 0.0, 30.0],
    [0.0, 0.0, 0.9, -50.0],
    [0.0, 3.0, 0.0, -20.0],
    [0.0, 0.0, 0.0, 1.0],
])
SHAPE = (6, 7, 8)


def _raw() -> np.ndarray:
    """Distinct stored values; most are air-like (< -500 HU) once scaled by 2 and shifted by -1024."""
    return (np.arange(np.prod(SHAPE), dtype=np.int16) * 3 - 500).reshape(SHAPE)


@pytest.fixture
def nifti_path(tmp_path):
    img = nib.Nifti1Image(_raw(), AFFINE)
    img.header.set_slope_inter(2.0, -1024.0)
    path = tmp_path / "scan.nii.gz"
    nib.save(img, str(path))
    return path


def _world(affine, index):
    return (affine @ [*index, 1.0])[:3]


def test_nifti_reader_orientation_scale_and_hu(nifti_path):
    reader = get_reader(str(nifti_path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(nifti_path))
    assert kind == "image"
    assert kwargs["name"] == "scan"
    assert data.dtype == np.float32
    assert data.shape == (7, 8, 6)  # (S, P, L) = (j, k, i)
    assert kwargs["scale"] == pytest.approx((3.0, 0.9, 0.7))
    meta = kwargs["metadata"]
    np.testing.assert_allclose(meta["affine"], AFFINE)
    assert meta["source_path"] == str(nifti_path)
    assert nib.aff2axcodes(meta["zyx_affine"]) == ("S", "P", "L")
    assert kwargs["contrast_limits"] == list(CT_WINDOW)
    hu = _raw().astype(np.float32) * 2.0 - 1024.0
    # Every voxel keeps its value and its world position.
    np.testing.assert_array_equal(np.sort(data, axis=None), np.sort(hu, axis=None))
    for src in [(0, 0, 0), (1, 2, 3), (5, 6, 7), (3, 0, 5)]:
        [match] = np.argwhere(data == hu[src])
        np.testing.assert_allclose(_world(meta["zyx_affine"], match), _world(AFFINE, src))
    # Row 0 is anterior, column 0 the patient's right (radiological view).
    assert _world(meta["zyx_affine"], (0, 0, 0))[1] > _world(meta["zyx_affine"], (0, 1, 0))[1]
    assert _world(meta["zyx_affine"], (0, 0, 0))[0] > _world(meta["zyx_affine"], (0, 0, 1))[0]


def test_nifti_2d_and_4d(tmp_path):
    p2 = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(np.arange(20, dtype=np.float32).reshape(5, 4), np.diag([0.5, 0.6, 1, 1])), p2)
    vol = load_nifti(p2)
    assert vol.data.ndim == 2 and vol.data.shape == (4, 5)
    assert vol.spacing == pytest.approx((0.6, 0.5))
    assert vol.metadata["is_hu"] is False
    p4 = tmp_path / "series.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), p4)
    with pytest.raises(ValueError, match="4-D"):
        load_nifti(p4)


def test_get_reader_rejects_other_paths(tmp_path):
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG")
    assert get_reader(str(png)) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"not dicom")
    assert get_reader(str(fake)) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    assert get_reader(str(empty)) is None
    with pytest.raises(ValueError, match="No DICOM files"):
        load_dicom(empty)
    with pytest.raises(ValueError, match="not a NIfTI"):
        read_image(str(png))


def _series(folder, z_positions=(-75.7, -70.7, -65.7), names=("b.dcm", "c.dcm", "a.dcm")):
    """Copies of CT_small.dcm at the given z, written under shuffled names; slice k's pixels + 100*k."""
    folder.mkdir(exist_ok=True)
    src = get_testdata_file("CT_small.dcm", download=False)
    base = pydicom.dcmread(src).pixel_array.astype(np.int16)
    written = {}
    for k, (z, name) in enumerate(zip(z_positions, names)):
        ds = pydicom.dcmread(src)
        ds.ImagePositionPatient = [-158.135803, -179.035797, z]
        ds.InstanceNumber = 10 - k  # deliberately the reverse of the geometric order
        ds.PixelData = (base + 100 * k).astype(np.int16).tobytes()
        ds.save_as(folder / name)
        written[name] = k
    (folder / "README.txt").write_text("not a DICOM file")
    return base


def test_dicom_series_sorted_hu_spacing(tmp_path):
    folder = tmp_path / "series"
    base = _series(folder)
    reader = get_reader(str(folder))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(folder))
    assert data.shape == (3, 128, 128)
    assert kwargs["scale"] == pytest.approx((5.0, 0.661468, 0.661468))
    for k in range(3):  # inferior -> superior, HU = raw * 1 - 1024
        np.testing.assert_array_equal(data[k], base + 100 * k - 1024.0)
    meta = kwargs["metadata"]
    assert meta["modality"] == "CT" and meta["is_hu"] is True
    assert kwargs["contrast_limits"] == list(CT_WINDOW)
    # LPS (-158.1, -179.0, -75.7) of the first voxel is RAS (158.1, 179.0, -75.7).
    np.testing.assert_allclose(_world(meta["zyx_affine"], (0, 0, 0)), [158.135803, 179.035797, -75.7])
    # One file of the series, or the list of its files, gives the same volume.
    [(data_one, _, _)] = get_reader(str(folder / "a.dcm"))(str(folder / "a.dcm"))
    np.testing.assert_array_equal(data_one, data)
    files = [str(folder / n) for n in ("a.dcm", "b.dcm", "c.dcm")]
    [(data_list, _, _)] = get_reader(files)(files)
    np.testing.assert_array_equal(data_list, data)


def test_dicom_largest_series_and_errors(tmp_path):
    folder = tmp_path / "mixed"
    _series(folder)
    other = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    other.SeriesInstanceUID = "1.2.3.4"
    other.save_as(folder / "other.dcm")
    vol = load_dicom(folder)
    assert vol.data.shape == (3, 128, 128)
    assert sorted(vol.metadata["series_in_folder"].values()) == [1, 3]
    assert load_dicom(folder, series_uid="1.2.3.4").data.shape == (128, 128)

    bad = tmp_path / "shapes"
    _series(bad)
    ds = pydicom.dcmread(bad / "a.dcm")
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = np.zeros((64, 64), np.int16).tobytes()
    ds.save_as(bad / "a.dcm")
    with pytest.raises(ValueError, match="mixes image sizes"):
        load_dicom(bad)

    nopix = tmp_path / "nopix"
    nopix.mkdir()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    del ds.PixelData
    ds.save_as(nopix / "x.dcm")
    with pytest.raises(ValueError, match="no pixel data"):
        load_dicom(nopix)

    dup = tmp_path / "dup"
    _series(dup, z_positions=(-75.7, -75.7, -65.7))
    with pytest.raises(ValueError, match="share one slice position"):
        load_dicom(dup)


def test_export_nifti_factor2_nests_on_original_grid(nifti_path, tmp_path):
    [(data, kwargs, _)] = read_image(str(nifti_path))
    meta = kwargs["metadata"]
    labels = np.zeros(data.shape, np.uint8)
    labels[2, 3, 4] = 5
    labels[4, 1:3, 0:2] = 2
    out = write_labels_nifti(tmp_path / "labels.nii.gz", labels, meta, factor=2)
    img = nib.load(str(out))
    # In-plane display axes (P, L) are source axes k and i: both doubled, j (superior) kept.
    assert img.shape == (SHAPE[0] * 2, SHAPE[1], SHAPE[2] * 2)
    assert np.issubdtype(img.get_data_dtype(), np.integer)
    expected = AFFINE.copy()
    for axis in (0, 2):
        expected[:3, 3] -= 0.25 * AFFINE[:3, axis]
        expected[:3, axis] /= 2
    np.testing.assert_allclose(img.affine, expected, atol=1e-5)
    np.testing.assert_allclose(fine_affine(AFFINE, (0, 2), 2), expected)
    fine = np.asanyarray(img.dataobj)
    inv = np.linalg.inv(AFFINE)
    # The 2x2 fine voxels of label 5 sit inside the coarse voxel that had it, centred on it.
    idx = np.argwhere(fine == 5)
    assert len(idx) == 4
    cont = np.array([(inv @ img.affine @ [*i, 1.0])[:3] for i in idx])  # continuous source indices
    centre = cont.mean(axis=0)
    np.testing.assert_allclose(centre, np.round(centre), atol=1e-5)  # centred on one coarse voxel
    np.testing.assert_allclose(np.abs(cont - centre)[:, [0, 2]], 0.25, atol=1e-5)  # +-1/4 voxel
    np.testing.assert_allclose((cont - centre)[:, 1], 0.0, atol=1e-5)
    src_voxel = np.round(centre).astype(int)
    np.testing.assert_allclose(_world(AFFINE, src_voxel), _world(meta["zyx_affine"], (2, 3, 4)))
    assert (fine == 2).sum() == 2 * 2 * 4
    # An already-upsampled (INR-rendered) array gives the same file.
    out2 = write_labels_nifti(tmp_path / "fine.nii", upsample_labels(labels, 2), meta, factor=2)
    np.testing.assert_array_equal(np.asanyarray(nib.load(str(out2)).dataobj), fine)
    # Factor 1 reads back through the reader onto the same display grid.
    out1 = write_labels_nifti(tmp_path / "same.nii.gz", labels, meta)
    np.testing.assert_array_equal(load_nifti(out1).data, labels)


def test_export_nifti_errors(nifti_path, tmp_path):
    [(data, kwargs, _)] = read_image(str(nifti_path))
    meta = kwargs["metadata"]
    labels = np.zeros(data.shape, np.uint8)
    for bad in (0, -2, 2.0, True, "2"):
        with pytest.raises(ValueError, match="factor"):
            write_labels_nifti(tmp_path / "x.nii", labels, meta, factor=bad)
    with pytest.raises(ValueError, match="matches neither"):
        write_labels_nifti(tmp_path / "x.nii", labels[:, :-1], meta, factor=2)
    with pytest.raises(ValueError, match="metadata lacks"):
        write_labels_nifti(tmp_path / "x.nii", labels, {"name": "x"})
    with pytest.raises(ValueError, match="integer"):
        write_labels_nifti(tmp_path / "x.nii", labels.astype(np.float32), meta)


def test_export_nifti_from_dicom_and_plain_array(tmp_path):
    folder = tmp_path / "series"
    _series(folder)
    vol = load_dicom(folder)
    labels = np.zeros(vol.data.shape, np.uint16)
    labels[1, 10, 20] = 300
    img = nib.load(str(write_labels_nifti(tmp_path / "ct.nii.gz", labels, vol.metadata, factor=2)))
    assert img.shape == (256, 256, 3)  # (column, row, slice) as dcm2niix writes it
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert img.get_data_dtype() == np.uint16
    assert (np.asanyarray(img.dataobj) == 300).sum() == 4

    meta = make_metadata((4, 16, 12), (2.0, 0.5, 0.5))
    arr = np.zeros((4, 16, 12), np.uint8)
    arr[3, 0, 11] = 1
    back = write_labels_nifti(tmp_path / "plain.nii", arr, meta)
    np.testing.assert_array_equal(load_nifti(back).data, arr)


def test_export_tiff(tmp_path):
    labels = np.zeros((3, 5, 4), np.int32)
    labels[1, 2, 3] = 7
    path = export_tiff(tmp_path / "labels.tif", labels, factor=4)
    out = tifffile.imread(path)
    assert out.shape == (3, 20, 16) and out.dtype == np.uint8
    assert (out == 7).sum() == 16 and np.all(out[1, 8:12, 12:16] == 7)
    path = export_tiff(tmp_path / "cal.tif", labels, factor=2, spacing=(2.0, 1.0, 1.0))
    with tifffile.TiffFile(path) as tif:
        assert tif.imagej_metadata["spacing"] == 2.0
        assert tif.asarray().shape == (3, 10, 8)
    big = np.full((4, 4), 70000, np.int64)
    assert tifffile.imread(write_labels_tiff(tmp_path / "big.tif", big)).dtype == np.int32
    with pytest.raises(ValueError, match="factor"):
        export_tiff(tmp_path / "x.tif", labels, factor=0)
    with pytest.raises(ValueError, match="integer"):
        export_tiff(tmp_path / "x.tif", labels.astype(float))


def test_reader_accepts_copied_ct_small(tmp_path):
    dst = tmp_path / "CT_small.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), dst)
    [(data, kwargs, _)] = get_reader(str(dst))(str(dst))
    assert data.shape == (128, 128)
    assert kwargs["scale"] == pytest.approx((0.661468, 0.661468))
