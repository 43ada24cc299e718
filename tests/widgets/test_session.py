"""One Session per viewer: the widgets share state through it, never through each other."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from napari_vertebra.annotation.types import VertebraAnnotation

pytestmark = pytest.mark.gui

WIDGETS = Path(__file__).resolve().parents[2] / "napari_vertebra" / "widgets"
SQUARE = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])


def test_one_session_per_viewer(make_napari_viewer):
    from napari_vertebra.widgets._session import session_for
    from napari_vertebra.widgets.review import ReviewWidget

    v1, v2 = make_napari_viewer(), make_napari_viewer()
    s1 = session_for(v1)
    assert session_for(v1) is s1 and session_for(v2) is not s1
    assert ReviewWidget(v1).session is s1
    s1.checkpoint = "a.pt"
    assert session_for(v2).checkpoint is None  # nothing leaks between viewers


def test_a_checkpoint_reaches_predict_through_the_session(make_napari_viewer, tmp_path):
    from napari_vertebra.widgets._session import session_for
    from napari_vertebra.widgets.predict import PredictWidget

    viewer = make_napari_viewer()
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not read until predicting")
    predict = PredictWidget(viewer)
    assert session_for(viewer).use_checkpoint(str(ckpt), dock=False)  # as Train does
    assert Path(predict.checkpoint.value) == ckpt.resolve()
    later = PredictWidget(make_napari_viewer())  # another viewer: not handed over
    assert Path(later.checkpoint.value) != ckpt.resolve()  # the starter, or nothing


def test_preprocess_results_by_layer(make_napari_viewer, sample_result):
    from napari_vertebra.widgets._session import session_for
    from napari_vertebra.widgets.preprocess import PreprocessWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre = PreprocessWidget(viewer)
    pre.show_result(sample_result, ct_layer=viewer.layers["lumbar CT"])
    session = session_for(viewer)
    assert session.result_for(viewer.layers["MIP lumbar CT"]) is sample_result
    assert session.result_for(viewer.layers["lumbar CT"]) is None
    assert session.preprocess_params == pre.params()


def test_review_replaces_polygons_through_the_session(make_napari_viewer, tmp_path):
    """The session asks Annotate to show a MIP's polygons and to replace them."""
    from napari_vertebra.widgets._session import session_for
    from napari_vertebra.widgets.annotate import AnnotateWidget

    viewer = make_napari_viewer()
    mip = viewer.add_image(np.zeros((120, 80), np.float32), name="MIP test")
    other = viewer.add_image(np.zeros((60, 40), np.float32), name="MIP other")
    annotate = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    annotate.mip_layer.value = other
    session = session_for(viewer)
    assert session.polygons_of(mip) is None
    shown = session.show_polygons_of(mip, dock=False)
    assert shown is not None and shown.layer is annotate.shapes and shown.key
    assert session.replace_annotations([VertebraAnnotation(13, [SQUARE])], "review")
    assert annotate.shapes.features["vertebra"].tolist() == ["L1"]
    assert [a.name for a in session.annotation.load(shown.key)] == ["L1"]
    assert annotate.undo()  # one undoable step
    assert annotate.shapes.features["vertebra"].tolist() == []


def test_no_widget_registry_is_left():
    """Widgets find each other through no module registry and no look-up."""
    for path in WIDGETS.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        pattern = r"\b_REGISTRY\b|\b_RESULTS\b|register_widget|find_dock_widget"
        assert not re.search(pattern, text), path.name
        assert "find_annotation_project" not in text, path.name
    predict = (WIDGETS / "predict.py").read_text(encoding="utf-8")
    jobs = (WIDGETS.parent / "model" / "predict_jobs.py").read_text(encoding="utf-8")
    assert "roi_heads" not in predict + jobs  # the live model is never changed


def test_export_follows_the_open_project(make_napari_viewer, tmp_path):
    from napari_vertebra.widgets.annotate import AnnotateWidget
    from napari_vertebra.widgets.export import ExportDatasetWidget

    viewer = make_napari_viewer()
    annotate = AnnotateWidget(viewer, project_dir=str(tmp_path / "p1"))
    export = ExportDatasetWidget(viewer)
    assert export.project_dir.value == tmp_path / "p1"
    annotate.project_dir.value = str(tmp_path / "p2")
    assert annotate.project.folder == tmp_path / "p2"
    assert export.project_dir.value == tmp_path / "p2"
