"""The annotate widget's import refuses malformed COCO / VIA files with a napari error
notification (no traceback, nothing imported) and says what it repaired."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vertebra.annotation.image_files import write_mip_png
from napari_vertebra.widgets.annotate import AnnotateWidget

pytestmark = pytest.mark.gui

H, W = 60, 50


def _coco(seg: list[float], image_id: object = 1) -> dict:
    return {
        "images": [{"id": image_id, "file_name": "mip.png", "width": W, "height": H}],
        "annotations": [{"id": 5, "image_id": image_id, "category_id": 13, "segmentation": [seg]}],
        "categories": [{"id": 13, "name": "L1"}],
    }


@pytest.fixture
def widget(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((H, W), np.float32), name="MIP mip")
    w = AnnotateWidget(viewer, project_dir=str(tmp_path / "proj"))
    w.mip_layer.value = viewer.layers["MIP mip"]
    return w


@pytest.fixture
def notes(monkeypatch):
    """Every notification the widget module sends: [(level, message)]."""
    from napari_vertebra.widgets import (
        _annotate_drawing,
        _annotate_files,
        _annotate_saving,
        _base,
        annotate,
    )

    seen: list[tuple[str, str]] = []

    def record(message, level="info"):
        seen.append((level, message))

    for module in (annotate, _annotate_drawing, _annotate_files, _annotate_saving, _base):
        monkeypatch.setattr(module, "notify", record)
    return seen


def _write(tmp_path, data) -> str:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    write_mip_png(d / "mip.png", np.zeros((H, W), np.float32))
    path = d / "a.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "data, words",
    [
        (_coco([10, 20, 30, 32, 30, 20, 10, 32]), "intersects itself"),
        (_coco([10, 20, 20, 25, 30, 30]), "zero area"),
        (_coco([10, 20, 1e300, 20, 30, 30]), "wrong image size"),
        (_coco([10, 10, 30, 10, 30, 20], image_id=[1]), "is not an integer"),
    ],
)
def test_malformed_import_is_an_error_notification(widget, notes, tmp_path, data, words):
    assert widget.import_annotations(_write(tmp_path, data)) == 0
    assert widget.status.level == "error" and words in widget.status.value
    assert [lvl for lvl, _ in notes] == ["error"] and words in notes[0][1]
    assert "mip.png" in notes[0][1] or "a.json" in notes[0][1]
    assert len(widget.shapes.data) == 0


def test_clipped_import_is_a_warning_notification(widget, notes, tmp_path):
    path = _write(tmp_path, _coco([30, 40, 54, 40, 54, 66, 30, 66]))
    assert widget.import_annotations(path) == 1
    assert [lvl for lvl, _ in notes] == ["warning"]
    assert "clipped" in notes[0][1] and "L1" in notes[0][1]
    (poly,) = widget.shapes.data
    assert poly[:, 0].max() <= H - 0.5 and poly[:, 1].max() <= W - 0.5


def test_import_gives_a_bare_mip_the_pixel_spacing_fine_tune_needs(widget, tmp_path):
    """A MIP opened as a plain image records no spacing; the COCO file imported onto it
    does, and the project takes it, also for an image saved before the import."""
    from napari_vertebra.annotation.types import VertebraAnnotation
    from napari_vertebra.model.starter import _check_pixel_spacing

    square = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])
    widget.set_annotations([VertebraAnnotation(14, [square])])  # saved, no spacing yet
    widget.project.flush()
    with pytest.raises(ValueError, match="pixel spacing"):
        _check_pixel_spacing(widget.project)
    data = _coco([10, 20, 30, 20, 30, 40, 10, 40])
    data["images"][0]["meta"] = {"spacing_mm": 0.8}
    assert widget.import_annotations(_write(tmp_path, data)) == 1
    widget.project.flush()
    key = widget.image_key.value
    assert widget.project.image(key, load_pixels=False).meta["spacing_mm"] == 0.8
    _check_pixel_spacing(widget.project)  # Fine-tune can start
    assert [a.name for a in widget.project.load(key)] == ["L1"]


def test_import_refuses_a_pixel_spacing_that_cannot_be_one(widget, notes, tmp_path):
    data = _coco([10, 20, 30, 20, 30, 40, 10, 40])
    data["images"][0]["spacing"] = -1
    assert widget.import_annotations(_write(tmp_path, data)) == 1
    assert [lvl for lvl, _ in notes] == ["warning"] and "-1" in notes[0][1]
    assert "spacing_mm" not in widget.mip_layer.value.metadata
    assert len(widget.shapes.data) == 1  # the polygons still come in
