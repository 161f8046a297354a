"""DICOM SEG export and import (highdicom) round-trip on pydicom's CT_small.dcm and a synthetic 3-D series;
RTSTRUCT import; the reader opens a SEG as labels aligned with its series."""

from __future__ import annotations

import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from napari_imedsam.io.dicom import load_dicom
from napari_imedsam.io.dicom_seg import (
    RTSTRUCT_SOP_CLASS,
    dicom_kind,
    from_display,
    read_dicom_labels,
    read_dicom_seg,
    read_rtstruct,
    write_labels_dicom_seg,
)
from napari_imedsam.io.reader import get_reader

# A coronal series (rows run inferior, columns to the patient's left), written in shuffled file order, so that
# the display order (z, y, x) = (S, P, L) differs from the files' (slice, row, column) order on every axis.
ROWS, COLS, SLICES = 12, 10, 5
SPACING = (0.8, 0.6)  # PixelSpacing: between rows, between columns (mm)
DZ = 2.5
IOP = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # row direction +x (L), column direction -z (inferior)
ORIGIN = np.array([-20.0, 10.0, 40.0])  # LPS mm of the first slice's first pixel


def _write_series(folder, uids=None):
    """A synthetic CT series with distinct SOP Instance UIDs; returns (study, series, frame of reference) UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = uids or (generate_uid(), generate_uid(), generate_uid())
    normal = np.cross(IOP[:3], IOP[3:])  # slice direction: +y (posterior)
    for k in range(SLICES):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Phantom^Test", "P001"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20250101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.SeriesNumber, ds.InstanceNumber = 3, SLICES - k  # instance numbers against the geometric order
        ds.Manufacturer, ds.PositionReferenceIndicator = "test", ""
        ds.ImageOrientationPatient = IOP
        ds.ImagePositionPatient = [float(v) for v in ORIGIN + normal * DZ * k]
        ds.PixelSpacing, ds.SliceThickness = list(SPACING), DZ
        ds.Rows, ds.Columns = ROWS, COLS
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.arange(ROWS * COLS, dtype=np.int16).reshape(ROWS, COLS) + 100 * k).tobytes()
        ds.save_as(folder / f"img{(k * 3) % SLICES}.dcm", enforce_file_format=True)
    return study, series, frame


def _labels_for(shape):
    """Two objects plus a third id with a gap (1, 2, 5), different on every slice."""
    labels = np.zeros(shape, dtype=np.uint8)
    if len(shape) == 2:
        labels[2:6, 3:9] = 1
        labels[7:9, 1:4] = 5
        return labels
    nz, ny, nx = shape
    for z in range(nz):
        if z < nz - 3:
            labels[z, z % ny : z % ny + 2, 1:4] = 1
        if z > 2:
            labels[z, ny - 2 :, nx // 2 + z % 3 : nx // 2 + z % 3 + 2] = 2
    labels[1, 0, 0] = 5
    return labels


def test_seg_round_trip_synthetic_series(tmp_path):
    study, series, frame = _write_series(tmp_path / "ct")
    vol = load_dicom(tmp_path / "ct")
    assert vol.data.ndim == 3
    labels = _labels_for(vol.data.shape)
    names = {1: "liver", 2: "spleen"}
    (tmp_path / "seg").mkdir()
    out = write_labels_dicom_seg(labels, vol.metadata, tmp_path / "seg" / "masks.dcm", names)

    seg = hd.seg.segread(str(out))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == study and seg.FrameOfReferenceUID == frame
    assert seg.SeriesInstanceUID != series
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen", "object 5"]
    # The masks per source file, read with highdicom alone, match the labels put back into file order.
    src = [pydicom.dcmread(f) for f in vol.metadata["source_files"]]
    got = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in src], combine_segments=True,
                                            assert_missing_frames_are_empty=True)
    by_uid = {d.SOPInstanceUID: d for d in src}
    for item in seg.PerFrameFunctionalGroupsSequence:  # each frame lies where its source slice lies
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient,
                                   by_uid[ref].ImagePositionPatient)
    pm = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose(pm.PixelSpacing, SPACING)
    ids = {1: 1, 2: 2, 3: 5}  # segment number -> label id
    back = np.zeros_like(got)
    for n, label in ids.items():
        back[got == n] = label
    # back is (file slice, row, column): the labels put into that order by the inverse of the reader's geometry
    np.testing.assert_array_equal(back, from_display(labels, vol.metadata).transpose(2, 1, 0))

    # Reading the SEG back gives the labels in display order on the series' grid, with the ids and names.
    data, kwargs, kind = read_dicom_seg(out)
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)
    assert kwargs["scale"] == pytest.approx(vol.spacing)
    assert kwargs["metadata"]["label_names"] == {1: "liver", 2: "spleen", 5: "object 5"}
    np.testing.assert_allclose(kwargs["metadata"]["zyx_affine"], vol.metadata["zyx_affine"])


def test_seg_geometry_matches_the_world(tmp_path):
    """A voxel's world position (from the SEG's own plane positions) is the image voxel's position."""
    _write_series(tmp_path / "ct")
    vol = load_dicom(tmp_path / "ct")
    labels = np.zeros(vol.data.shape, np.uint8)
    labels[3, 4, 7] = 1  # one voxel
    out = write_labels_dicom_seg(labels, tmp_path / "ct", tmp_path / "one.dcm", ["dot"])
    seg = pydicom.dcmread(out)
    [frame_item] = seg.PerFrameFunctionalGroupsSequence  # the empty frames are left out
    pos = np.asarray(frame_item.PlanePositionSequence[0].ImagePositionPatient, float)
    px = np.unpackbits(np.frombuffer(seg.PixelData, np.uint8), bitorder="little")[: ROWS * COLS].reshape(ROWS, COLS)
    [(r, c)] = np.argwhere(px)
    iop = np.asarray(seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient)
    world_lps = pos + iop[:3] * SPACING[1] * c + iop[3:] * SPACING[0] * r
    ras = (vol.metadata["zyx_affine"] @ [3, 4, 7, 1])[:3]
    np.testing.assert_allclose(world_lps * [-1, -1, 1], ras, atol=1e-6)


def test_seg_round_trip_ct_small(tmp_path):
    src = get_testdata_file("CT_small.dcm", download=False)
    folder = tmp_path / "ct_small"
    folder.mkdir()
    shutil.copy(src, folder / "CT_small.dcm")
    vol = load_dicom(folder / "CT_small.dcm")
    assert vol.data.shape == (128, 128)
    labels = np.zeros(vol.data.shape, np.uint8)
    labels[40:70, 50:90] = 1
    labels[90:100, 10:30] = 2
    out = write_labels_dicom_seg(labels, [pydicom.dcmread(folder / "CT_small.dcm")], tmp_path / "seg.dcm",
                                 {1: "tumour", 2: "vessel"})
    ct = pydicom.dcmread(src)
    seg = hd.seg.segread(str(out))
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (ct.StudyInstanceUID, ct.FrameOfReferenceUID)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == ct.SOPInstanceUID
    got = seg.get_pixels_by_source_instance([ct.SOPInstanceUID], combine_segments=True)[0]
    np.testing.assert_array_equal(got, labels)  # a single axial slice: display order is the file's order
    np.testing.assert_allclose(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing,
                               ct.PixelSpacing)
    # The plugin's reader opens the SEG (the CT is in the folder above) as labels aligned with the image.
    reader = get_reader(str(out))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(out))
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)
    assert kwargs["scale"] == pytest.approx(vol.spacing)
    assert kwargs["metadata"]["label_names"] == {1: "tumour", 2: "vessel"}


def test_seg_errors(tmp_path):
    _write_series(tmp_path / "ct")
    vol = load_dicom(tmp_path / "ct")
    with pytest.raises(ValueError, match="empty"):
        write_labels_dicom_seg(np.zeros(vol.data.shape, np.uint8), vol.metadata, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="grid of its source series"):
        write_labels_dicom_seg(np.ones((2, 2, 2), np.uint8), vol.metadata, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="did not come from a DICOM series"):
        write_labels_dicom_seg(np.ones((2, 2), np.uint8), {"source_format": "nifti"}, tmp_path / "x.dcm")
    lonely = tmp_path / "lonely" / "deep"
    lonely.mkdir(parents=True)
    moved = write_labels_dicom_seg(_labels_for(vol.data.shape), vol.metadata, lonely / "s.dcm")
    with pytest.raises(ValueError, match="not beside it"):
        read_dicom_seg(moved)
    data, _, _ = read_dicom_seg(moved, series=tmp_path / "ct")  # given explicitly
    np.testing.assert_array_equal(data, _labels_for(vol.data.shape))


def _write_rtstruct(path, series_folder, contours):
    """A minimal RT Structure Set: ``contours`` maps (roi number, name) to [(slice file, [(x, y, z), ...]), ...]."""
    first = pydicom.dcmread(next(iter(sorted(series_folder.iterdir()))))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", first.StudyInstanceUID, generate_uid()
    ds.StructureSetLabel = "contours"
    ser = pydicom.Dataset()
    ser.SeriesInstanceUID = first.SeriesInstanceUID
    study = pydicom.Dataset()
    study.RTReferencedSeriesSequence = [ser]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for (number, name), polys in contours.items():
        roi = pydicom.Dataset()
        roi.ROINumber, roi.ROIName = number, name
        ds.StructureSetROISequence.append(roi)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber = number
        rc.ContourSequence = []
        for points in polys:
            c = pydicom.Dataset()
            c.ContourGeometricType = "CLOSED_PLANAR"
            c.NumberOfContourPoints = len(points)
            c.ContourData = [float(v) for p in points for v in p]
            rc.ContourSequence.append(c)
        ds.ROIContourSequence.append(rc)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rtstruct_opens_as_labels_on_the_series_grid(tmp_path):
    _write_series(tmp_path / "ct")
    vol = load_dicom(tmp_path / "ct")
    normal = np.cross(IOP[:3], IOP[3:])
    row_dir, col_dir = np.array(IOP[:3]), np.array(IOP[3:])

    def square(k, r0, r1, c0, c1):  # a contour through pixel centres (r0..r1, c0..c1) on file slice k
        corner = ORIGIN + normal * DZ * k
        return [tuple(corner + row_dir * SPACING[1] * c + col_dir * SPACING[0] * r)
                for r, c in [(r0, c0), (r0, c1), (r1, c1), (r1, c0)]]

    (tmp_path / "rt").mkdir()
    path = _write_rtstruct(tmp_path / "rt" / "rs.dcm", tmp_path / "ct", {
        (3, "kidney"): [square(1, 2, 8, 2, 7), square(1, 4, 6, 4, 5)],  # a ring: the inner contour is a hole
        (7, "cyst"): [square(3, 0, 1, 0, 1)],
    })
    assert dicom_kind(path) == "RTSTRUCT"
    [(data, kwargs, kind)] = read_dicom_labels(path)
    assert kind == "labels" and data.shape == vol.data.shape
    assert kwargs["metadata"]["label_names"] == {3: "kidney", 7: "cyst"}
    files = from_display(data, vol.metadata).transpose(2, 1, 0)  # (file slice, row, column)
    expected = np.zeros((SLICES, ROWS, COLS), np.int32)
    expected[1, 2:9, 2:8] = 3
    expected[1, 4:7, 4:6] = 0
    expected[3, 0:2, 0:2] = 7
    np.testing.assert_array_equal(files, expected)
    data2, _, _ = read_rtstruct(path, series=vol.metadata)
    np.testing.assert_array_equal(data2, data)


def test_fractional_seg_from_another_tool(tmp_path):
    """A fractional SEG without our tracking IDs: thresholded at 0.5, label ids = segment numbers."""
    from pydicom.sr.codedict import codes

    _write_series(tmp_path / "ct")
    vol = load_dicom(tmp_path / "ct")
    src = [pydicom.dcmread(f) for f in vol.metadata["source_files"]]
    prob = np.zeros((SLICES, ROWS, COLS), np.float32)
    prob[2, 3:6, 2:5] = 0.9
    prob[2, 6, 2:5] = 0.4  # below one half: not in the mask
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=src, pixel_array=prob, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[desc], series_instance_uid=generate_uid(), series_number=9,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="other", manufacturer_model_name="x",
        software_versions="1", device_serial_number="1")
    seg.save_as(tmp_path / "frac.dcm")
    data, kwargs, _ = read_dicom_seg(tmp_path / "frac.dcm")
    expected = np.zeros((SLICES, ROWS, COLS), np.uint8)
    expected[2, 3:6, 2:5] = 1
    np.testing.assert_array_equal(from_display(data, vol.metadata).transpose(2, 1, 0), expected)
    assert kwargs["metadata"]["label_names"] == {1: "lesion"}
