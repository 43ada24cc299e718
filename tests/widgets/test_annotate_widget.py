"""The "Annotate vertebrae" widget: class polygons, checks, autosave and reopening, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_model.types import KeyBinding

from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.core.labels import class_colour, class_id
from napari_vertebra.widgets.annotate import DIRECTIONS, AnnotateWidget
from napari_vertebra.widgets.preprocess import PreprocessWidget

pytestmark = pytest.mark.gui

SQUARE = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])


def _shift(rows: float, cols: float) -> np.ndarray:
    return SQUARE + np.array([rows, cols])


def _rgba(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0])


def _mip_viewer(make_napari_viewer, sample_result):
    """A viewer showing the sample's MIP as "Preprocess CT" leaves it."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre = PreprocessWidget(viewer)
    pre.show_result(sample_result, ct_layer=viewer.layers["lumbar CT"])
    return viewer, pre


def _annotate(viewer, project) -> AnnotateWidget:
    widget = AnnotateWidget(viewer, project_dir=str(project))
    viewer.window.add_dock_widget(widget, name="Annotate vertebrae")
    widget.mip_layer.value = viewer.layers["MIP lumbar CT"]
    return widget


def test_drawn_polygon_gets_the_class_colour_text_and_is_saved(
    make_napari_viewer, sample_result, tmp_path
):
    viewer, _ = _mip_viewer(make_napari_viewer, sample_result)
    widget = _annotate(viewer, tmp_path / "proj")
    shapes = widget.shapes
    assert shapes is not None and shapes.name == "vertebrae MIP lumbar CT"
    widget.vertebra.value = "T12"
    widget.direction.value = DIRECTIONS[0]
    shapes.add_polygons([SQUARE])  # as the polygon tool would finish one
    assert shapes.features["class_id"].tolist() == [class_id("T12")]
    assert shapes.features["vertebra"].tolist() == ["T12"]
    np.testing.assert_allclose(shapes.edge_color[0], _rgba(class_colour(class_id("T12"))))
    assert 0 < shapes.face_color[0][3] < 1  # semi-transparent face
    assert list(shapes.text.values) == ["T12"]
    assert widget.vertebra.value == "L1"  # the picker moved down the spine

    widget.direction.value = DIRECTIONS[1]
    shapes.add_polygons([_shift(40, 0)])
    assert shapes.features["vertebra"].tolist() == ["T12", "L1"]
    assert widget.vertebra.value == "T12"  # ... and up

    saved = AnnotationProject(tmp_path / "proj").load(widget.image_key.value)
    assert [a.name for a in saved] == ["T12", "L1"]
    np.testing.assert_allclose(saved[0].polygons[0], SQUARE)

    # editing vertices of an existing polygon (direct mode) is saved again
    n = widget.n_saves
    data = [np.asarray(d) for d in shapes.data]
    data[0] = data[0] + 1.0
    shapes.data = data
    assert widget.n_saves > n
    saved = AnnotationProject(tmp_path / "proj").load(widget.image_key.value)
    np.testing.assert_allclose(saved[0].polygons[0], SQUARE + 1.0)
    assert [a.name for a in saved] == ["T12", "L1"]  # classes kept through the edit

    # deleting is saved too
    shapes.selected_data = {1}
    widget.delete_selected()
    saved = AnnotationProject(tmp_path / "proj").load(widget.image_key.value)
    assert [a.name for a in saved] == ["T12"]


def test_keyboard_shortcuts_are_bound_on_the_shapes_layer(
    make_napari_viewer, sample_result, tmp_path
):
    viewer, _ = _mip_viewer(make_napari_viewer, sample_result)
    widget = _annotate(viewer, tmp_path / "proj")
    keymap = widget.shapes.keymap
    widget.vertebra.value = "L2"
    keymap[KeyBinding.from_str(".")](widget.shapes)
    assert widget.vertebra.value == "L3"
    keymap[KeyBinding.from_str(",")](widget.shapes)
    keymap[KeyBinding.from_str(",")](widget.shapes)
    assert widget.vertebra.value == "L1"
    widget.shapes.add_polygons([SQUARE])
    widget.shapes.selected_data = {0}
    widget.vertebra.value = "L4"
    keymap[KeyBinding.from_str("Shift+C")](widget.shapes)
    assert widget.shapes.features["vertebra"].tolist() == ["L4"]
    keymap[KeyBinding.from_str("Shift+S")](widget.shapes)
    assert "saved" in widget.status.value
    widget.draw_polygon()
    assert widget.shapes.mode == "add_polygon"
    assert "Shift+S" in widget.help_label.value


def test_checks_warn_without_crashing(make_napari_viewer, sample_result, tmp_path):
    viewer, _ = _mip_viewer(make_napari_viewer, sample_result)
    widget = _annotate(viewer, tmp_path / "proj")
    widget.direction.value = DIRECTIONS[2]  # stay on one class
    widget.vertebra.value = "L2"
    widget.shapes.add_polygons([SQUARE])
    assert widget.warnings == []
    widget.shapes.add_polygons([_shift(50, 0)])
    assert any("L2 is used 2 times" in w for w in widget.warnings), widget.warnings
    widget.vertebra.value = "L3"
    widget.shapes.add(np.array([[80.0, 10.0], [80.0, 30.0]]), shape_type="polygon")
    assert any("2 distinct point" in w for w in widget.warnings), widget.warnings
    w = viewer.layers["MIP lumbar CT"].data.shape[1]
    widget.shapes.add_polygons([np.array([[5.0, w - 5], [5.0, w + 40], [20.0, w + 40]])])
    assert any("outside" in m for m in widget.warnings), widget.warnings
    widget.vertebra.value = "T1"  # T1 drawn below L2: out of anatomical order
    widget.shapes.add_polygons([_shift(200, 0)])
    assert any(m.startswith("order:") for m in widget.warnings), widget.warnings
    assert widget.warnings_list.count() == len(widget.warnings)
    # everything is still saved (nothing lost), the bad polygon included
    saved = AnnotationProject(tmp_path / "proj").load(widget.image_key.value)
    assert sum(len(a.polygons) for a in saved) == 5


def test_reopening_the_mip_restores_the_polygons(make_napari_viewer, sample_result, tmp_path):
    viewer, _ = _mip_viewer(make_napari_viewer, sample_result)
    widget = _annotate(viewer, tmp_path / "proj")
    widget.vertebra.value = "L3"
    widget.shapes.add_polygons([SQUARE, _shift(40, 5)])
    key = widget.image_key.value
    widget.close_widget()
    viewer.close()

    viewer2, _ = _mip_viewer(make_napari_viewer, sample_result)
    widget2 = _annotate(viewer2, tmp_path / "proj")
    assert widget2.image_key.value == key
    shapes = widget2.shapes
    assert len(shapes.data) == 2
    assert shapes.features["vertebra"].tolist() == ["L3", "L4"]
    np.testing.assert_allclose(np.asarray(shapes.data[0]), SQUARE)
    np.testing.assert_allclose(shapes.edge_color[1], _rgba(class_colour(class_id("L4"))))

    # the project's image can also be opened by key without the CT
    viewer3 = make_napari_viewer()
    widget3 = AnnotateWidget(viewer3, project_dir=str(tmp_path / "proj"))
    assert key in widget3.project_images.choices
    layer = widget3.open_project_image(key)
    assert layer.data.shape == sample_result.mip.shape
    assert widget3.shapes.features["vertebra"].tolist() == ["L3", "L4"]


def test_labels_from_3d_masks_and_coco(make_napari_viewer, sample_result, tmp_path, qtbot):
    viewer, _ = _mip_viewer(make_napari_viewer, sample_result)
    widget = _annotate(viewer, tmp_path / "proj")
    widget.shapes.add_polygons([SQUARE])  # replaced by the labels (a backup is kept)
    assert widget.labels_from_3d()  # on the real worker thread
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.runner.last_error is None, widget.status.value
    names = set(widget.shapes.features["vertebra"])
    assert {"L1", "L2", "L3", "L4", "L5"} <= names
    assert widget.warnings == [], widget.warnings
    key = widget.image_key.value
    assert (tmp_path / "proj" / "annotations" / f"{key}.backup.json").is_file()

    # polygons -> mask -> polygons keeps the classes and roughly the areas
    mask_layer = widget.polygons_to_mask()
    assert set(np.unique(mask_layer.data)) - {0} == {class_id(n) for n in names}
    widget.mask_layer.value = mask_layer
    before = {a.class_id: a for a in widget.annotations()}
    widget.mask_to_polygons()
    after = {a.class_id: a for a in widget.annotations()}
    assert set(after) == set(before)

    # COCO export of the project loads in pycocotools
    from pycocotools.coco import COCO

    path = widget.export_coco(tmp_path / "coco")
    coco = COCO(str(path))
    assert len(coco.getAnnIds()) == len(after)
    cats = {c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert names <= cats
    ann = coco.loadAnns(coco.getAnnIds())[0]
    assert coco.annToMask(ann).sum() > 0

    # VIA export, then import it back (round trip through the file)
    via = widget.export_via(tmp_path / "via" / "project_via.json")
    assert json.loads(via.read_text(encoding="utf-8"))
    widget.set_annotations([])
    assert len(widget.shapes.data) == 0
    assert widget.import_annotations(via) == 1
    assert set(widget.shapes.features["vertebra"]) == names


def test_labels_from_3d_without_a_result_asks_for_inputs(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((50, 30), np.float32), name="some mip")
    widget = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    widget.mip_layer.value = viewer.layers["some mip"]
    assert widget.labels_from_3d() is False
    assert widget.status.level == "error"
    assert "3D labels" in widget.status.value
    widget.import_annotations(tmp_path / "missing.json")
    assert widget.status.level == "error"


def test_polygon_drawn_with_the_mouse_gets_the_class(make_napari_viewer, tmp_path):
    """The real drawing path: clicks in add_polygon mode, finished by a double click."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_double_click_callbacks,
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((200, 100), np.float32), name="MIP test")
    widget = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    widget.mip_layer.value = viewer.layers["MIP test"]
    widget.vertebra.value = "L2"
    widget.draw_polygon()
    layer = widget.shapes
    for p in SQUARE:
        for kind, fn in (
            ("mouse_move", mouse_move_callbacks),
            ("mouse_press", mouse_press_callbacks),
            ("mouse_release", mouse_release_callbacks),
        ):
            fn(layer, read_only_mouse_event(type=kind, position=p, pos=p))
    end = read_only_mouse_event(type="mouse_double_click", position=SQUARE[-1], pos=SQUARE[-1])
    mouse_double_click_callbacks(layer, end)
    assert layer.shape_type == ["polygon"]
    np.testing.assert_allclose(np.asarray(layer.data[0]), SQUARE)
    assert layer.features["vertebra"].tolist() == ["L2"]
    assert widget.vertebra.value == "L3"
    saved = AnnotationProject(tmp_path / "p").load(widget.image_key.value)
    assert [a.name for a in saved] == ["L2"]


def test_deleting_the_shapes_layer_loses_nothing(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((200, 100), np.float32), name="MIP test")
    widget = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    widget.mip_layer.value = viewer.layers["MIP test"]
    widget.vertebra.value = "L4"
    widget.shapes.add_polygons([SQUARE])
    viewer.layers.remove(widget.shapes)
    assert widget.shapes is None
    assert AnnotationProject(tmp_path / "p").load(widget.image_key.value)  # still saved
    widget.draw_polygon()  # brings the layer back with the saved polygons
    assert widget.shapes.features["vertebra"].tolist() == ["L4"]
    assert widget.shapes.mode == "add_polygon"
    viewer.layers.remove(widget.shapes)
    viewer.layers.remove(viewer.layers["MIP test"])
    widget.draw_polygon()  # no MIP left: a message, no exception
    assert widget.status.level == "error"
