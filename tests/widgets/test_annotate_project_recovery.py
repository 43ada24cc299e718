"""What reaches the user of 'Annotate vertebrae' when a project needed repairs, when a
project file is invalid, and when a 3D label map does not fit its convention."""

from __future__ import annotations

import json

import pytest

from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.widgets._reader import read_layer_data
from napari_vertebra.widgets.annotate import AnnotateWidget

pytestmark = pytest.mark.gui

KEY = "lumbar"


@pytest.fixture
def notes(monkeypatch):
    """Every notification the annotate widget's modules send: [(level, message)]."""
    from napari_vertebra.widgets import _annotate_files, _annotate_saving, _base, annotate

    seen: list[tuple[str, str]] = []
    for module in (annotate, _annotate_files, _annotate_saving, _base):
        monkeypatch.setattr(module, "notify", lambda m, level="info": seen.append((level, m)))
    return seen


@pytest.fixture
def project_dir(tmp_path, sample_result):
    """A project holding the lumbar MIP and its polygons from the 3D labels."""
    from napari_vertebra.annotation.from3d import labels_to_annotations

    im = labels_to_annotations(
        sample_result.source, sample_result.labels_source, "class ids", result=sample_result
    )
    folder = tmp_path / "proj"
    proj = AnnotationProject(folder)
    proj.add_image(KEY, im.image, scan=KEY)
    proj.save(KEY, im.annotations, label="labels from 3D")
    proj.close()
    return folder


def test_a_deleted_index_is_rebuilt_and_said(make_napari_viewer, project_dir, notes):
    (project_dir / "project.json").unlink()
    widget = AnnotateWidget(make_napari_viewer(), project_dir=str(project_dir))
    assert KEY in widget.project_images.choices
    assert any(lv == "warning" and "rebuilt from the image files" in m for lv, m in notes)
    widget.open_project_image(KEY)
    assert widget.shapes.features["vertebra"].tolist()[:2] == ["T12", "L1"]


def test_an_invalid_annotation_file_is_an_error_naming_it(make_napari_viewer, project_dir):
    path = project_dir / "annotations" / f"{KEY}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["annotations"][0].update({"class": "T3", "class_id": 14})
    path.write_text(json.dumps(data), encoding="utf-8")
    widget = AnnotateWidget(make_napari_viewer(), project_dir=str(project_dir))
    assert widget.open_project_image(KEY) is None  # no traceback: the status says why
    assert widget.status.level == "error"
    assert str(path) in widget.status.value and "class 'T3' does not match" in widget.status.value
    assert json.loads(path.read_text(encoding="utf-8")) == data  # left for the user to fix


def test_labels_from_3d_refuses_a_label_map_of_another_convention(
    make_napari_viewer, tmp_path, tptbox_ct_path, tptbox_labels_path, inline_workers
):
    viewer = make_napari_viewer()
    for path in (tptbox_ct_path, tptbox_labels_path):
        for data, kwargs, kind in read_layer_data(path):
            getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    widget.ct_layer.value = viewer.layers[0]
    widget.labels3d_layer.value = viewer.layers[1]
    widget.labels_convention.value = "totalsegmentator"
    widget.labels_from_3d()
    assert widget.status.level == "error"
    assert "'verse' convention it fits (L2..L4)" in widget.status.value
    assert viewer.layers[1].name in widget.status.value
    widget.labels_convention.value = "auto"
    widget.labels_from_3d()
    assert widget.status.level == "ok", widget.status.value
    assert "label ids read as 'verse' (guessed)" in widget.status.value
    assert widget.shapes.features["vertebra"].tolist() == ["L2", "L3", "L4"]
