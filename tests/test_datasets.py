"""Datasets on small synthetic trees: 2-D folder pairs, the CVC alias, NIfTI volumes, splits, boxes,
and the one-error-for-all-bad-files validation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import skimage.io
import tifffile

from src_training.data import (
    BCV_ORGANS,
    DatasetError,
    FolderPairDataset,
    NiftiSliceDataset,
    box_from_mask,
    detect_layout,
    jitter_box,
    mask_to_box,
    open_dataset,
    split_dataset,
    validate_dataset,
)

# ---------------------------------------------------------------- helpers


def rgb_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def save_u8(path: Path, mask: np.ndarray) -> None:
    skimage.io.imsave(path, (mask * 255).astype(np.uint8), check_contrast=False)


def kvasir_tree(root: Path) -> dict[str, np.ndarray]:
    """images/*.png (+ one .tif) and masks/*.jpg (lossy); 'two' has two blobs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    masks = {
        "one": disk(48, 64, 20, 30, 10),
        "two": disk(48, 64, 12, 12, 7) | disk(48, 64, 34, 48, 8),
        "tiff": disk(48, 64, 24, 32, 12),
    }
    for i, (stem, mask) in enumerate(masks.items()):
        image = rgb_image(48, 64, seed=i)
        if stem == "tiff":
            tifffile.imwrite(root / "images" / f"{stem}.tif", image)
        else:
            skimage.io.imsave(root / "images" / f"{stem}.png", image, check_contrast=False)
        if stem == "two":  # Kvasir's JPEG masks are RGB
            mask = np.repeat(mask[..., None], 3, axis=2)
        save_u8(root / "masks" / f"{stem}.jpg", mask)
    return masks


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def ct_case(shape=(32, 24, 6)):
    """A CT volume in HU and a label volume: organ 1 on z=1,2; organ 6 on z=2,4; z=0,3,5 empty."""
    image = np.full(shape, -1000.0, np.float32)  # air -> 0 after windowing
    image[4:12, 4:12, :] = 75.0  # mid window -> 0.5
    image[20:28, 4:12, :] = 400.0  # above the window -> 1
    image[20:28, 14:20, :] = -125.0  # window bottom -> 0
    label = np.zeros(shape, np.uint8)
    label[4:12, 4:12, 1:3] = 1
    label[20:28, 4:12, 2] = 6
    label[20:26, 6:10, 4] = 6
    return image, label


def bcv_tree(root: Path, affine=None, n: int = 1) -> None:
    (root / "img").mkdir(parents=True)
    (root / "label").mkdir()
    affine = np.diag([0.8, 0.7, 2.5, 1.0]) if affine is None else affine
    for k in range(n):
        image, label = ct_case()
        write_nifti(root / "img" / f"img{k + 1:04d}.nii.gz", image, affine)
        write_nifti(root / "label" / f"label{k + 1:04d}.nii.gz", label, affine)


# ---------------------------------------------------------------- 2-D folders


def test_kvasir_layout_objects_and_values(tmp_path):
    masks = kvasir_tree(tmp_path)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, FolderPairDataset)
    assert len(ds) == 4  # one + two blobs + tiff
    assert ds.case_ids.count("two") == 2
    by_case = ds.indices_by_case()
    for stem, indices in by_case.items():
        union = np.zeros_like(masks[stem])
        for i in indices:
            s = ds[i]
            assert s.image.dtype == np.float32 and s.image.shape == (48, 64, 3)
            assert 0.0 <= s.image.min() and s.image.max() <= 1.0
            assert s.mask.dtype == bool and s.mask.shape == (48, 64)
            assert s.case_id == stem and s.spacing is None and s.label_id == 1
            assert stem in s.source
            union |= s.mask
        # JPEG noise is thresholded away: the objects match the drawn disks
        iou = (union & masks[stem]).sum() / (union | masks[stem]).sum()
        assert iou > 0.95
    two = [ds[i].mask for i in by_case["two"]]
    assert not (two[0] & two[1]).any()
    expected = rgb_image(48, 64, seed=2).astype(np.float32) / 255  # the tif, read exactly
    np.testing.assert_allclose(ds[by_case["tiff"][0]].image, expected, atol=1e-6)


def test_min_area_drops_small_components(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = disk(40, 40, 20, 20, 8)
    mask[1:3, 1:3] = True  # a 4 px speck
    skimage.io.imsave(tmp_path / "images" / "a.png", rgb_image(40, 40), check_contrast=False)
    save_u8(tmp_path / "masks" / "a.png", mask)
    assert len(open_dataset(tmp_path)) == 1
    assert len(open_dataset(tmp_path, min_area=1)) == 2


def test_instance_id_mask_gives_one_sample_per_id(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    ids = np.zeros((30, 30), np.uint8)
    ids[2:10, 2:10] = 3
    ids[15:25, 15:25] = 7
    ids[2:10, 20:28] = 9
    image = np.arange(900, dtype=np.uint16).reshape(30, 30) * 70  # grey 16-bit
    tifffile.imwrite(tmp_path / "images" / "x.tif", image)
    skimage.io.imsave(tmp_path / "masks" / "x.png", ids, check_contrast=False)
    ds = open_dataset(tmp_path)
    assert sorted(ds[i].label_id for i in range(len(ds))) == [3, 7, 9]
    s = next(s for s in ds if s.label_id == 7)
    np.testing.assert_array_equal(s.mask, ids == 7)
    assert s.image.shape == (30, 30)
    np.testing.assert_allclose(s.image, image / 65535.0, rtol=1e-6)
    assert len(open_dataset(tmp_path, mask_mode="binary")) == 3  # three separate blobs anyway


def test_cvc_alias(tmp_path):
    (tmp_path / "Original").mkdir()
    (tmp_path / "Ground Truth").mkdir()
    for k in (1, 2):
        tifffile.imwrite(tmp_path / "Original" / f"{k}.tif", rgb_image(32, 40, seed=k))
        tifffile.imwrite(
            tmp_path / "Ground Truth" / f"{k}.tif", (disk(32, 40, 16, 20, 6) * 255).astype(np.uint8)
        )
    assert detect_layout(tmp_path).description.startswith("Original/")
    ds = open_dataset(tmp_path)
    assert len(ds) == 2 and sorted(ds.cases()) == ["1", "2"]
    np.testing.assert_array_equal(ds[0].mask, disk(32, 40, 16, 20, 6))


def test_unknown_layout_names_accepted_ones(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path)
    for name in ("images/ + masks/", "Original/ + Ground Truth/", "img/ + label/", "imagesTr/"):
        assert name in str(err.value)
    with pytest.raises(DatasetError, match="not a folder"):
        open_dataset(tmp_path / "missing")


def test_samples_do_not_share_cached_arrays(tmp_path):
    kvasir_tree(tmp_path)
    ds = open_dataset(tmp_path)
    a = ds[0]
    a.image[:] = 0
    assert ds[0].image.max() > 0


# ---------------------------------------------------------------- NIfTI


def test_bcv_volume_slices_window_spacing_and_organs(tmp_path):
    bcv_tree(tmp_path)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, NiftiSliceDataset)
    got = sorted((int(s.source.split("z=")[1].split(":")[0]), s.label_id) for s in ds)
    assert got == [(1, 1), (2, 1), (2, 6), (4, 6)]  # empty slices 0, 3, 5 skipped
    for s in ds:
        assert s.case_id == "img0001"
        assert s.spacing == pytest.approx((0.7, 0.8))  # (rows = y, columns = x)
        assert s.label_name == BCV_ORGANS[s.label_id]
        assert s.image.dtype == np.float32 and s.mask.dtype == bool
        assert s.image.shape == s.mask.shape == (24, 32)  # rows y, columns x
        assert set(np.unique(s.image)) <= {0.0, 0.5, 1.0}
        assert s.image.min() == 0.0 and s.image.max() == 1.0
    spleen = next(s for s in ds if s.label_id == 1)
    assert spleen.label_name == "spleen"
    assert spleen.image[spleen.mask].tolist() == [0.5] * 64  # 75 HU in [-125, 275] -> 0.5
    liver = [s for s in ds if s.label_id == 6]
    assert [s.label_name for s in liver] == ["liver", "liver"]
    assert np.all(liver[0].image[liver[0].mask] == 1.0)  # 400 HU clipped to 1


def test_nifti_orientation_is_radiological_and_independent_of_storage(tmp_path):
    """The same anatomy stored RAS and LPS (flipped x and y) gives the same slices."""
    ras, lps = tmp_path / "ras", tmp_path / "lps"
    bcv_tree(ras, np.diag([0.8, 0.7, 2.5, 1.0]))
    image, label = ct_case()
    (lps / "img").mkdir(parents=True)
    (lps / "label").mkdir()
    flip = np.diag([-0.8, -0.7, 2.5, 1.0])
    flip[:3, 3] = [(32 - 1) * 0.8, (24 - 1) * 0.7, 0]
    write_nifti(lps / "img" / "img0001.nii.gz", image[::-1, ::-1].copy(), flip)
    write_nifti(lps / "label" / "label0001.nii.gz", label[::-1, ::-1].copy(), flip)
    a, b = open_dataset(ras), open_dataset(lps)
    assert len(a) == len(b)
    for sa, sb in zip(a, b):
        np.testing.assert_array_equal(sa.image, sb.image)
        np.testing.assert_array_equal(sa.mask, sb.mask)
        assert sa.spacing == pytest.approx(sb.spacing)
    # the spleen sits at low x (patient left) and low y (posterior): bottom right when displayed
    spleen = next(s for s in a if s.label_id == 1)
    rows, cols = np.nonzero(spleen.mask)
    assert rows.min() >= 12 and cols.min() >= 16


def test_nifti_organ_filter_window_and_imagestr_layout(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    image, label = ct_case()
    write_nifti(tmp_path / "imagesTr" / "amos_0001_0000.nii.gz", image, np.eye(4))
    write_nifti(tmp_path / "labelsTr" / "amos_0001.nii.gz", label, np.eye(4))
    (tmp_path / "dataset.json").write_text('{"labels": {"0": "background", "1": "spleen", "6": "liver"}}')
    ds = open_dataset(tmp_path, organs=[6], window=(-1000, 1000))
    assert [s.label_id for s in ds] == [6, 6]
    assert ds[0].label_name == "liver" and ds[0].case_id == "amos_0001_0000"
    assert ds[0].spacing == (1.0, 1.0)
    assert ds[0].image.min() == pytest.approx(0.0) and ds[0].image.max() == pytest.approx(0.7)
    with pytest.raises(DatasetError, match="no sample"):
        open_dataset(tmp_path, organs=[13])


def test_nifti_volume_cache_reads_each_volume_once(tmp_path, monkeypatch):
    bcv_tree(tmp_path, n=2)
    ds = open_dataset(tmp_path, cache_size=1)
    import src_training.data.nifti as nifti

    calls = []
    original = nifti.read_volume
    monkeypatch.setattr(nifti, "read_volume", lambda *a: calls.append(a[0]) or original(*a))
    for indices in ds.indices_by_case().values():
        for i in indices:
            ds[i]
    assert len(calls) == 2


# ---------------------------------------------------------------- splits


def many_cases(root: Path, n: int = 20) -> FolderPairDataset:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    two_blobs = disk(24, 24, 5, 5, 3) | disk(24, 24, 17, 17, 3)
    for k in range(n):
        skimage.io.imsave(root / "images" / f"c{k:02d}.png", rgb_image(24, 24, k), check_contrast=False)
        save_u8(root / "masks" / f"c{k:02d}.png", two_blobs)
    return open_dataset(root)


def test_random_split_is_deterministic_by_case(tmp_path):
    ds = many_cases(tmp_path)
    assert len(ds) == 40
    a, b = split_dataset(ds, seed=0), split_dataset(ds, seed=0)
    assert {k: v.indices for k, v in a.items()} == {k: v.indices for k, v in b.items()}
    assert [len(a[k].cases()) for k in ("train", "val", "test")] == [12, 4, 4]
    assert [len(a[k]) for k in ("train", "val", "test")] == [24, 8, 8]
    cases = [set(a[k].cases()) for k in ("train", "val", "test")]
    assert not (cases[0] & cases[1]) and not (cases[0] & cases[2]) and not (cases[1] & cases[2])
    assert set.union(*cases) == set(ds.cases())
    c = split_dataset(ds, seed=1)
    assert c["train"].cases() != a["train"].cases()
    assert len(split_dataset(ds, fractions=(0.5, 0.25, 0.25))["train"].cases()) == 10
    sample = a["val"][0]
    assert sample.case_id in a["val"].cases()
    with pytest.raises(ValueError, match="fractions"):
        split_dataset(ds, fractions=(0.5, 0.5, 0.5))


def test_split_lists_in_folder_and_given(tmp_path):
    ds = many_cases(tmp_path / "data")
    (tmp_path / "data" / "train.txt").write_text("c00\nc01.png\n\n# comment\nimages/c02.png\n")
    (tmp_path / "data" / "val.txt").write_text("c03\n")
    (tmp_path / "data" / "test.txt").write_text("c04\nc05\n")
    splits = split_dataset(ds, seed=123)  # lists in the root win over the random split
    assert splits["train"].cases() == ["c00", "c01", "c02"]
    assert splits["val"].cases() == ["c03"] and splits["test"].cases() == ["c04", "c05"]
    other = tmp_path / "lists"
    other.mkdir()
    (other / "train.txt").write_text("c10\n")
    (other / "val.txt").write_text("c11\n")
    assert split_dataset(ds, lists=other)["train"].cases() == ["c10"]
    given = split_dataset(ds, lists={"train": other / "val.txt", "test": other / "train.txt"})
    assert given["train"].cases() == ["c11"] and given["test"].cases() == ["c10"] and len(given["val"]) == 0
    (other / "val.txt").write_text("c10\nnot_a_case\n")
    with pytest.raises(DatasetError) as err:
        split_dataset(ds, lists=other)
    assert "not_a_case" in str(err.value) and "also in the train list" in str(err.value)


def test_split_by_volume_for_nifti(tmp_path):
    bcv_tree(tmp_path, n=5)
    splits = split_dataset(open_dataset(tmp_path), seed=0)
    assert [len(splits[k].cases()) for k in ("train", "val", "test")] == [3, 1, 1]
    assert all(len(splits[k]) == 4 * len(splits[k].cases()) for k in splits)


# ---------------------------------------------------------------- boxes


def test_tight_box_uses_pixel_edges():
    m = np.zeros((10, 12), bool)
    m[3, 5] = True
    np.testing.assert_array_equal(mask_to_box(m), [5, 3, 6, 4])
    m[7, 9] = True
    np.testing.assert_array_equal(box_from_mask(m), [5, 3, 10, 8])
    full = np.ones((10, 12), bool)
    np.testing.assert_array_equal(
        box_from_mask(full, jitter=20, rng=np.random.default_rng(0)), [0, 0, 12, 10]
    )
    with pytest.raises(ValueError, match="empty"):
        mask_to_box(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="rng"):
        box_from_mask(m, jitter=5)


def test_jitter_within_bounds_and_reproducible():
    m = np.zeros((100, 120), bool)
    m[40:60, 50:80] = True
    tight = mask_to_box(m)
    rng = np.random.default_rng(7)
    boxes = np.array([box_from_mask(m, jitter=20, rng=rng) for _ in range(500)])
    grow = np.concatenate([tight[:2] - boxes[:, :2], boxes[:, 2:] - tight[2:]], axis=1)
    assert grow.min() == 0 and grow.max() == 20  # 0..20 px per side, outward
    assert np.all(grow == np.round(grow))
    again = np.array([box_from_mask(m, jitter=20, rng=np.random.default_rng(7)) for _ in range(1)])
    np.testing.assert_array_equal(again[0], boxes[0])
    corner = np.zeros((100, 120), bool)
    corner[2:10, 110:118] = True
    clipped = np.array([box_from_mask(corner, jitter=20, rng=rng) for _ in range(200)])
    assert clipped[:, :2].min() >= 0 and clipped[:, 2].max() <= 120 and clipped[:, 3].max() <= 100
    both = np.array([jitter_box(tight, m.shape, 20, rng, mode="both") for _ in range(500)])
    assert np.all(both[:, 2] - both[:, 0] >= 1) and np.all(both[:, 3] - both[:, 1] >= 1)
    assert (both[:, 0] > tight[0]).any() and (both[:, 0] < tight[0]).any()
    assert np.all(np.abs(both - tight) <= 20)


# ---------------------------------------------------------------- bad data


def bad_folder_tree(root: Path) -> dict[str, str]:
    """Every kind of bad 2-D file next to one good pair; returns {file name: expected reason}."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    good = disk(20, 20, 10, 10, 5)

    def image(stem, h=20, w=20):
        skimage.io.imsave(root / "images" / f"{stem}.png", rgb_image(h, w), check_contrast=False)

    image("good")
    save_u8(root / "masks" / "good.png", good)
    image("lonely_image")
    save_u8(root / "masks" / "lonely_mask.png", good)
    (root / "images" / "corrupt_image.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    save_u8(root / "masks" / "corrupt_image.png", good)
    image("corrupt_mask")
    (root / "masks" / "corrupt_mask.jpg").write_bytes(b"\xff\xd8\xff garbage")
    image("empty")
    save_u8(root / "masks" / "empty.png", np.zeros((20, 20), bool))
    image("mismatch", 24, 24)
    save_u8(root / "masks" / "mismatch.png", good)
    return {
        "lonely_image.png": "image without mask",
        "lonely_mask.png": "mask without image",
        "corrupt_image.png": "cannot read image",
        "corrupt_mask.jpg": "cannot read mask",
        "empty.png": "empty mask",
        "mismatch.png": "shape mismatch",
    }


def test_every_bad_2d_file_is_listed_in_one_error(tmp_path):
    expected = bad_folder_tree(tmp_path)
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{len(expected)} problem(s) in the dataset at {tmp_path}")
    lines = message.splitlines()
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in lines), (name, reason, message)
    assert "good.png" not in message
    assert len(err.value.problems) == len(expected)
    assert isinstance(err.value, ValueError)
    with pytest.raises(DatasetError) as again:
        validate_dataset(tmp_path)
    assert again.value.problems == err.value.problems


def test_skipping_bad_files_when_not_validating(tmp_path):
    bad_folder_tree(tmp_path)
    ds = open_dataset(tmp_path, validate=False)
    # corrupt images and shape mismatches are only found when images are read
    assert ds.cases() == ["corrupt_image", "good", "mismatch"]
    assert len(ds.problems) == 4
    with pytest.raises(DatasetError, match="mismatch"):
        ds[ds.case_ids.index("mismatch")]
    with pytest.raises(DatasetError) as err:
        validate_dataset(ds)
    assert len(err.value.problems) == 6
    with pytest.raises(DatasetError) as shallow:
        validate_dataset(ds, deep=False)
    assert len(shallow.value.problems) == 4


def test_every_bad_nifti_file_is_listed_in_one_error(tmp_path):
    bcv_tree(tmp_path, n=1)
    image, label = ct_case()
    eye = np.eye(4)
    write_nifti(tmp_path / "img" / "img0002.nii.gz", image, eye)  # no label
    write_nifti(tmp_path / "label" / "label0003.nii.gz", label, eye)  # no image
    write_nifti(tmp_path / "img" / "img0004.nii.gz", image, eye)
    write_nifti(tmp_path / "label" / "label0004.nii.gz", np.zeros_like(label), eye)  # empty
    write_nifti(tmp_path / "img" / "img0005.nii.gz", image[:, :, :4], eye)  # shape mismatch
    write_nifti(tmp_path / "label" / "label0005.nii.gz", label, eye)
    good = (tmp_path / "img" / "img0001.nii.gz").read_bytes()
    (tmp_path / "img" / "img0006.nii.gz").write_bytes(good[: len(good) // 2])  # truncated
    write_nifti(tmp_path / "label" / "label0006.nii.gz", label, eye)
    (tmp_path / "img" / "img0007.nii.gz").write_bytes(b"not a nifti")
    write_nifti(tmp_path / "label" / "label0007.nii.gz", label, eye)
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path)
    lines = str(err.value).splitlines()
    expected = {
        "img0002.nii.gz": "image without label",
        "label0003.nii.gz": "label without image",
        "label0004.nii.gz": "empty label volume",
        "img0005.nii.gz": "shape mismatch",
        "img0006.nii.gz": "cannot read image",
        "img0007.nii.gz": "cannot read image",
    }
    for name, reason in expected.items():
        assert any(name in line and reason in line for line in lines), (name, reason, str(err.value))
    assert len(err.value.problems) == len(expected)
    assert not any("img0001" in line for line in lines)
    ds = open_dataset(tmp_path, validate=False)
    assert ds.cases() == ["img0001", "img0006"]  # the truncated image shows up only when read


def test_duplicate_stems_are_reported(tmp_path):
    kvasir_tree(tmp_path)
    skimage.io.imsave(tmp_path / "images" / "one.jpg", rgb_image(48, 64), check_contrast=False)
    with pytest.raises(DatasetError) as err:
        open_dataset(tmp_path)
    assert "several files share the name 'one'" in str(err.value)
    assert len(err.value.problems) == 2
