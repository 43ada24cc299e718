"""Reading CTs and label maps: geometry of the real samples and clear errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vertebra.core import CTReadError, MultipleSeriesError, read_ct, read_labels


def test_dicom_folder_matches_its_label_map(dicom_dir, dicom_labels_path):
    ct = read_ct(dicom_dir)
    labels = read_labels(dicom_labels_path, like=ct)
    assert ct.shape == labels.shape == (20, 512, 512)
    np.testing.assert_allclose(ct.spacing, labels.spacing, atol=1e-4)
    np.testing.assert_allclose(ct.origin, labels.origin, atol=1e-3)
    np.testing.assert_allclose(ct.direction, np.eye(3), atol=1e-6)  # LPS
    assert {32, 33} <= set(np.unique(labels.array))


def test_pir_file_is_reoriented_to_lps(tptbox_ct_path):
    ct = read_ct(tptbox_ct_path)
    np.testing.assert_allclose(ct.direction, np.eye(3), atol=1e-6)
    raw = sitk.ReadImage(str(tptbox_ct_path))
    assert sorted(ct.shape) == sorted(raw.GetSize())


def test_missing_file(tmp_path):
    p = tmp_path / "nothing.nii.gz"
    with pytest.raises(CTReadError, match="no such file") as e:
        read_ct(p)
    assert str(p) in str(e.value)


def test_text_file_named_nii(tmp_path):
    p = tmp_path / "notes.nii"
    p.write_text("this is not an image\n", encoding="utf-8")
    with pytest.raises(CTReadError, match="not an image") as e:
        read_ct(p)
    assert str(p) in str(e.value)


def test_2d_image(tmp_path):
    p = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16), str(p))
    with pytest.raises(CTReadError, match="2D"):
        read_ct(p)


def test_4d_image(tmp_path):
    p = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(p))
    with pytest.raises(CTReadError, match="4D"):
        read_ct(p)


def test_truncated_gzip(tmp_path, lumbar_ct_path):
    data = lumbar_ct_path.read_bytes()
    p = tmp_path / "cut.nii.gz"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(CTReadError) as e:
        read_ct(p)
    assert str(p) in str(e.value)


def test_gzip_of_garbage(tmp_path):
    p = tmp_path / "garbage.nii.gz"
    p.write_bytes(gzip.compress(b"\0" * 1000))
    with pytest.raises(CTReadError):
        read_ct(p)


def _ct_slice(value: int) -> sitk.Image:
    """16 x 16 px: air, a soft-tissue body and a bone of ``value`` HU at its centre."""
    yy, xx = np.mgrid[:16, :16]
    r = np.hypot(yy - 8, xx - 8)
    arr = np.where(r < 6, 40, -1000).astype(np.int16)
    arr[r < 2] = value
    return sitk.GetImageFromArray(arr)


def _write_series(folder, uid: str, n: int, value: int, z0: float) -> None:
    """``n`` axial CT slices of one DICOM series (16 x 16 px, bone of ``value`` HU)."""
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for i in range(n):
        img = _ct_slice(value)
        img.SetSpacing((1.0, 1.0))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{i + 1}",
            "0008|103e": f"series {value}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0020|0013": str(i + 1),
            "0020|0032": f"0\\0\\{z0 + 2.0 * i}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "1\\1",
        }
        for k, v in tags.items():
            img.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"{uid[-3:]}_{i:03d}.dcm"))
        writer.Execute(img)


def test_dicom_folder_with_two_series(tmp_path):
    uid_a = "1.2.826.0.1.3680043.2.1125.101"
    uid_b = "1.2.826.0.1.3680043.2.1125.202"
    _write_series(tmp_path, uid_a, 4, 400, 0.0)
    _write_series(tmp_path, uid_b, 6, 700, 50.0)
    with pytest.raises(MultipleSeriesError) as e:
        read_ct(tmp_path)
    assert {s.uid for s in e.value.series} == {uid_a, uid_b}
    assert uid_a in str(e.value) and uid_b in str(e.value)
    a = read_ct(tmp_path, series=uid_a)
    b = read_ct(tmp_path, series=uid_b)
    assert a.shape == (4, 16, 16) and b.shape == (6, 16, 16)
    assert np.all(a.array[:, 8, 8] == 400) and np.all(b.array[:, 8, 8] == 700)
    assert a.warnings == b.warnings == ()
    assert a.spacing[0] == pytest.approx(2.0)
    with pytest.raises(CTReadError, match="no DICOM series"):
        read_ct(tmp_path, series="1.2.3")


def test_empty_folder(tmp_path):
    with pytest.raises(CTReadError, match="no DICOM series"):
        read_ct(tmp_path)


def test_label_grid_mismatch(lumbar, tptbox_labels_path):
    ct, _ = lumbar
    with pytest.raises(CTReadError, match="does not match"):
        read_labels(tptbox_labels_path, like=ct)


def test_pipeline_rejects_labels_on_another_grid(lumbar):
    from napari_vertebra.core import Volume, run_pipeline

    ct, labels = lumbar
    other = Volume(labels.array[:-1], labels.spacing, labels.origin, labels.direction)
    with pytest.raises(ValueError, match="grid"):
        run_pipeline(ct, labels=other)
