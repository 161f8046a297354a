"""Bad input gets a clear error of the project's own type (naming the file or argument and the problem), and no
input gives silent garbage or a runaway request. Tiny backbone only; nothing is downloaded."""

from __future__ import annotations

import gzip
import json
import shutil
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
import torch
from pydicom.data import get_testdata_file

from napari_imedsam import Predictor, load_model
from napari_imedsam.engine.predictor import PredictorError, RequestTooLarge
from napari_imedsam.io.dicom import load_dicom
from napari_imedsam.io.export import export_tiff, upsample_labels, write_labels_nifti, write_labels_tiff
from napari_imedsam.io.reader import read_image
from napari_imedsam.io.volumes import ReaderError, check_volume_size, load_nifti, make_metadata
from napari_imedsam.model.adapters import FORMAT, AdapterFileError, load_adapters, save_adapters
from napari_imedsam.model.preprocess import image_to_unit, prepare
from napari_imedsam.model.weights import CheckpointError, resolve_checkpoint


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def pred(tiny):
    p = Predictor(tiny)
    rng = np.random.default_rng(0)
    p.set_image(rng.normal(100, 20, (48, 64)).astype(np.float32))
    return p


# ---- silent garbage ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, top", [(np.float32, float(np.finfo(np.float32).max)),
                                        (np.float64, float(np.finfo(np.float64).max)), (np.float64, 1e300),
                                        (np.int64, 0.999 * float(np.iinfo(np.int64).max)), (np.float16, 65504.0)])
def test_images_near_the_dtype_maximum_scale_exactly(dtype, top):
    pattern = np.linspace(-1.0, 1.0, 30 * 40).reshape(30, 40)
    image = (pattern * top).astype(dtype)
    unit = image_to_unit(image)
    assert np.isfinite(unit).all() and unit.min() == 0.0 and unit.max() == 1.0
    np.testing.assert_allclose(unit[..., 0], (pattern + 1) / 2, atol=2e-3)
    windowed = image_to_unit(image, window=(-top, top))  # a window as wide as the dtype
    np.testing.assert_allclose(windowed[..., 0], (pattern + 1) / 2, atol=2e-3)


def test_huge_values_predict_finite_probabilities(pred):
    big = np.full((40, 40), np.finfo(np.float32).max, np.float32)
    big[10:30, 10:30] = -np.finfo(np.float32).max
    pred.set_image(big)
    prob = pred.predict((8, 8, 32, 32))
    assert np.isfinite(prob).all()
    np.testing.assert_array_equal(prepare(big, 128).tensor, prepare((big > 0).astype(np.uint8), 128).tensor)


def test_a_tensor_that_requires_grad_is_an_image(pred):
    t = torch.rand(40, 50, requires_grad=True)
    pred.set_image(t)
    a = pred.predict((5, 5, 30, 30))
    pred.set_image(t.detach().numpy())
    np.testing.assert_array_equal(a, pred.predict((5, 5, 30, 30)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_adapters_with_nan_or_inf_weights_are_refused(tmp_path, tiny, value):
    model = load_model("tiny")
    with torch.no_grad():
        name, param = next(iter(model.named_part_parameters()["inr"]))
        param.view(-1)[3] = value
    path = save_adapters(model, tmp_path / "diverged.safetensors")
    with pytest.raises(AdapterFileError, match=r"diverged.safetensors hold NaN or infinite weights in 1 tensor"):
        load_adapters(tiny, path)
    with pytest.raises(AdapterFileError, match="NaN or infinite"):
        load_model("tiny", adapters=path)


@pytest.mark.parametrize("chunk, message", [(-1, "at least 1"), (0, "at least 1"), (2.5, "whole number"),
                                            (True, "integer"), ("4", "integer"), (float("nan"), "whole number")])
def test_chunk_is_checked(tiny, chunk, message):
    with pytest.raises(ValueError, match=rf"chunk \(points per INR query\) must .*{message}"):
        Predictor(tiny, chunk=chunk)


# ---- runaway requests ----------------------------------------------------------------------------------------
def test_out_shape_is_bounded_by_its_memory_before_allocating(tiny, pred):
    pred.set_image(np.zeros((40, 40), np.uint8))
    t0 = time.perf_counter()
    with pytest.raises(RequestTooLarge, match=r"\(16384, 16384\) \(268,435,456 values\) would need about 10\.0 GiB, "
                                              r"over the limit of 4\.0 GiB.*max_request_bytes"):
        pred.predict((5, 5, 30, 30), out_shape=(16384, 16384))
    assert time.perf_counter() - t0 < 2.0
    small = Predictor(tiny, max_request_bytes=2**20)
    small.set_image(np.zeros((40, 40), np.uint8))
    with pytest.raises(RequestTooLarge, match=r"\(200, 200\) \(40,000 values\) would need about 1\.5 MiB, over the "
                                              r"limit of 1\.0 MiB"):
        small.predict((5, 5, 30, 30), out_shape=(200, 200))
    with pytest.raises(RequestTooLarge, match="limit"):
        small.uncertainty((5, 5, 30, 30), out_shape=(300, 300))
    with pytest.raises(RequestTooLarge, match="limit"):
        small.predict((5, 5, 30, 30), region=(0, 0, 400, 400))  # the default out_shape follows the region
    assert small.predict((5, 5, 30, 30), out_shape=(100, 100)).shape == (100, 100)
    with pytest.raises(ValueError, match="max_request_bytes must be a positive"):
        Predictor(tiny, max_request_bytes=0)


@pytest.mark.parametrize("call", ["export_tiff", "upsample", "nifti"])
def test_export_factor_is_bounded_before_allocating(tmp_path, call):
    labels = np.zeros((4, 64, 64), np.uint8)
    tracemalloc.start()
    with pytest.raises(RequestTooLarge, match=r"factor 2000 of shape \(4, 128000, 128000\) .* would need about "
                                              r"183\.1 GiB, over the limit of 4\.0 GiB; use a smaller factor"):
        if call == "export_tiff":
            export_tiff(tmp_path / "x.tif", labels, factor=2000)
        elif call == "upsample":
            upsample_labels(labels, 2000)
        else:
            write_labels_nifti(tmp_path / "x.nii", labels, make_metadata((4, 64, 64), (1, 1, 1)), factor=2000)
    assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    tracemalloc.stop()
    assert not (tmp_path / "x.tif").exists()
    with pytest.raises(RequestTooLarge, match="over the limit of 1.0 MiB"):
        upsample_labels(labels, 8, max_bytes=2**20)
    assert upsample_labels(labels, 2, max_bytes=2**20).shape == (4, 128, 128)


# ---- API arguments -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window, message", [
    ((5.0,), "two numbers"), (5.0, "two numbers"), ("56", "two numbers"), ((1, 2, 3), "two numbers"),
    ({"lo": 1, "hi": 2}, "two numbers"), ((1, 2j), "real numbers"), ((True, 5), "real numbers"),
    ((1, float("nan")), "finite"), ((5, 5), "high > low"), ((300, -100), "high > low"), (("a", "b"), "real numbers"),
])
def test_bad_windows(pred, window, message):
    with pytest.raises(ValueError, match=rf"Window must be .*{message}"):
        pred.set_image(np.zeros((20, 20)), window=window)


@pytest.mark.parametrize("box, message", [
    ({"x0": 1, "y0": 2, "x1": 3, "y1": 4}, "got dict"), ((1 + 2j, 0, 10, 10), "complex128"),
    (np.array([1 + 2j, 0, 10, 10]), "complex128"), ("0 0 10 10", "got str"), (None, "or points with point_labels"),
    ((0, 0, 10), "got 3"), ((object(), 0, 1, 1), "object"), ((0, 0, np.inf, 10), "non-finite"),
])
def test_bad_boxes(pred, box, message):
    pred.set_image(np.zeros((20, 20)))
    with pytest.raises(ValueError, match=rf"[Bb]ox .*{message}"):
        pred.predict(box)


@pytest.mark.parametrize("out_shape, message", [
    ((float("inf"), 10), "whole number, got inf"), (100, "two sizes"), ((10,), "two sizes"), ((10, 10, 3), "two sizes"),
    ("ab", "two sizes"), ((2.5, 10), "whole number"), ((0, 10), "positive"), ((-5, 10), "positive"),
    ((True, 10), "integer"), ((float("nan"), 3), "whole number"),
])
def test_bad_out_shapes(pred, out_shape, message):
    pred.set_image(np.zeros((20, 20)))
    with pytest.raises(ValueError, match=rf"out_shape must .*{message}"):
        pred.predict((1, 1, 10, 10), out_shape=out_shape)
    with pytest.raises(ValueError, match="out_shape"):
        pred.uncertainty((1, 1, 10, 10), out_shape=out_shape)
    assert pred.predict((1, 1, 10, 10), out_shape=(10.0, np.int64(12))).shape == (10, 12)


@pytest.mark.parametrize("region", [{"y0": 0}, (0, 0, 5j, 5), "0 0 5 5", (0, 0, 5), (0, 0, np.nan, 5), (5, 5, 0, 0)])
def test_bad_regions(pred, region):
    pred.set_image(np.zeros((20, 20)))
    with pytest.raises(ValueError, match="region must be"):
        pred.predict((1, 1, 10, 10), region=region)


@pytest.mark.parametrize("device, message", [
    (5, "device must be None"), ("tpu", "Unknown device 'tpu'"), ("cpu:abc", "Unknown device 'cpu:abc'"),
    ("cuda:x", "Unknown device 'cuda:x'"), (["cpu"], "device must be None"),
])
def test_bad_devices(tiny, device, message):
    with pytest.raises(ValueError, match=message):
        Predictor(tiny, device=device)


def test_device_none_uses_the_model_where_it_is(tiny):
    pred = Predictor(tiny, device=None)
    assert pred.device == next(tiny.parameters()).device
    pred.set_image(np.zeros((20, 20)))
    assert pred.predict((1, 1, 10, 10)).shape == (20, 20)
    with pytest.raises(ValueError, match="cache_bytes must be a size"):
        Predictor(tiny, cache_bytes=-1)
    with pytest.raises(ValueError, match="needs an I-MedSAM model"):
        Predictor("tiny")


def test_queries_before_set_image_raise_the_predictor_error(tiny):
    pred = Predictor(tiny)
    for call in (lambda: pred.predict((0, 0, 5, 5)), lambda: pred.uncertainty((0, 0, 5, 5)),
                 lambda: pred.predict_backbone((0, 0, 5, 5)), lambda: pred.image_hw,
                 lambda: pred.get_image_embedding(), lambda: pred.transform_box((0, 0, 5, 5))):
        with pytest.raises(PredictorError, match=r"No image set: call set_image\(image\) first") as info:
            call()
        assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size="big"), "image_size='big' must be int"), (dict(image_size=96.0), "image_size=96.0 must be int"),
    (dict(lora=1), "lora=1 must be bool"), (dict(dropout="0.5"), "dropout='0.5' must be float"),
    (dict(coarse_hidden=(64, -1)), "coarse_hidden"), (dict(bogus=3), r"unknown setting\(s\) \['bogus'\]"),
    (dict(adapters=5), "adapters must be a file path"), (dict(config={"a": 1}), "config must be an IMedSAMConfig"),
])
def test_load_model_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_model("tiny", **kwargs)
    with pytest.raises(ValueError, match="Unknown backbone 5"):
        load_model(5)


def _adapters_with_meta(path, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(path), metadata=meta)


@pytest.mark.parametrize("meta, message", [
    ({"format": FORMAT}, "no 'config' in their metadata"),
    ({"format": FORMAT, "config": "{not json"}, "unusable 'config'"),
    ({"format": FORMAT, "config": "[1, 2]"}, "unusable 'config'.*list"),
    ({"format": FORMAT, "config": json.dumps({"image_size": "big"})}, "unusable 'config'"),
    ({"format": FORMAT, "config": json.dumps({"no_such_setting": 1})}, "unusable 'config'.*unknown settings"),
    ({"format": "something-else", "config": "{}"}, "not an I-MedSAM adapter file"),
])
def test_adapter_files_with_bad_metadata(tmp_path, tiny, meta, message):
    path = tmp_path / "a.safetensors"
    _adapters_with_meta(path, meta)
    with pytest.raises(AdapterFileError, match=message):
        load_adapters(tiny, path)
    with pytest.raises(AdapterFileError, match=message):
        load_model("tiny", adapters=path)


def test_adapter_paths_that_are_not_files(tmp_path, tiny):
    with pytest.raises(AdapterFileError, match="is a folder, not a file"):
        load_adapters(tiny, tmp_path)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(AdapterFileError, match=r"empty \(0 bytes\)"):
        load_adapters(tiny, tmp_path / "empty.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapters(tiny, tmp_path / "missing.safetensors")


def _checkpoints(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "empty.pth").write_bytes(b"")
    save_file({"w": torch.zeros(64, 64)}, str(tmp_path / "full.safetensors"))
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    (tmp_path / "head.safetensors").write_bytes(data[:5])
    torch.save({"w": torch.zeros(64, 64)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "sam.pth").write_bytes(b"x")


@pytest.mark.parametrize("name, message", [
    ("empty.pth", r"empty \(0 bytes\)"), ("cut.safetensors", "cut short: its header promises"),
    ("head.safetensors", "not a complete safetensors file"), ("cut.pth", "cut short or damaged"),
    ("folder", r"is a folder, not a file. It holds \['sam.pth'\]"),
])
def test_unusable_checkpoints(tmp_path, name, message):
    _checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model("litemedsam", checkpoint=tmp_path / name)
    with pytest.raises(CheckpointError, match=message):
        resolve_checkpoint("sam_vit_b", path=tmp_path / name)


# ---- readers -------------------------------------------------------------------------------------------------
def _nifti(tmp_path, name="scan.nii.gz", shape=(20, 20, 12), affine=None):
    path = tmp_path / name
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def _patched_nifti(tmp_path, name, srow_y):
    """A NIfTI whose sform row y is ``srow_y`` (nibabel itself refuses to write a NaN or singular affine)."""
    path = _nifti(tmp_path, name)
    blob = gzip.decompress(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(blob[:348]))
    header["srow_y"] = srow_y
    path.write_bytes(gzip.compress(header.binaryblock + blob[348:]))
    return path


def _truncated_nifti(tmp_path):
    full = _nifti(tmp_path, "full.nii.gz", shape=(60, 60, 40)).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(full[: len(full) * 2 // 3])
    return tmp_path / "cut.nii.gz"


def _raw_header_nifti(tmp_path, name, set_header, gz=False):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    header = img.header
    set_header(header)
    blob = header.binaryblock + b"\0" * 4 + b"\0" * 16
    path = tmp_path / name
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


@pytest.mark.parametrize("make, message", [
    (_truncated_nifti, "cut short or corrupt"),  # EOFError / zlib.error inside nibabel
    (lambda t: _raw_header_nifti(t, "huge.nii.gz", lambda h: h.set_data_shape((30000, 30000, 30000)), gz=True),
     r"dimensions \(30000, 30000, 30000\) = 27,000,000,000,000 voxels.*over the limit"),
    (lambda t: _raw_header_nifti(t, "huge.nii", lambda h: h.set_data_shape((4000, 4000, 4000))), "over the limit"),
    (lambda t: _raw_header_nifti(t, "short.nii", lambda h: h.set_data_shape((64, 64, 64))),
     r"cut short: its header promises 524,288 bytes"),
    (lambda t: _patched_nifti(t, "nan.nii.gz", [0.0, np.nan, 0.0, 0.0]), "NaN or infinite values"),
    (lambda t: _patched_nifti(t, "flat.nii.gz", [0.0, 0.0, 0.0, 0.0]), "singular"),
    (lambda t: (t / "junk.nii").write_bytes(b"not a nifti at all" * 40) and t / "junk.nii", "not a readable NIfTI"),
    (lambda t: (t / "empty.nii.gz").write_bytes(b"") or t / "empty.nii.gz", r"empty \(0 bytes\)"),
    (lambda t: (t / "dir.nii.gz").mkdir() or t / "dir.nii.gz", "is a folder, not a NIfTI file"),
])
def test_unreadable_nifti_files(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ReaderError, match=message) as info:
        load_nifti(path)
    assert str(path.name) in str(info.value) and info.value.path == str(path)
    if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
        with pytest.raises(ReaderError, match=message):
            read_image(str(path))


def test_volume_size_check_names_the_numbers(tmp_path):
    with pytest.raises(ReaderError, match=r"x.nii: its header gives the dimensions \(0, 5, 5\)"):
        check_volume_size(tmp_path / "x.nii", (0, 5, 5))
    with pytest.raises(ReaderError, match=r"1,000,000 voxels, 3.8 MiB as float32, over the limit of 1.0 MiB"):
        check_volume_size(tmp_path / "x.nii", (100, 100, 100), max_bytes=2**20)
    check_volume_size(tmp_path / "x.nii", (100, 100, 100))


def _dicom_series(folder, change=None, n=3):
    folder.mkdir()
    src = get_testdata_file("CT_small.dcm", download=False)
    for k in range(n):
        ds = pydicom.dcmread(src)
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 5 * k]
        if change is not None:
            change(ds, k)
        ds.save_as(folder / f"s{k}.dcm")
    return folder


@pytest.mark.parametrize("change, message", [
    (lambda ds, k: setattr(ds, "PixelSpacing", [0.5]), r"PixelSpacing holds 1 value\(s\) \[0.5\]; it needs 2"),
    (lambda ds, k: setattr(ds, "PixelSpacing", [0.0, 0.5]), "PixelSpacing holds .*finite positive"),
    (lambda ds, k: setattr(ds, "ImageOrientationPatient", [1, 0, 0]), r"ImageOrientationPatient holds 3 value\(s\)"),
    (lambda ds, k: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]), "two independent directions"),
    (lambda ds, k: setattr(ds, "ImagePositionPatient", [0.0, 1.0]), r"ImagePositionPatient holds 2 value\(s\)"),
    (lambda ds, k: ds.add_new(0x00281053, "LO", "abc"), r"RescaleSlope holds \['abc'\], not numbers"),
    (lambda ds, k: setattr(ds, "PixelData", ds.PixelData[:1000]), "Cannot decode the pixel data"),
])
def test_unreadable_dicom_series(tmp_path, change, message):
    folder = _dicom_series(tmp_path / "series", change)
    with pytest.raises(ReaderError, match=message) as info:
        load_dicom(folder)
    assert str(folder) in str(info.value)
    with pytest.raises(ReaderError, match=message):
        read_image(str(folder))


def test_dicom_files_cut_short_or_given_as_folders(tmp_path):
    folder = _dicom_series(tmp_path / "series", n=1)
    data = (folder / "s0.dcm").read_bytes()
    for cut, message in ((400, "holds an image .*s0.dcm. A file cut short"), (len(data) - 1000, "s0.dcm .*cut short")):
        (folder / "s0.dcm").write_bytes(data[:cut])
        with pytest.raises(ReaderError, match=message):
            load_dicom([folder / "s0.dcm"])
        with pytest.raises(ReaderError, match=message):
            read_image(str(folder / "s0.dcm"))
    with pytest.raises(ReaderError, match="is a folder, not a DICOM file"):
        load_dicom([folder])


def test_tiff_cut_short_is_a_reader_error(tmp_path):
    from src_training.data.reading import read_image as read_2d
    from src_training.data.reading import to_unit_float

    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ReaderError, match=r"img.tif cannot be read as an image; it may be cut short"):
        read_2d(path)
    path.write_bytes(b"")
    with pytest.raises(ReaderError, match=r"empty \(0 bytes\)"):
        read_2d(path)
    with pytest.raises(ReaderError, match="is a folder"):
        read_2d(tmp_path)
    top = np.finfo(np.float32).max
    np.testing.assert_allclose(to_unit_float(np.array([[-top, 0], [top, top / 2]], np.float32)),
                               [[0, 0.5], [1, 0.75]])


# ---- export arguments ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing, message", [
    ((0, 0), "positive finite"), ((1.0, float("nan")), "positive finite"), ((1.0, -2.0), "positive finite"),
    ((1.0,), "one value per axis"), ("1,1", "one voxel size"), (("a", 1), "hold numbers"),
    ((1.0, float("inf")), "positive finite"),
])
def test_export_spacing_is_checked(tmp_path, spacing, message):
    labels = np.zeros((8, 8), np.uint8)
    with pytest.raises(ValueError, match=rf"spacing .*{message}"):
        export_tiff(tmp_path / "x.tif", labels, factor=2, spacing=spacing)
    with pytest.raises(ValueError, match=rf"spacing .*{message}"):
        write_labels_tiff(tmp_path / "x.tif", labels, spacing=spacing)
    assert not (tmp_path / "x.tif").exists()


def test_reader_error_survives_a_copy_of_a_good_file(tmp_path):
    """The checks do not refuse good files: a normal NIfTI and DICOM still read."""
    assert load_nifti(_nifti(tmp_path)).data.shape == (12, 20, 20)
    folder = _dicom_series(tmp_path / "ok")
    assert load_dicom(folder).data.shape == (3, 128, 128)
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), tmp_path / "one.dcm")
    assert load_dicom(tmp_path / "one.dcm").data.shape == (128, 128)
