"""The "Annotate vertebrae" widget: class polygons, checks, autosave and reopening, I/O."""

from __future__ import annotations

import json

import numpy as np
import pytest
from app_model.types import KeyBinding

from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import VERTEBRAE, class_colour, class_id
from napari_vertebra.widgets._annotate_drawing import DIRECTIONS
from napari_vertebra.widgets.annotate import AnnotateWidget
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
    assert widget.vertebra.value == "T11"  # ... and up, past T12 (already drawn)

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
    # number keys pick within the picker's region, by position on the digit row
    widget.vertebra.value = "L4"
    keymap[KeyBinding.from_str("2")](widget.shapes)
    assert widget.vertebra.value == "L2"
    keymap[KeyBinding.from_str("7")](widget.shapes)  # no L7: stays
    assert widget.vertebra.value == "L2"
    widget.vertebra.value = "T3"
    for key, name in (("7", "T7"), ("0", "T10"), ("-", "T11"), ("=", "T12")):
        keymap[KeyBinding.from_str(key)](widget.shapes)
        assert widget.vertebra.value == name


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
    assert len(widget.shapes.data) == 2  # refused (fewer than 3 points), with a message
    assert "at least 3 points" in widget.status.value
    w = viewer.layers["MIP lumbar CT"].data.shape[1]
    widget.shapes.add_polygons([np.array([[5.0, w - 5], [5.0, w + 40], [20.0, w + 40]])])
    assert any("outside" in m for m in widget.warnings), widget.warnings
    widget.vertebra.value = "T1"  # T1 drawn below L2: out of anatomical order
    widget.shapes.add_polygons([_shift(200, 0)])
    assert any(m.startswith("order:") for m in widget.warnings), widget.warnings
    assert widget.warnings_list.count() == len(widget.warnings)
    # everything is still saved (nothing lost), the bad polygon included
    saved = AnnotationProject(tmp_path / "proj").load(widget.image_key.value)
    assert sum(len(a.polygons) for a in saved) == 4


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
    widget.shapes.add_polygons([SQUARE])  # replaced by the labels (undo brings it back)
    widget.vertebra.value = "L1"
    widget.direction.value = DIRECTIONS[0]
    assert widget.labels_from_3d()  # on the real worker thread
    qtbot.waitUntil(lambda: not widget.runner.busy, timeout=60_000)
    assert widget.runner.last_error is None, widget.status.value
    names = set(widget.shapes.features["vertebra"])
    assert {"L1", "L2", "L3", "L4", "L5"} <= names
    assert widget.warnings == [], widget.warnings
    # the picker left L1 (filled) for the missing vertebra just above the filled run
    top = min(class_id(n) for n in names)
    assert widget.vertebra.value == VERTEBRAE[top - 2] and widget.vertebra.value not in names
    filled = widget.annotations()
    assert widget.undo()  # "Labels from 3D" is one step: the hand square is back
    assert len(widget.shapes.data) == 1
    assert widget.redo()
    assert len(widget.annotations()) == len(filled)

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


# -- undo / redo, Escape, small polygons, shift levels, picker (issue 12) ----------------
def _mouse_polygon(layer, points, finish: str | None = "double_click"):
    """Click ``points`` in add_polygon mode as the mouse would; optionally finish."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_double_click_callbacks,
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    for p in points:
        for kind, fn in (
            ("mouse_move", mouse_move_callbacks),
            ("mouse_press", mouse_press_callbacks),
            ("mouse_release", mouse_release_callbacks),
        ):
            fn(layer, read_only_mouse_event(type=kind, position=p, pos=p))
    if finish == "double_click":
        end = read_only_mouse_event(type="mouse_double_click", position=points[-1], pos=points[-1])
        mouse_double_click_callbacks(layer, end)


def _press(viewer, key: str) -> None:
    """A key press as the canvas dispatches it (active layer's keymap, then viewer's)."""
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def _test_viewer(make_napari_viewer, project):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((200, 100), np.float32), name="MIP test")
    widget = AnnotateWidget(viewer, project_dir=str(project))
    widget.mip_layer.value = viewer.layers["MIP test"]
    return viewer, widget


def test_undo_redo_with_keys_and_across_a_restart(make_napari_viewer, tmp_path):
    import re

    viewer, widget = _test_viewer(make_napari_viewer, tmp_path / "p")
    widget.vertebra.value = "L1"
    widget.shapes.add_polygons([SQUARE])
    widget.shapes.add_polygons([_shift(40, 0)])
    assert re.search(r"autosaved \d\d:\d\d:\d\d", widget.status.value), widget.status.value
    assert re.search(r"autosaved \d\d:\d\d:\d\d", widget.autosave_label.value)
    widget.shapes.selected_data = {0}
    widget.delete_selected()
    assert widget.shapes.features["vertebra"].tolist() == ["L2"]

    # Ctrl+Z with the polygon layer active (its keymap comes before the viewer's)
    viewer.layers.selection.active = widget.shapes
    _press(viewer, "Control-Z")
    assert widget.shapes.features["vertebra"].tolist() == ["L1", "L2"]
    assert [a.name for a in AnnotationProject(tmp_path / "p").load("MIP_test_200x100")] == [
        "L1",
        "L2",
    ]
    # ... and with the MIP image active (the viewer's keymap)
    viewer.layers.selection.active = viewer.layers["MIP test"]
    _press(viewer, "Control-Z")
    assert widget.shapes.features["vertebra"].tolist() == ["L1"]
    _press(viewer, "Control-Shift-Z")
    assert widget.shapes.features["vertebra"].tolist() == ["L1", "L2"]
    assert widget.redo_button.enabled  # the delete can be redone
    assert widget.history_list.count() >= 3
    key = widget.image_key.value
    widget.close_widget()
    viewer.close()

    # a restart: a new viewer, widget and project on the same folder
    _viewer2, widget2 = _test_viewer(make_napari_viewer, tmp_path / "p")
    assert widget2.image_key.value == key
    assert widget2.shapes.features["vertebra"].tolist() == ["L1", "L2"]
    assert widget2.undo_button.enabled
    assert widget2.undo()  # takes back drawing L2 (the last step before the restart)
    assert widget2.shapes.features["vertebra"].tolist() == ["L1"]
    assert widget2.undo()
    assert widget2.shapes.features["vertebra"].tolist() == []
    assert widget2.undo() is False  # the starting state
    assert widget2.redo() and widget2.redo()
    assert widget2.shapes.features["vertebra"].tolist() == ["L1", "L2"]


def test_escape_cancels_the_polygon_being_drawn(make_napari_viewer, tmp_path):
    viewer, widget = _test_viewer(make_napari_viewer, tmp_path / "p")
    widget.vertebra.value = "L3"
    widget.draw_polygon()
    _mouse_polygon(widget.shapes, SQUARE[:3], finish=None)  # 3 vertices clicked
    _press(viewer, "Escape")
    assert len(widget.shapes.data) == 0
    assert len(widget.shapes.features) == 0
    assert widget.vertebra.value == "L3"  # the picker did not move
    assert widget.shapes.mode == "add_polygon"  # ready to draw again
    assert AnnotationProject(tmp_path / "p").load(widget.image_key.value) == []
    # the next polygon is drawn normally and gets the class
    _mouse_polygon(widget.shapes, SQUARE)
    assert widget.shapes.features["vertebra"].tolist() == ["L3"]
    assert widget.vertebra.value == "L4"


def test_two_point_polygon_is_refused_and_the_display_stays_right(make_napari_viewer, tmp_path):
    viewer, widget = _test_viewer(make_napari_viewer, tmp_path / "p")
    widget.vertebra.value = "L1"
    widget.shapes.add_polygons([SQUARE, _shift(40, 0)])
    widget.draw_polygon()
    _mouse_polygon(widget.shapes, _shift(80, 0)[:2], finish=None)  # 2 points, then Enter
    _press(viewer, "Enter")
    layer = widget.shapes
    assert len(layer.data) == 2
    assert len(layer.features) == 2  # one feature row per shape
    assert list(layer.text.values) == ["L1", "L2"]  # the names stay
    for i, name in enumerate(["L1", "L2"]):  # and the class colours
        np.testing.assert_allclose(layer.edge_color[i], _rgba(class_colour(class_id(name))))
    assert widget.status.level == "warning" and "at least 3 points" in widget.status.value
    assert widget.vertebra.value == "L3"  # the picker did not move
    saved = AnnotationProject(tmp_path / "p").load(widget.image_key.value)
    assert [a.name for a in saved] == ["L1", "L2"]


def test_shift_levels_is_one_undoable_step(make_napari_viewer, tmp_path):
    _viewer, widget = _test_viewer(make_napari_viewer, tmp_path / "p")
    widget.vertebra.value = "L1"
    widget.shapes.add_polygons([SQUARE, _shift(40, 0)])
    assert widget.shift_levels(-1)
    assert widget.shapes.features["vertebra"].tolist() == ["T12", "L1"]
    np.testing.assert_allclose(widget.shapes.edge_color[0], _rgba(class_colour(class_id("T12"))))
    saved = AnnotationProject(tmp_path / "p").load(widget.image_key.value)
    assert [a.name for a in saved] == ["T12", "L1"]
    assert widget.undo()
    assert widget.shapes.features["vertebra"].tolist() == ["L1", "L2"]
    # refused when a label would leave T1..L5: nothing changes
    widget.set_annotations(
        [VertebraAnnotation(class_id("L4"), [SQUARE]), VertebraAnnotation(17, [_shift(40, 0)])]
    )
    assert widget.shift_levels(1) is False
    assert widget.status.level == "error" and "L5" in widget.status.value
    assert widget.shapes.features["vertebra"].tolist() == ["L4", "L5"]


def test_picker_skips_vertebrae_already_drawn(make_napari_viewer, tmp_path):
    _viewer, widget = _test_viewer(make_napari_viewer, tmp_path / "p")
    widget.direction.value = DIRECTIONS[0]
    widget.vertebra.value = "L3"
    widget.shapes.add_polygons([_shift(100, 0)])
    widget.vertebra.value = "L1"
    widget.shapes.add_polygons([SQUARE])
    assert widget.vertebra.value == "L2"
    widget.shapes.add_polygons([_shift(40, 0)])
    assert widget.vertebra.value == "L4"  # L3 is drawn already


def test_score_and_source_survive_edits(make_napari_viewer, tmp_path):
    _viewer, widget = _test_viewer(make_napari_viewer, tmp_path / "p")
    model = VertebraAnnotation(class_id("L1"), [SQUARE], score=0.9, source="model")
    widget.set_annotations([model], label="review accept L1")
    widget.vertebra.value = "L2"
    widget.shapes.add_polygons([_shift(40, 0)])  # a hand polygon beside it
    data = [np.asarray(d) for d in widget.shapes.data]
    widget.shapes.data = [data[0] + 1.0, data[1]]  # the accepted one is fixed by hand
    saved = AnnotationProject(tmp_path / "p").load(widget.image_key.value)
    assert [(a.name, a.score, a.source) for a in saved] == [
        ("L1", pytest.approx(0.9), "model"),
        ("L2", None, "hand"),
    ]
    np.testing.assert_allclose(saved[0].polygons[0], SQUARE + 1.0)
