"""The picture and the polygons stay together (issue 19, item 7): a re-run with another
crop margin, choosing another MIP, napari's Home button."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from widget_helpers import sample_mip_viewer

from napari_vertebra.annotation.from3d import labels_to_annotations
from napari_vertebra.annotation.polygons import dice, rasterize
from napari_vertebra.annotation.project import AnnotationProject
from napari_vertebra.synth import synth_column
from napari_vertebra.widgets._sample import CT_NAME, LABELS_NAME
from napari_vertebra.widgets.annotate import AnnotateWidget
from napari_vertebra.widgets.preprocess import PreprocessWidget

pytestmark = pytest.mark.gui


def _click(button) -> None:
    from qtpy.QtTest import QTest

    QTest.mouseClick(button.native, Qt.MouseButton.LeftButton)


def _docked(viewer, project):
    """Preprocess (run once with the sample's labels) and Annotate on its MIP."""
    pre = PreprocessWidget(viewer)
    viewer.window.add_dock_widget(pre, name="Preprocess CT")
    pre.ct_layer.value = viewer.layers[CT_NAME]
    pre.labels_layer.value = viewer.layers[LABELS_NAME]
    pre.debounce_ms = 50
    _click(pre.run_button)
    assert pre.result is not None, pre.status.value
    ann = AnnotateWidget(viewer, project_dir=str(project))
    viewer.window.add_dock_widget(ann, name="Annotate vertebrae")
    ann.refresh_choices()
    ann.mip_layer.value = pre.mip_layer()
    return pre, ann


def _dice_per_vertebra(annotations, reference) -> dict[str, float]:
    shape = reference.image.shape
    ref = {a.name: rasterize(a.polygons, shape) for a in reference.annotations}
    return {a.name: dice(rasterize(a.polygons, shape), ref[a.name]) for a in annotations}


def test_a_margin_change_moves_the_polygons_onto_the_new_mip_under_its_own_key(
    make_napari_viewer, inline_workers, qtbot, tmp_path
):
    """Before: the MIP shrank 336x136 -> 336x123, the key stayed example_ct_336x136 and
    the 6 polygons stayed where they were, about 13 px off the anatomy."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre, ann = _docked(viewer, tmp_path / "proj")
    _click(ann.from3d_button)
    old_key, old_shape = ann.image_key.value, pre.result.mip.shape
    assert old_key == "example_ct_336x136" and len(ann.annotations()) == 6
    old_polygons = [np.asarray(d).copy() for d in ann.shapes.data]

    # the user lowers the anterior margin (55 -> 40 mm): the step re-runs by itself
    runs = pre.n_runs
    pre.param_widgets["crop_margin_anterior_mm"].native.setValue(40.0)
    qtbot.waitUntil(lambda: pre.n_runs == runs + 1, timeout=60_000)
    new = pre.result
    h, w = new.mip.shape
    assert (h, w) == (336, 123) and (h, w) != old_shape
    key = ann.image_key.value
    assert key == f"example_ct_{h}x{w}" != old_key
    # the polygons lie on the anatomy of the new MIP: as "Labels from 3D" would draw them
    fresh = labels_to_annotations(new.source, new.labels_source, params=new.params, result=new,
                                  convention={i: i for i in range(1, 22)})  # fmt: skip
    scores = _dice_per_vertebra(ann.annotations(), fresh)
    assert len(scores) == 6 and min(scores.values()) >= 0.9, scores
    assert not np.allclose(np.asarray(ann.shapes.data[0]), old_polygons[0])
    assert ann.warnings == [], ann.warnings
    assert "moved with the anatomy" in ann.status.value and key in ann.status.value
    # the project: the new key holds the new MIP and the moved polygons, the old key its own
    project = AnnotationProject(tmp_path / "proj")
    stored = project.image(key)
    assert stored.image.shape == (h, w)
    assert [a.name for a in stored.annotations] == [a.name for a in ann.annotations()]
    before = project.image(old_key)
    assert before.image.shape == old_shape and len(before.annotations) == 6
    np.testing.assert_allclose(before.annotations[0].polygons[0], old_polygons[0], atol=1e-3)
    # later edits are saved against the new image
    ann.shapes.selected_data = {0}
    ann.delete_selected()
    assert len(AnnotationProject(tmp_path / "proj").load(key)) == 5
    assert len(AnnotationProject(tmp_path / "proj").load(old_key)) == 6

    # back to 55 mm: the earlier grid and its key again, the 5 polygons moved back
    pre.param_widgets["crop_margin_anterior_mm"].native.setValue(55.0)
    qtbot.waitUntil(lambda: pre.n_runs == runs + 2, timeout=60_000)
    assert ann.image_key.value == old_key
    assert len(ann.annotations()) == 5
    assert len(AnnotationProject(tmp_path / "proj").load(old_key)) == 5
    assert ann.undo()  # the move is one undoable step: the key's 6 polygons are back
    assert len(ann.annotations()) == 6


def test_a_rerun_of_a_mip_not_on_screen_carries_its_saved_polygons(
    make_napari_viewer, inline_workers, qtbot, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre, ann = _docked(viewer, tmp_path / "proj")
    _click(ann.from3d_button)
    lumbar = ann.mip_layer.value
    other = viewer.add_image(synth_column(np.random.default_rng(1)).image, name="MIP other")
    ann.refresh_choices()
    ann.mip_layer.value = other
    runs = pre.n_runs
    pre.param_widgets["crop_margin_posterior_mm"].native.setValue(30.0)
    qtbot.waitUntil(lambda: pre.n_runs == runs + 1, timeout=60_000)
    h, w = pre.result.mip.shape
    assert ann.image_key.value == "MIP_other_{}x{}".format(*other.data.shape)  # it stays
    ann.mip_layer.value = lumbar
    key = ann.image_key.value
    assert key == f"example_ct_{h}x{w}" and w != 136
    assert len(ann.annotations()) == 6  # carried in the project, shown now
    assert AnnotationProject(tmp_path / "proj").image(key).image.shape == (h, w)


def _visible_polygon_layers(viewer) -> list[str]:
    return [
        la.name
        for la in viewer.layers
        if la.visible and (la.metadata or {}).get("vertebra_annotations")
    ]


def test_choosing_another_mip_shows_only_its_polygons_and_fits_it(
    make_napari_viewer, sample_result, tmp_path
):
    """Before: the first MIP's polygons stayed visible over the second (all MIPs sit at
    the origin)."""
    viewer, pre, ann = sample_mip_viewer(make_napari_viewer, sample_result, tmp_path / "proj")
    lumbar = pre.mip_layer()
    ann.set_annotations(
        labels_to_annotations(sample_result.source, sample_result.labels_source,
                              {i: i for i in range(1, 22)}, result=sample_result).annotations
    )  # fmt: skip
    column = synth_column(np.random.default_rng(2), outline="whole")
    other = viewer.add_image(column.image, name="MIP column", colormap="gray")
    ann.refresh_choices()
    combo = ann.mip_layer.native  # the user picks the other MIP in the picker
    combo.setCurrentIndex(combo.findText("MIP column"))
    assert ann.mip_layer.value is other
    ann.set_annotations(column.annotations)
    assert _visible_polygon_layers(viewer) == ["vertebrae MIP column"]
    assert not lumbar.visible and not viewer.layers["MIP labels lumbar CT"].visible
    assert other.visible
    cam = viewer.camera
    np.testing.assert_allclose(cam.center[-2:], np.array(column.image.shape) / 2 - 0.5, atol=1)

    combo.setCurrentIndex(combo.findText(lumbar.name))  # and back
    assert _visible_polygon_layers(viewer) == ["vertebrae MIP lumbar CT"]
    assert lumbar.visible and not other.visible
    assert len(ann.annotations()) == 6


def test_home_fits_the_mip_not_the_hidden_volumes(make_napari_viewer, sample_result):
    """Before: the hidden CT and its 3D steps set the extent and the MIP shrank into a
    corner of the canvas."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-vertebra", "lumbar_ct")
    pre = PreprocessWidget(viewer)
    viewer.window.add_dock_widget(pre, name="Preprocess CT")
    pre.labels_layer.value = viewer.layers[LABELS_NAME]
    pre.show_result(sample_result, ct_layer=viewer.layers[CT_NAME])
    mip = pre.mip_layer()
    assert mip.visible and not viewer.layers[CT_NAME].visible
    cam = viewer.camera
    cam.center, cam.zoom = (0.0, -150.0, 400.0), 0.2  # the user panned and zoomed away
    _click_home(viewer)
    h, w = mip.data.shape
    np.testing.assert_allclose(cam.center[-2:], (h / 2 - 0.5, w / 2 - 0.5), atol=0.5)
    canvas = np.asarray(viewer.canvas.size, float)
    assert cam.zoom == pytest.approx(0.95 * np.min(canvas / (h, w)), rel=0.02)
    # with the volume shown, Home fits the volume (all that shows)
    pre.show_volume()
    _click_home(viewer)
    box = viewer.layers[pre.layer_names()["windowed"]]
    lo, hi = np.asarray(box.extent.world)[:, -2:]
    np.testing.assert_allclose(cam.center[-2:], (lo + hi) / 2, atol=2)


def _click_home(viewer) -> None:
    from qtpy.QtTest import QTest

    button = viewer.window._qt_viewer.viewerButtons.resetViewButton
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)
