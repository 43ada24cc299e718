"""Annotate: click outlines (O) and the class set of the picker (issues 11 and 12)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.polygons import dice, rasterize
from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import class_id
from napari_vertebra.synth import synth_column
from napari_vertebra.widgets._outline_tool import OUTLINE_KEY
from napari_vertebra.widgets.annotate import AnnotateWidget

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def column():
    """A synthetic 1 mm/px sagittal MIP, labelled with the extended class set."""
    return synth_column(np.random.default_rng(3), "extended", outline="whole")


def _click(viewer, position) -> None:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    press = read_only_mouse_event(type="mouse_press", position=position, button=1)
    mouse_press_callbacks(viewer, press)
    release = read_only_mouse_event(type="mouse_release", position=position, button=1)
    mouse_release_callbacks(viewer, release)


def _widget(make_napari_viewer, column, project):
    viewer = make_napari_viewer()
    viewer.add_image(column.image, name="MIP column")
    widget = AnnotateWidget(viewer, project_dir=str(project))
    widget.mip_layer.value = viewer.layers["MIP column"]
    return viewer, widget


def test_a_click_in_outline_mode_adds_an_undoable_polygon_of_the_picked_class(
    make_napari_viewer, column, tmp_path, qtbot
):
    viewer, widget = _widget(make_napari_viewer, column, tmp_path / "p")
    l2 = next(a for a in column.annotations if a.name == "L2")
    ref = rasterize(l2.polygons, column.image.shape)
    rows, cols = np.nonzero(ref)
    r = int(np.median(rows))
    inside = (float(r), float(np.median(cols[rows == r])))
    widget.vertebra.value = "L2"
    viewer.layers.selection.active = widget.shapes
    viewer.window._qt_viewer._key_map_handler.press_key(OUTLINE_KEY)
    assert widget.outline_tool.enabled
    _click(viewer, inside)
    qtbot.waitUntil(lambda: len(widget.shapes.data) == 1, timeout=30000)
    feats = widget.shapes.features
    assert feats["vertebra"].tolist() == ["L2"] and feats["source"].tolist() == ["outline"]
    assert dice(rasterize(np.asarray(widget.shapes.data[0]), ref.shape), ref) >= 0.6
    saved = AnnotationProject(tmp_path / "p").load(widget.image_key.value)
    assert [(a.name, a.source) for a in saved] == [("L2", "outline")]
    assert widget.vertebra.value == "L3"  # the picker moved on, as after a drawn polygon
    assert widget.undo()
    assert len(widget.shapes.data) == 0


def test_the_picker_follows_the_extended_class_set(make_napari_viewer, column, tmp_path):
    _viewer, widget = _widget(make_napari_viewer, column, tmp_path / "p")
    assert widget.class_set.value == "paper" and "S1" not in widget.vertebra.choices
    sacrum = next(a for a in column.annotations if a.name == "S1")
    l5 = next(a for a in column.annotations if a.name == "L5")
    widget.set_annotations([VertebraAnnotation(l5.class_id, l5.polygons), sacrum])
    assert widget.class_set.value == "extended"  # a level the paper picker cannot show
    assert {"C7", "T13", "L6", "S1"} <= set(widget.vertebra.choices)
    widget.vertebra.value = "L4"
    widget.next_class()
    assert widget.vertebra.value == "L5"
    widget.next_class()
    assert widget.vertebra.value == "L6"  # the extended order, not the id order
    widget.vertebra.value = "C7"
    widget.pick_first_missing()
    assert widget.vertebra.value == "C7"
    # after a drawn polygon the picker moves on past T13 and L6, which are rare: T12 is
    # followed by L1 and L5 by the sacrum, unless one of them is chosen
    widget.vertebra.value = "T12"
    widget._advance(present=[class_id("T12")])
    assert widget.vertebra.value == "L1"
    widget.vertebra.value = "T13"
    widget._advance(present=[class_id("T12"), class_id("T13")])
    assert widget.vertebra.value == "L1"
    widget.vertebra.value = "L5"
    widget._advance(present=[class_id("L5")])
    assert widget.vertebra.value == "S1"
    assert widget.shapes.features["class_id"].tolist() == [class_id("L5"), class_id("S1")]
