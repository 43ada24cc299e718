"""Outline mode: O toggles it, a click inside a vertebra adds its polygon (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.polygons import dice, rasterize
from napari_vertebra.synth import synth_column
from napari_vertebra.widgets._outline_tool import OUTLINE_KEY, OutlineTool


@pytest.fixture(scope="module")
def column():
    """A synthetic 1 mm/px sagittal MIP with whole-vertebra outlines."""
    return synth_column(np.random.default_rng(3), outline="whole")


def _click(viewer, position, drag_to=None) -> None:
    """A left press and release (optionally with a drag between) as the canvas sends them."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    end = position if drag_to is None else drag_to
    mouse_press_callbacks(
        viewer, read_only_mouse_event(type="mouse_press", position=position, button=1)
    )
    if drag_to is not None:
        mouse_move_callbacks(
            viewer,
            read_only_mouse_event(type="mouse_move", position=end, button=1, is_dragging=True),
        )
    mouse_release_callbacks(
        viewer, read_only_mouse_event(type="mouse_release", position=end, button=1)
    )


def _press(viewer, key: str) -> None:
    """A key press as the canvas dispatches it (active layer's keymap, then viewer's)."""
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def _setup(make_napari_viewer, column, get_outliner=None):
    viewer = make_napari_viewer()
    viewer.add_image(column.image, name="MIP")
    layer = viewer.add_shapes(name="vertebrae", ndim=2)
    layer.mode = "add_polygon"
    got: list[tuple] = []

    def on_polygon(polygon, source="outline", score=None):
        got.append((np.asarray(polygon), source, score))

    tool = OutlineTool(viewer, layer, on_polygon, get_outliner=get_outliner, inline=True).install()
    return viewer, layer, tool, got


def test_click_in_outline_mode_adds_the_vertebra(make_napari_viewer, column):
    viewer, layer, tool, got = _setup(make_napari_viewer, column)
    l2 = next(a for a in column.annotations if a.name == "L2")
    ref = rasterize(l2.polygons, column.image.shape)
    rows, cols = np.nonzero(ref)
    inside = (float(np.median(rows)), float(np.median(cols[rows == int(np.median(rows))])))

    _click(viewer, inside)  # outline mode is off: nothing
    assert got == []

    viewer.layers.selection.active = layer
    _press(viewer, OUTLINE_KEY)
    assert tool.enabled and layer.mode == "pan_zoom"  # napari draws nothing on a click
    _click(viewer, inside)
    assert len(got) == 1
    polygon, source, score = got[0]
    assert source == "outline" and score is None
    assert polygon.ndim == 2 and polygon.shape[1] == 2 and len(polygon) >= 3
    assert dice(rasterize(polygon, column.image.shape), ref) >= 0.6
    assert len(layer.data) == 0  # the tool adds nothing itself: the widget's callback does

    _click(viewer, inside, drag_to=(inside[0] + 30, inside[1] + 30))  # a drag pans
    assert len(got) == 1

    _click(viewer, (2.0, 2.0))  # background: a message, no polygon
    assert len(got) == 1 and tool.last is None

    layer.mode = "add_polygon"  # choosing a drawing mode leaves outline mode
    assert not tool.enabled
    _click(viewer, inside)
    assert len(got) == 1

    viewer.layers.selection.active = viewer.layers["MIP"]  # O works with the MIP active too
    _press(viewer, OUTLINE_KEY)
    assert tool.enabled and layer.mode == "pan_zoom"
    _press(viewer, OUTLINE_KEY)
    assert not tool.enabled and layer.mode == "add_polygon"  # the drawing mode is back

    tool.uninstall()
    assert tool._on_mouse not in viewer.mouse_drag_callbacks
    _press(viewer, OUTLINE_KEY)  # the key is given back
    assert not tool.enabled


def test_model_outline_comes_first_with_its_score(make_napari_viewer, column):
    spacings = []

    class FakeOutliner:
        def outline_at(self, image, point_rc, spacing=None):
            from napari_vertebra.model.outline import ModelOutline

            spacings.append(spacing)
            r, c = point_rc
            square = np.array([[r - 5, c - 5], [r - 5, c + 5], [r + 5, c + 5], [r + 5, c - 5]])
            return ModelOutline(square, 15, 0.42, np.zeros(image.shape, bool))

    viewer, _layer, tool, got = _setup(make_napari_viewer, column, lambda: FakeOutliner())
    tool.get_spacing = lambda: [2.0, 2.0]  # the MIP's, for a model at a fixed scale
    tool.set_enabled(True)
    _click(viewer, (40.0, 50.0))
    assert len(got) == 1 and spacings == [[2.0, 2.0]]
    polygon, source, score = got[0]
    assert source == "model" and score == pytest.approx(0.42)
    np.testing.assert_allclose(polygon.mean(axis=0), (40.0, 50.0))
    assert tool.last["class_id"] == 15
