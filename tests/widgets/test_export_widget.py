"""The "Export dataset" widget: partial views and a train / val / test split by scan."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
