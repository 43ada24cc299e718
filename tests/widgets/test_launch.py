"""``python -m napari_vertebra.launch``: headless message, docked widgets, the demo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from napari_vertebra import launch

pytestmark = pytest.mark.gui


def test_without_a_display_it_explains_and_exits_2():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.pop("QT_QPA_PLATFORM", None)
    proc = subprocess.run(
        [sys.executable, "-m", "napari_vertebra.launch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "xvfb-run -a make run" in proc.stderr
    assert "napari-vertebra preprocess" in proc.stderr


def test_demo_docks_the_widgets_and_fills_the_mip(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widgets = launch.dock_widgets(viewer, project=tmp_path / "proj")
    assert {"Preprocess CT", "Annotate vertebrae", "Export dataset"} <= set(widgets)
    ready = []
    launch.start_demo(viewer, widgets, on_ready=lambda: ready.append(True))
    qtbot.waitUntil(lambda: bool(ready), timeout=120_000)
    pre, ann = widgets["Preprocess CT"], widgets["Annotate vertebrae"]
    assert pre.result is not None, pre.status.value
    assert ann.mip_layer.value is pre.mip_layer()
    names = set(ann.shapes.features["vertebra"])
    assert {"L1", "L2", "L3", "L4", "L5"} <= names, ann.status.value
    # the polygons were autosaved in the project
    assert ann.project.load(ann.image_key.value)
    _assert_first_screen(viewer, widgets)

    # a second launch on the same project: the polygons come back, still on top
    viewer.close()
    viewer2 = make_napari_viewer()
    widgets2 = launch.dock_widgets(viewer2, project=tmp_path / "proj")
    ready.clear()
    launch.start_demo(viewer2, widgets2, on_ready=lambda: ready.append(True))
    qtbot.waitUntil(lambda: bool(ready), timeout=120_000)
    ann2 = widgets2["Annotate vertebrae"]
    assert {"L1", "L5"} <= set(ann2.shapes.features["vertebra"]), ann2.status.value
    _assert_first_screen(viewer2, widgets2)


def _assert_first_screen(viewer, widgets):
    """Annotate in front, its polygons active and on top, full tab titles, no slider."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabBar

    from napari_vertebra.widgets._view import sliders_needed

    ann = widgets["Annotate vertebrae"]
    layers = viewer.layers
    assert layers.selection.active is ann.shapes
    assert layers[-1] is ann.shapes  # above "MIP labels": the names stay readable
    assert layers[-1].text.visible
    qt_viewer = viewer.window._qt_viewer
    assert not sliders_needed(viewer)  # only the 2D MIP layers are visible
    assert not qt_viewer.dims.isVisibleTo(qt_viewer)
    bars = [b for b in viewer.window._qt_window.findChildren(QTabBar) if b.count() >= 3]
    assert bars, "the widgets are tabbed together"
    bar = bars[0]
    titles = [bar.tabText(i) for i in range(bar.count())]
    assert {launch.TAB_TITLES[t] for t in widgets} <= set(titles)  # short titles
    assert bar.tabText(bar.currentIndex()) == launch.TAB_TITLES["Annotate vertebrae"]
    assert bar.elideMode() == Qt.TextElideMode.ElideNone  # never cut to "Tr..."


@pytest.mark.parametrize(
    ("title", "cls"),
    [
        ("Preprocess CT", "PreprocessWidget"),
        ("Annotate vertebrae", "AnnotateWidget"),
        ("Export dataset", "ExportDatasetWidget"),
    ],
)
def test_plugin_menu_creates_the_widget_with_the_viewer(make_napari_viewer, title, cls):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-vertebra", title)
    assert type(widget).__name__ == cls
    from napari_vertebra.widgets._layers import unwrap

    assert unwrap(widget.viewer) is viewer  # napari hands plugins a proxy of the viewer
