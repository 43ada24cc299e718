"""The ``napari-vertebra preprocess`` command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from napari_vertebra.cli import main
from napari_vertebra.commands.preprocess import expand_inputs, scan_name


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, lumbar_ct_path):
    """One run on the lumbar sample plus a broken file."""
    root = tmp_path_factory.mktemp("cli")
    broken = root / "broken.nii.gz"
    broken.write_text("not a CT", encoding="utf-8")
    out = root / "out"
    status = main(["preprocess", str(lumbar_ct_path), str(broken), "-o", str(out)])
    return root, out, broken, status


def test_outputs_written(cli_run, capsys):
    _, out, _, _ = cli_run
    scan = out / "example_ct"
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
    from napari_vertebra.annotation.coco import read_image

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
    report = out / "example_ct" / "report.json"
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
    report = out / "sub-ct_label-22_ct" / "report.json"
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
    for name in ("a", "b"):
        report = json.loads((out / name / "report.json").read_text(encoding="utf-8"))
        assert report["params"]["hu_min"] == 150


def test_scan_names_and_bad_params(tmp_path, lumbar_ct_path, capsys):
    assert scan_name(tmp_path / "x.nii.gz") == "x"
    assert scan_name(tmp_path / "dicom_folder") == "dicom_folder"
    status = main(["preprocess", str(lumbar_ct_path), "-o", str(tmp_path), "--params", "{x"])
    assert status == 2
    assert "error:" in capsys.readouterr().err
