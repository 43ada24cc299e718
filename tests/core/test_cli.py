"""The ``napari-vertebra preprocess`` command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from napari_vertebra.cli import main
from napari_vertebra.commands.preprocess import expand_inputs, output_name, scan_name


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, lumbar_ct_path):
    """One run on the lumbar sample plus a broken file."""
    root = tmp_path_factory.mktemp("cli")
    broken = root / "broken.nii.gz"
    broken.write_text("not a CT", encoding="utf-8")
    out = root / "out"
    status = main(["preprocess", str(lumbar_ct_path), str(broken), "-o", str(out)])
    return root, out, broken, status


def test_outputs_written(cli_run, lumbar_ct_path, capsys):
    _, out, _, _ = cli_run
    scan = out / output_name(lumbar_ct_path)
    for name in ("mip.png", "mip.npy", "canal_centres.csv", "crop_box.json", "report.json"):
        assert (scan / name).is_file(), name
    assert not list(scan.glob(".*tmp*"))  # no temporary files left
    mip = np.load(scan / "mip.npy")
    assert mip.dtype == np.float32 and mip.ndim == 2
    png = Image.open(scan / "mip.png")
    assert png.mode in ("I;16", "I;16B", "I")
    arr = np.asarray(png)
    assert arr.shape == mip.shape
    report = json.loads((scan / "report.json").read_text(encoding="utf-8"))
    # the PNG reads back as HU with the COCO images' reader and the report's scale
    from napari_vertebra.annotation.image_files import read_image

    scale = report["mip_png_hu_scale"]
    assert scale * report["params"]["hu_max"] <= 65535
    np.testing.assert_allclose(read_image(scan / "mip.png", scale), mip, atol=0.5 / scale)
    assert report["mip_shape"] == list(mip.shape)
    assert 0 < report["canal_found_fraction"] <= 1
    (z0, z1), (y0, y1), _ = report["crop_box"]
    assert (z1 - z0, y1 - y0) == mip.shape
    lines = (scan / "canal_centres.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "z,y,x,found"
    assert len(lines) - 1 == report["resampled_shape"][0]
    assert (
        json.loads((scan / "crop_box.json").read_text(encoding="utf-8"))["crop_box"]
        == report["crop_box"]
    )


def test_failure_reported_and_status(cli_run, capsys):
    _, out, _, status = cli_run
    assert status != 0
    assert not (out / "broken" / "report.json").exists()


def test_rerun_skips_and_force(cli_run, lumbar_ct_path, capsys):
    _, out, broken, _ = cli_run
    report = out / output_name(lumbar_ct_path) / "report.json"
    mtime = report.stat().st_mtime_ns
    status = main(["preprocess", str(lumbar_ct_path), str(broken), "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 1
    assert "skipped 1" in captured.out and "failed 1" in captured.out
    assert f"FAILED {broken}" in captured.err
    assert report.stat().st_mtime_ns == mtime


def test_changed_params_are_redone(tmp_path, tptbox_ct_path, capsys):
    out = tmp_path / "out"
    assert main(["preprocess", str(tptbox_ct_path), "-o", str(out)]) == 0
    report = out / output_name(tptbox_ct_path) / "report.json"
    assert json.loads(report.read_text(encoding="utf-8"))["params"]["crop_margin_lr_mm"] != 50.0
    assert main(["preprocess", str(tptbox_ct_path), "-o", str(out), "--margin-lr", "50"]) == 0
    assert json.loads(report.read_text(encoding="utf-8"))["params"]["crop_margin_lr_mm"] == 50.0
    assert "skipped 0" in capsys.readouterr().out


def test_folder_of_scans_in_a_pool(tmp_path, tptbox_ct_path, dicom_dir, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(tptbox_ct_path, scans / "a.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(tptbox_ct_path)), str(scans / "b.nii"))
    (scans / "notes.txt").write_text("ignored", encoding="utf-8")
    assert [p.name for p in expand_inputs([scans])] == ["a.nii.gz", "b.nii"]
    assert expand_inputs([dicom_dir]) == [dicom_dir]  # a DICOM folder is one scan
    out = tmp_path / "out"
    status = main(["preprocess", str(scans), "-o", str(out), "--workers", "2",
                   "--params", '{"hu_min": 150}'])  # fmt: skip
    assert status == 0, capsys.readouterr()
    for name in ("a.nii.gz", "b.nii"):
        report = json.loads(
            (out / output_name(scans / name) / "report.json").read_text(encoding="utf-8")
        )
        assert report["params"]["hu_min"] == 150


def test_scan_names_and_bad_params(tmp_path, lumbar_ct_path, capsys):
    assert scan_name(tmp_path / "x.nii.gz") == "x"
    assert scan_name(tmp_path / "dicom_folder") == "dicom_folder"
    # same name in two folders, or with two suffixes: distinct output folders
    names = {output_name(tmp_path / p) for p in ("a/x.nii.gz", "b/x.nii.gz", "a/x.nrrd")}
    assert len(names) == 3 and all(n.startswith("x-") for n in names)
    assert output_name(tmp_path / "a" / "x.nii.gz") == output_name(tmp_path / "a/./x.nii.gz")
    status = main(["preprocess", str(lumbar_ct_path), "-o", str(tmp_path), "--params", "{x"])
    assert status == 2
    assert "error:" in capsys.readouterr().err


def test_report_carries_warnings_and_decisions(cli_run, lumbar_ct_path):
    _, out, _, _ = cli_run
    report = json.loads(
        (out / output_name(lumbar_ct_path) / "report.json").read_text(encoding="utf-8")
    )
    assert report["warnings"] == []  # the clean sample: nothing to report
    assert report["decisions"]["crop"] == "kmeans"
    assert report["decisions"]["orientation"] == "ok"
    assert report["decisions"]["crop_reason"]
    assert report["source"]["path"] == str(lumbar_ct_path.resolve())
    assert report["source"]["size"] == lumbar_ct_path.stat().st_size


def _write_cut(src, dst, z0, z1):
    """Axial slices z0..z1 of a real CT, geometry kept (SimpleITK indexes x, y, z)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.ReadImage(str(src))[:, :, z0:z1], str(dst))


def _report(out, path):
    return json.loads((out / output_name(path) / "report.json").read_text(encoding="utf-8"))


def test_same_stem_inputs_get_their_own_outputs(tmp_path, lumbar_ct_path, tptbox_ct_path,
                                                capsys):  # fmt: skip
    """``preprocess a/ct b/ct`` after ``b/ct a/ct``: each folder keeps its own scan."""
    a, b = tmp_path / "a" / "ct.nii.gz", tmp_path / "b" / "ct.nii.gz"
    _write_cut(lumbar_ct_path, a, 0, 20)  # 20 slices of pelvis only: a crop fallback
    b.parent.mkdir()
    shutil.copy(tptbox_ct_path, b)
    out = tmp_path / "out"
    assert main(["preprocess", str(b), str(a), "-o", str(out)]) == 0
    out_text, err = capsys.readouterr()
    assert output_name(a) != output_name(b)
    ra, rb = _report(out, a), _report(out, b)
    assert ra["source"]["path"] == str(a.resolve()) and rb["source"]["path"] == str(b.resolve())
    assert ra["input_shape"] == [20, *sitk.ReadImage(str(lumbar_ct_path)).GetSize()[1::-1]]
    mip_a = np.load(out / output_name(a) / "mip.npy")
    mip_b = np.load(out / output_name(b) / "mip.npy")
    assert mip_a.shape != mip_b.shape
    # the pelvis-only scan's warning is in its report and printed with its path
    assert ra["warnings"] and ra["decisions"]["crop"].startswith("fallback")
    assert rb["warnings"] == []
    for w in ra["warnings"]:
        assert f"WARNING {a}: {w}" in err
    assert "1 with warnings" in out_text
    assert f"WARNING {b}" not in err
    # the other order: both done already, nothing swapped
    assert main(["preprocess", str(a), str(b), "-o", str(out)]) == 0
    assert "skipped 2" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / output_name(a) / "mip.npy"), mip_a)
    np.testing.assert_array_equal(np.load(out / output_name(b) / "mip.npy"), mip_b)
    # a scan replaced by another file under the same path is redone, not skipped
    _write_cut(lumbar_ct_path, a, 60, 80)
    assert main(["preprocess", str(a), str(b), "-o", str(out)]) == 0
    assert "preprocessed 1, skipped 1" in capsys.readouterr().out
    ra = _report(out, a)
    assert ra["source"]["size"] == a.stat().st_size
    assert ra["decisions"]["crop"] == "kmeans" and ra["warnings"] == []


def test_hu_plus_1024_is_corrected_and_said_or_read_as_told(tmp_path, tptbox_ct_path, capsys):
    """A CT stored as HU + 1024 without a rescale is shifted back, with a warning in the
    report and on stderr; ``--hu-offset 0`` reads the values as stored, which are not HU,
    so the scan fails with a message naming the option (exit 1, nothing written)."""
    img = sitk.ReadImage(str(tptbox_ct_path))
    arr = sitk.GetArrayFromImage(img).astype(np.int32) + 1024
    shifted = sitk.GetImageFromArray(np.clip(arr, 0, 65535).astype(np.uint16))
    shifted.CopyInformation(img)
    path = tmp_path / "shifted.nrrd"
    sitk.WriteImage(shifted, str(path))
    out = tmp_path / "out"
    assert main(["preprocess", str(path), "-o", str(out)]) == 0
    report = _report(out, path)
    assert any("HU + 1024" in w for w in report["warnings"]), report["warnings"]
    assert "HU + 1024" in capsys.readouterr().err
    assert report["source"]["hu_offset"] is None
    mip = np.load(out / output_name(path) / "mip.npy")
    plain = tmp_path / "plain"
    assert main(["preprocess", str(tptbox_ct_path), "-o", str(plain)]) == 0
    assert np.abs(mip - np.load(plain / output_name(tptbox_ct_path) / "mip.npy")).max() <= 1.0

    told = tmp_path / "told"
    assert main(["preprocess", str(path), "-o", str(told), "--hu-offset", "0"]) == 1
    err = capsys.readouterr().err
    assert "Hounsfield" in err and "--hu-offset" in err and "Traceback" not in err
    assert not (told / output_name(path) / "report.json").exists()
