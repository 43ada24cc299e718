"""Headers that lie (issue 19): every file is built from the real samples in tmp_path.

Each is either refused with one sentence naming the file, the header field and the fix,
or read right (nibabel's rule for NIfTI) with a warning that names the field.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from malformed import (
    copy_dicom_series,
    copy_tree,
    dicom_with_value,
    metaimage_with,
    nifti_field,
    nifti_with,
    nrrd_with,
    rotation,
)

from napari_vertebra.cli import main
from napari_vertebra.core import CTReadError, read_ct, run_pipeline


@pytest.fixture(scope="module")
def lumbar_img(lumbar_ct_path):
    """The lumbar sample (3 mm, RAS, sform_code 2, qform_code 0) as SimpleITK reads it."""
    return sitk.ReadImage(str(lumbar_ct_path))


@pytest.fixture(scope="module")
def lumbar_raw_header(lumbar_ct_path):
    import gzip

    return gzip.decompress(lumbar_ct_path.read_bytes())


def _refused(path, *words) -> str:
    """Read ``path``, expect a one-sentence CTReadError naming it and ``words``."""
    with pytest.raises(CTReadError) as e:
        read_ct(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert "cut short or corrupt" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- NIfTI
def test_pixdim_zero_with_a_sform_takes_the_sform_and_warns(
    tmp_path, lumbar_ct_path, lumbar_raw_header, capfd
):
    """pixdim[3] = 0 (3 mm true): SimpleITK alone takes 1 mm and says so only on stderr."""
    pix = nifti_field(lumbar_raw_header, "pixdim")
    pix[3] = 0.0
    path = nifti_with(lumbar_ct_path, tmp_path / "pixdim0.nii", pixdim=pix)
    assert sitk.ReadImage(str(path)).GetSpacing()[2] == pytest.approx(1.0)  # the old reading
    capfd.readouterr()
    ct, clean = read_ct(path), read_ct(lumbar_ct_path)
    assert ct.spacing == pytest.approx(clean.spacing) and ct.spacing[0] == pytest.approx(3.0)
    assert ct.same_grid(clean)
    assert len(ct.warnings) == 1 and "pixdim" in ct.warnings[0] and "sform" in ct.warnings[0]
    assert "NiftiImageIO" not in capfd.readouterr().err  # no raw ITK text instead
    res = run_pipeline(ct)
    assert res.mip.shape == run_pipeline(clean).mip.shape  # not squashed 3x
    assert any("pixdim" in w for w in res.warnings)


@pytest.mark.parametrize("value", [0.0, -3.0])
def test_bad_pixdim_without_a_sform_is_refused(tmp_path, lumbar_ct_path, lumbar_raw_header,
                                               value):  # fmt: skip
    pix = nifti_field(lumbar_raw_header, "pixdim")
    pix[3] = value
    for codes in ((1, 0), (0, 0)):  # qform only, no transform at all
        path = nifti_with(lumbar_ct_path, tmp_path / f"pix{value}_{codes[0]}.nii.gz",
                          pixdim=pix, codes=codes)  # fmt: skip
        _refused(path, "pixdim[3]", "voxel size", "set_zooms")


def test_negative_pixdim_with_a_sform_is_not_a_flip(tmp_path, lumbar_ct_path, lumbar_raw_header):
    """SimpleITK turns pixdim[3] = -3 into a head-feet flip; the sform (nibabel) does not."""
    pix = nifti_field(lumbar_raw_header, "pixdim")
    pix[3] = -3.0
    path = nifti_with(lumbar_ct_path, tmp_path / "pixneg.nii.gz", pixdim=pix)
    ct, clean = read_ct(path), read_ct(lumbar_ct_path)
    assert ct.same_grid(clean)
    np.testing.assert_array_equal(ct.array, clean.array)
    assert len(ct.warnings) == 1 and "pixdim" in ct.warnings[0]


@pytest.mark.parametrize("change", ["rotate-30", "flip-left-right"])
def test_sform_and_qform_that_disagree_take_the_sform_and_warn(
    tmp_path, lumbar_ct_path, lumbar_raw_header, change
):
    """Both codes set (qform: the sample's grid), the sform changed: nibabel's choice."""
    srow = nifti_field(lumbar_raw_header, "srow").reshape(3, 4)
    if change == "rotate-30":
        srow[:, :3] = rotation("z", 30.0) @ srow[:, :3]
    else:
        srow[0] *= -1
    agree = nifti_with(lumbar_ct_path, tmp_path / "agree.nii.gz", codes=(1, 2))
    assert read_ct(agree).warnings == ()  # both codes set, the same grid: nothing to say
    path = nifti_with(lumbar_ct_path, tmp_path / f"{change}.nii.gz", codes=(1, 2), srow=srow)
    ct = read_ct(path)
    assert len(ct.warnings) == 1
    w = ct.warnings[0]
    assert "sform" in w and "qform" in w and "nibabel" in w and "sform_code" in w
    # the grid is the sform's: voxel (i, j, k) at srow @ (i, j, k, 1) in RAS
    ijk = np.array([10.0, 20.0, 30.0, 1.0])
    ras = srow @ ijk
    lps = np.array([-ras[0], -ras[1], ras[2]])
    img = sitk.ReadImage(str(path))
    raw_zyx = np.array([ijk[2], ijk[1], ijk[0]])
    # the same voxel value sits at that position in the reoriented volume
    idx = np.rint(ct.physical_to_index(lps)).astype(int)
    assert ct.array[tuple(idx)] == sitk.GetArrayFromImage(img)[tuple(raw_zyx.astype(int))]


def test_sheared_sform_is_refused(tmp_path, lumbar_ct_path, lumbar_raw_header):
    srow = nifti_field(lumbar_raw_header, "srow").reshape(3, 4)
    srow[0, 2] = 1.5  # z axis leans into x
    path = nifti_with(lumbar_ct_path, tmp_path / "shear.nii.gz", srow=srow)
    _refused(path, "sform", "srow", "not orthogonal")


def test_4d_and_vector_images_say_what_they_are(tmp_path, lumbar_img):
    arr = sitk.GetArrayFromImage(lumbar_img)
    stacked = tmp_path / "stacked.nii.gz"  # what GetImageFromArray makes of a 4D array
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([arr, arr])), str(stacked))
    msg = _refused(stacked, "122 values per voxel", "isVector=False", "3D file")
    assert "components" not in msg
    series = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([arr, arr]), isVector=False), str(series))
    _refused(series, "4D", "2 volumes", "122x101x112", "3D file")


# ----------------------------------------------------------------------- MHA and NRRD
@pytest.mark.parametrize(
    ("matrix", "words"),
    [
        ("-2 0 0 0 -2 0 0 0 2", ("scales the grid", "2, 2, 2")),
        ("-1 0 0 0 -1 0 0.5 0 1", ("not orthogonal", "shear")),
        ("-1 0 0 -1 0 0 0 0 1", ("singular",)),
        ("0 0 0 0 0 0 0 0 0", ("singular",)),
    ],
)
def test_mha_direction_that_is_not_a_rotation_is_refused(tmp_path, lumbar_img, matrix, words):
    path = metaimage_with(lumbar_img, tmp_path / "direction.mha", TransformMatrix=matrix)
    _refused(path, "TransformMatrix", "ElementSpacing", "1 0 0 0 1 0 0 0 1", *words)


@pytest.mark.parametrize(("spacing", "what"), [("3 3 0", "zero"), ("3 3 -3", "negative")])
def test_mha_spacing_not_positive_is_refused(tmp_path, lumbar_img, spacing, what):
    path = metaimage_with(lumbar_img, tmp_path / "spacing.mha", ElementSpacing=spacing)
    _refused(path, "ElementSpacing", what, "third")


@pytest.mark.parametrize(
    ("directions", "words"),
    [
        ("(-3,0,0) (0,-3,0) (1.5,0,3)", ("not orthogonal",)),
        ("(-3,0,0) (0,-3,0) (0,0,0)", ("zero",)),
        ("(-3,0,0) (-3,0,0) (0,0,3)", ("singular",)),
    ],
)
def test_nrrd_space_directions_that_lie_are_refused(tmp_path, lumbar_img, directions, words):
    path = nrrd_with(lumbar_img, tmp_path / "directions.nrrd", directions)
    _refused(path, "space directions", *words)


def test_a_refused_header_writes_nothing_and_exits_1(tmp_path, lumbar_img, capsys):
    path = metaimage_with(lumbar_img, tmp_path / "x2.mha", TransformMatrix="-2 0 0 0 -2 0 0 0 2")
    out = tmp_path / "out"
    assert main(["preprocess", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {path}" in err and "TransformMatrix" in err and "Traceback" not in err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_a_corrected_header_is_said_in_the_report(tmp_path, lumbar_ct_path, lumbar_raw_header):
    pix = nifti_field(lumbar_raw_header, "pixdim")
    pix[3] = 0.0
    path = nifti_with(lumbar_ct_path, tmp_path / "pixdim0.nii.gz", pixdim=pix)
    out = tmp_path / "out"
    assert main(["preprocess", str(path), "-o", str(out)]) == 0
    report = json.loads(next(out.rglob("report.json")).read_text(encoding="utf-8"))
    assert any("pixdim" in w for w in report["warnings"])
    assert report["decisions"]["read"] == [w for w in report["warnings"] if "pixdim" in w]


# ----------------------------------------------------------------------------- DICOM
@pytest.mark.parametrize("name", ["broken.dcm", "CT.0.dcm", "zzz"])
def test_dicom_folder_with_a_broken_link_keeps_its_geometry(tmp_path, dicom_dir, name):
    """GDCM's scanner drops readable slices next to a file it cannot open."""
    folder = copy_tree(dicom_dir, tmp_path / "dicom")
    os.symlink(tmp_path / "nonexistent", folder / name)
    ct, clean = read_ct(folder), read_ct(dicom_dir)
    assert ct.same_grid(clean) and ct.shape == (20, 512, 512)
    np.testing.assert_array_equal(ct.array, clean.array)
    assert len(ct.warnings) == 1
    assert name in ct.warnings[0] and "missing file" in ct.warnings[0]
    res = run_pipeline(ct)
    assert res.decisions["crop"] == "kmeans" and res.decisions["orientation"] == "ok"


def test_dicom_folder_of_rewritten_slices_with_a_broken_link(tmp_path, dicom_dir):
    folder = tmp_path / "rewritten"
    files = copy_dicom_series(dicom_dir, folder)
    os.symlink(tmp_path / "nonexistent", folder / "010a.dcm")  # sorts among the slices
    ct = read_ct(folder)
    assert ct.shape == (20, 512, 512) and ct.spacing[0] == pytest.approx(2.0)
    assert "010a.dcm" in ct.warnings[0]
    # a missing slice among them is still found
    files[5].unlink()
    _refused(folder, "missing", files[4].name, files[6].name)


def test_dicom_folder_without_any_readable_slice(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM", encoding="utf-8")
    os.symlink(tmp_path / "nonexistent", tmp_path / "gone.dcm")
    _refused(tmp_path, "no DICOM series", "2 files", "gone.dcm", ".nii.gz")


@pytest.mark.parametrize(("value", "shown"), [(b"0\\0", "0, 0"), (b"-0.9765625\\-0.9765625",
                                                                    "-0.976562")])  # fmt: skip
def test_dicom_pixel_spacing_not_positive_is_refused(tmp_path, dicom_dir, value, shown):
    folder = dicom_with_value(dicom_dir, tmp_path / "ps", 0x0028, 0x0030, value)
    assert sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))).GetSpacing()[
        0
    ] in (1.0, 0.9765625)  # what ITK alone makes of it
    _refused(folder, "PixelSpacing (0028,0030)", shown, "positive")


def test_dicom_slices_at_one_position_are_refused(tmp_path, dicom_dir):
    first = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_dir))[0]
    pos = sitk.ReadImage(first).GetMetaData("0020|0032").strip().encode()
    folder = dicom_with_value(dicom_dir, tmp_path / "samepos", 0x0020, 0x0032, pos)
    _refused(folder, "one position", "ImagePositionPatient (0020,0032)", "zero")
