"""Annotate: the autosave line follows undo / redo; outline mode adds nothing where no
vertebra lies under the click; an image that is not a MIP is said to be one (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from widget_helpers import sample_mip_viewer

from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.core.labels import class_id
from napari_vertebra.core.pipeline import mip_labels
from napari_vertebra.synth import synth_column
from napari_vertebra.widgets._outline_tool import OUTLINE_KEY
from napari_vertebra.widgets.annotate import AnnotateWidget

pytestmark = pytest.mark.gui

SQUARE = np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0], [30.0, 10.0]])


def _press(viewer, key: str) -> None:
    """A key press as the canvas dispatches it (active layer's keymap, then viewer's)."""
    viewer.window._qt_viewer._key_map_handler.press_key(key)


def _click(viewer, position) -> None:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    for kind, fn in (
        ("mouse_press", mouse_press_callbacks),
        ("mouse_release", mouse_release_callbacks),
    ):
        fn(viewer, read_only_mouse_event(type=kind, position=position, button=1))


@pytest.fixture
def notes():
    """The napari notifications shown meanwhile: [(level, message)]."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(n):
        seen.append((str(n.severity), str(n.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def test_the_autosave_line_follows_undo_and_redo(make_napari_viewer, tmp_path):
    """Before: "autosaved 22:45:48 · 2 vertebrae" stayed after Ctrl+Z, with 1 on screen
    and in the file."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((200, 100), np.float32), name="MIP test")
    widget = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    viewer.window.add_dock_widget(widget, name="Annotate vertebrae")
    widget.mip_layer.value = viewer.layers["MIP test"]
    widget.vertebra.value = "L1"
    widget.shapes.add_polygons([SQUARE])
    widget.shapes.add_polygons([SQUARE + np.array([40.0, 0.0])])
    assert "2 vertebrae" in widget.autosave_label.value
    key = widget.image_key.value
    viewer.layers.selection.active = widget.shapes
    _press(viewer, "Control-Z")
    assert len(AnnotationProject(tmp_path / "p").load(key)) == 1
    assert "1 vertebra " in widget.autosave_label.value
    assert "undid draw L2" in widget.autosave_label.value
    assert "1 vertebra now" in widget.status.value
    _press(viewer, "Control-Shift-Z")
    assert len(AnnotationProject(tmp_path / "p").load(key)) == 2
    assert "redid draw L2" in widget.autosave_label.value
    assert "2 vertebrae" in widget.autosave_label.value
    _press(viewer, "Control-Z")
    _press(viewer, "Control-Z")
    assert "0 vertebrae" in widget.autosave_label.value
    assert AnnotationProject(tmp_path / "p").load(key) == []


def test_outline_mode_on_a_noise_picture_adds_nothing_and_says_it_is_no_mip(
    make_napari_viewer, tmp_path, qtbot, notes
):
    """Before: "Added the outline" on noise, and the noise became a project image with a
    T11 that Export would train on."""
    from PIL import Image

    png = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (336, 136)).astype(np.uint8)).save(png)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(png))  # napari's own reader: a grey 2D image
    widget = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    viewer.window.add_dock_widget(widget, name="Annotate vertebrae")
    widget.refresh_choices()
    widget.mip_layer.value = layer
    warned = [m for level, m in notes if level == "warning"]
    assert any(
        "noise does not look like a sagittal MIP" in m and "pixel noise" in m for m in warned
    )
    assert widget.status.level == "warning"
    widget.vertebra.value = "T11"
    viewer.layers.selection.active = widget.shapes
    _press(viewer, OUTLINE_KEY)
    assert widget.outline_tool.enabled
    for point in ((100.0, 60.0), (200.0, 30.0), (40.0, 100.0)):
        _click(viewer, point)
        qtbot.waitUntil(lambda: not widget.outline_tool.runner.busy, timeout=30_000)
    assert len(widget.shapes.data) == 0
    assert "No vertebra outline found" in widget.status.value
    assert widget.image_key.value not in AnnotationProject(tmp_path / "p")
    # a MIP-like image gets no such warning
    notes.clear()
    column = synth_column(np.random.default_rng(1), outline="whole")
    viewer.add_image(column.image, name="MIP column")
    widget.refresh_choices()
    widget.mip_layer.value = viewer.layers["MIP column"]
    assert notes == []


def test_a_click_in_a_vertebra_cut_by_the_top_edge_adds_nothing(
    make_napari_viewer, sample_result, tmp_path, qtbot
):
    """Before: the cut T11 of the sample's MIP was outlined over T12 (Dice 0.38)."""
    viewer, _pre, widget = sample_mip_viewer(make_napari_viewer, sample_result, tmp_path / "p")
    t11 = mip_labels(sample_result) == class_id("T11")
    assert t11[0].any() and not t11[20:].any()  # T11 shows only at the top edge
    depth = ndi.distance_transform_edt(np.pad(t11, 1))[1:-1, 1:-1]
    deepest = np.unravel_index(int(np.argmax(depth)), t11.shape)
    widget.vertebra.value = "T11"
    viewer.layers.selection.active = widget.shapes
    _press(viewer, OUTLINE_KEY)
    _click(viewer, tuple(float(v) for v in deepest))
    qtbot.waitUntil(lambda: not widget.outline_tool.runner.busy, timeout=30_000)
    assert len(widget.shapes.data) == 0
    assert "No vertebra outline found" in widget.status.value
    # T12 below it is still outlined with one click
    t12 = mip_labels(sample_result) == class_id("T12")
    depth = ndi.distance_transform_edt(np.pad(t12, 1))[1:-1, 1:-1]
    widget.vertebra.value = "T12"
    _click(viewer, tuple(float(v) for v in np.unravel_index(int(np.argmax(depth)), t12.shape)))
    qtbot.waitUntil(lambda: len(widget.shapes.data) == 1, timeout=30_000)
    assert widget.shapes.features["vertebra"].tolist() == ["T12"]


def test_outline_says_when_the_mip_records_a_spacing_that_cannot_be_one(
    make_napari_viewer, tmp_path
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((60, 40), np.float32), name="MIP x", metadata={"spacing_mm": -1})
    widget = AnnotateWidget(viewer, project_dir=str(tmp_path / "p"))
    widget.mip_layer.value = viewer.layers["MIP x"]
    assert widget._outline_spacing() is None  # read as 1 mm, and said
    assert widget.status.level == "warning" and "-1" in widget.status.value
