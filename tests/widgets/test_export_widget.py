"""The "Export dataset" widget: partial views and a train / val / test split by scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_vertebra.annotation.coco import read_coco
from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.widgets.export import ExportDatasetWidget

pytestmark = pytest.mark.gui


def _small_project(folder, n_scans: int = 4):
    """``n_scans`` synthetic MIPs (120 x 40 px), six stacked box "vertebrae" each."""
    project = AnnotationProject(folder)
    for s in range(n_scans):
        mip = np.zeros((120, 40), np.float32)
        anns = []
        for k, cid in enumerate(range(12, 18)):  # T12 .. L5
            r0 = 4 + 19 * k
            mip[r0 : r0 + 15, 8:32] = 300 + 50 * s
            box = np.array([[r0, 8], [r0, 31], [r0 + 14, 31], [r0 + 14, 8]], float)
            anns.append(VertebraAnnotation(cid, [box]))
        key = f"scan{s}_120x40"
        project.add_image(key, mip, scan=f"scan{s}")
        project.save(key, anns)
    return project


def test_builds_splits_by_scan(make_napari_viewer, tmp_path, qtbot):
    _small_project(tmp_path / "proj")
    viewer = make_napari_viewer()
    widget = ExportDatasetWidget(viewer, project_dir=tmp_path / "proj")
    viewer.window.add_dock_widget(widget, name="Export dataset")
    widget.output_dir.value = str(tmp_path / "dataset")
    widget.views_per_image.value = 2
    widget.train_fraction.value, widget.val_fraction.value = 0.5, 0.25
    widget.test_fraction.value = 0.25
    assert widget.build()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.runner.last_error is None, widget.status.value
    scans = {}
    for split in ("train", "val", "test"):
        path = tmp_path / "dataset" / split / "annotations.json"
        assert widget.paths[split] == path and path.is_file()
        images = read_coco(path)
        assert images, f"empty {split} split"
        scans[split] = {im.scan for im in images}
        assert all(len(im.annotations) >= 4 for im in images)
    assert sum(len(s) for s in scans.values()) == 4  # each scan in exactly one split
    assert len(set().union(*scans.values())) == 4
    summary = json.loads((tmp_path / "dataset" / "dataset.json").read_text(encoding="utf-8"))
    assert widget.summary == summary
    n_train = summary["splits"]["train"]["images"]
    assert n_train == 2 * (1 + 2)  # 2 scans x (full MIP + 2 views)
    assert "train" in widget.summary_label.value and str(n_train) in widget.summary_label.value


def test_nothing_to_export_is_a_message(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = ExportDatasetWidget(viewer, project_dir=tmp_path / "empty")
    assert widget.build() is False
    assert widget.status.level == "error"
    assert "project" in widget.status.value


def test_one_scan_warns_that_val_and_test_are_empty(
    make_napari_viewer, tmp_path, qtbot, monkeypatch
):
    """One annotated scan cannot fill three splits made by scan: say so, in plain words,
    as a notification and in the status line (it used to say only "dataset written")."""
    from napari_vertebra.widgets import export

    shown = []
    monkeypatch.setattr(export, "notify", lambda msg, level="info": shown.append((level, msg)))
    _small_project(tmp_path / "proj", n_scans=1)
    viewer = make_napari_viewer()
    widget = ExportDatasetWidget(viewer, project_dir=tmp_path / "proj")
    widget.output_dir.value = str(tmp_path / "dataset")
    widget.views_per_image.value = 1
    assert widget.build()
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.runner.last_error is None, widget.status.value
    assert widget.summary["splits"]["train"]["images"] > 0
    assert widget.status.level == "warning"
    warnings = [m for level, m in shown if level == "warning"]
    assert len(warnings) == 1
    assert "val and test splits are empty" in warnings[0] and "1 scan was" in warnings[0]
    assert "validate on the train split" in warnings[0]


def test_empty_split_warning_rules():
    summary = {"splits": {"train": {"images": 4, "scans": ["a", "b"]}, "val": {"images": 2}}}
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    assert "the test split is empty" in export_warning(summary, fractions)
    assert export_warning(summary, {**fractions, "test": 0.0}) == ""  # none asked for
    no_train = {"splits": {"val": {"images": 2, "scans": ["a"]}}}
    assert "needs a train split" in export_warning(no_train, {"train": 0.5, "val": 0.5})


def export_warning(summary, fractions):
    from napari_vertebra.widgets.export import empty_split_warning

    return empty_split_warning(summary, fractions)


# -- the three real samples: a split that shows the size of each scan (issue 19) ---------
@pytest.fixture(scope="module")
def three_samples():
    """The three real samples' MIPs with their "Labels from 3D" polygons, scans named as
    'Annotate vertebrae' names them (the CT's file name)."""
    from widget_helpers import ROOT

    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.core.io import read_ct, read_volume

    data, sample = ROOT / "tests" / "data", ROOT / "napari_vertebra" / "_sample_data"
    pairs = [
        (sample / "example_ct.nii.gz", sample / "example_seg_fast_force_split.nii.gz",
         "totalsegmentator", "example_ct"),
        (data / "tptbox-l3" / "sub-ct_label-22_ct.nii.gz",
         data / "tptbox-l3" / "sub-ct_seg-vert_label-22_msk.nii.gz", "verse",
         "sub-ct_label-22_ct"),
        (data / "totalseg-dicom" / "example_ct_dicom",
         data / "totalseg-dicom" / "example_seg_dicom.nii.gz", "totalsegmentator",
         "example_ct_dicom"),
    ]  # fmt: skip
    out = []
    for ct_path, lab_path, convention, scan in pairs:
        ct = read_ct(ct_path)
        labels = read_volume(lab_path)
        out.append(labels_to_annotations(ct, labels, convention, scan=scan))
    return out


def _sample_project(folder, images):
    project = AnnotationProject(folder)
    for im in images:
        key = f"{im.scan}_{im.height}x{im.width}"
        project.add_image(key, im.image, scan=im.scan)
        project.save(key, im.annotations)
    return project


def test_three_samples_warn_about_tiny_splits_and_let_the_user_split_by_scan(
    make_napari_viewer, tmp_path, qtbot, monkeypatch, three_samples
):
    """With the defaults the lumbar scan (the biggest) went to val and train got the
    3-vertebra crop only (1 image), and the status said "dataset written (7 images)". Now
    the user is told, and puts the lumbar scan in train with its picker."""
    from napari_vertebra.widgets import export

    shown = []
    monkeypatch.setattr(export, "notify", lambda msg, level="info": shown.append((level, msg)))
    _sample_project(tmp_path / "proj", three_samples)
    viewer = make_napari_viewer()
    widget = ExportDatasetWidget(viewer, project_dir=tmp_path / "proj")
    viewer.window.add_dock_widget(widget, name="Export dataset")
    widget.output_dir.value = str(tmp_path / "dataset")
    pickers = widget.scan_splits.pickers
    assert sorted(pickers) == ["example_ct", "example_ct_dicom", "sub-ct_label-22_ct"]
    assert "example_ct (1 MIP, 6 vertebrae) → val" in pickers["example_ct"].label

    qtbot.mouseClick(widget.build_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert widget.runner.last_error is None, widget.status.value
    splits = widget.summary["splits"]
    assert splits["val"]["scans"] == ["example_ct"]
    assert widget.status.level == "warning"
    (warning,) = [m for level, m in shown if level == "warning"]
    assert f"the train split holds only {splits['train']['images']} image" in warning
    assert "the biggest scan, example_ct (6 vertebrae), went to val" in warning
    assert "train holds fewer vertebrae" in warning and "split by scan" in warning

    # the user puts the lumbar scan in train with its picker, and builds again
    combo = pickers["example_ct"].native
    combo.setCurrentIndex(combo.findText("train"))
    assert pickers["example_ct"].label.endswith("vertebrae)")  # no "auto" arrow now
    shown.clear()
    qtbot.mouseClick(widget.build_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=120_000)
    assert widget.runner.last_error is None, widget.status.value
    splits = widget.summary["splits"]
    assert "example_ct" in splits["train"]["scans"]
    assert splits["train"]["annotations"] > splits["val"]["annotations"]
    train = read_coco(tmp_path / "dataset" / "train" / "annotations.json")
    assert {im.scan for im in train} == set(splits["train"]["scans"])
    assert not any("biggest scan" in m for _, m in shown)


def test_split_by_scan_rules():
    from napari_vertebra.annotation.dataset import assign_splits

    scans = ["a", "b", "c", "d"]
    split = assign_splits(scans, (0.5, 0.25, 0.25), 0, {"a": "test"})
    assert "a" in split["test"] and sorted(s for v in split.values() for s in v) == scans
    with pytest.raises(ValueError, match="one of train, val, test"):
        assign_splits(scans, fixed={"a": "holdout"})
    with pytest.raises(ValueError, match="zz not among the scans"):
        assign_splits(scans, fixed={"zz": "train"})
