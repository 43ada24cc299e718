"""The "Review predictions" widget: accept, reject and fix vertebrae into the project."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.polygons import dice, mask_to_polygons, rasterize
from napari_vertebra.core.labels import class_id, class_name

pytestmark = [pytest.mark.gui, pytest.mark.torch]


@pytest.fixture(scope="module")
def shared_checkpoint(tmp_path_factory):
    from test_predict_widget import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.pt")


@pytest.fixture
def reviewing(make_napari_viewer, sample_result, shared_checkpoint, qtbot, tmp_path):
    """Viewer with the sample MIP, Annotate (empty project), Predict (done) and Review."""
    from test_predict_widget import add_mip

    from napari_vertebra.widgets.annotate import AnnotateWidget
    from napari_vertebra.widgets.predict import PredictWidget
    from napari_vertebra.widgets.review import ReviewWidget

    viewer = make_napari_viewer()
    mip = add_mip(viewer, sample_result)
    annotate = AnnotateWidget(viewer, project_dir=str(tmp_path / "project"))
    viewer.window.add_dock_widget(annotate, name="Annotate vertebrae")
    annotate.refresh_choices()
    annotate.mip_layer.value = mip
    predict = PredictWidget(viewer, checkpoint=str(shared_checkpoint))
    viewer.window.add_dock_widget(predict, name="Predict vertebrae", tabify=True)
    review = ReviewWidget(viewer)
    viewer.window.add_dock_widget(review, name="Review predictions", tabify=True)
    predict.set_image_layer(mip)
    predict.min_score.value = 0.0
    assert predict.run()
    qtbot.waitUntil(lambda: not predict.busy, timeout=120_000)
    assert len(predict.prediction) >= 4, "the random model should give a few detections"
    return viewer, annotate, predict, review


def saved(annotate):
    return annotate.project.load(annotate.image_key.value)


def test_accept_reject_fix(reviewing):
    _viewer, annotate, predict, review = reviewing
    pred = predict.prediction
    n = len(pred)
    assert review.table.rowCount() == n  # filled when the prediction arrived
    assert review.states == ["pending"] * n
    assert review.table.item(0, 0).text() == class_name(int(pred.classes[0]))
    assert review.table.item(0, 1).text() == f"{pred.scores[0]:.2f}"
    assert review.current == 0

    # accept: the mask becomes a polygon of the project (autosaved)
    assert review.accept()
    c0 = int(pred.classes[0])
    (a,) = [x for x in saved(annotate) if x.class_id == c0]
    outline = rasterize(mask_to_polygons(pred.masks[0]), pred.shape)  # of the mask
    assert dice(rasterize(a.polygons, pred.shape), outline) > 0.99
    assert review.states[0] == "accepted" and review.table.item(0, 2).text() == "accepted"
    assert review.current == 1  # on to the next pending one

    # reject the next one (nothing added) and the accepted one (its polygon goes)
    assert review.reject()
    assert review.states[1] == "rejected"
    assert int(pred.classes[1]) not in {x.class_id for x in saved(annotate)}
    assert review.reject(0)
    assert c0 not in {x.class_id for x in saved(annotate)}

    # fix: added with the picked class, selected, vertices editable
    review.select(2)
    cid = int(pred.classes[3])  # the class of a vertebra still pending
    review.fix_class.value = class_name(cid)
    assert review.fix()
    assert review.states[2] == "fixed"
    assert cid in {x.class_id for x in saved(annotate)}
    shapes = annotate.shapes
    assert shapes.mode == "direct"
    picked = shapes.features["class_id"].to_numpy()[list(shapes.selected_data)]
    assert len(picked) >= 1 and set(picked.tolist()) == {cid}  # every part of it

    # accept all the rest, except the one whose class the fix took
    pending = review.states.count("pending")
    assert review.accept_all() == pending - 1
    assert review.states.count("pending") == 1 and review.states[3] == "pending"
    assert "1 left pending" in review.status.value
    classes = {x.class_id for x in saved(annotate)}
    accepted = {int(pred.classes[i]) for i, s in enumerate(review.states) if s == "accepted"}
    assert classes == accepted | {cid}
    assert "accepted" in review.summary.value


def test_dice_against_ground_truth(reviewing):
    viewer, _annotate, predict, review = reviewing
    gt_layer = viewer.layers["MIP labels lumbar CT"]
    review.refresh_choices()
    review.ground_truth.value = gt_layer
    pred = predict.prediction
    gt = np.asarray(gt_layer.data)
    for i in range(len(pred)):
        expected = dice(pred.masks[i], gt == int(pred.classes[i]))
        assert review.dice[i] == pytest.approx(expected)
        assert review.table.item(i, 3).text() == f"{expected:.3f}"
    assert "mean Dice" in review.summary.value
    review.ground_truth.value = "none"
    assert all(d is None for d in review.dice)


def test_keyboard_shortcuts(reviewing, qtbot):
    from qtpy.QtCore import Qt

    viewer, _annotate, predict, review = reviewing
    review.bind_shortcuts(True)
    viewer.layers.selection.active = predict.labels_layer  # no layer key clashes
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_A)
    assert review.states[0] == "accepted"
    qtbot.keyClick(canvas, Qt.Key.Key_R)
    assert review.states[1] == "rejected"
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert review.current == 3  # skips nothing pending before it: 2 -> 3
    review.bind_shortcuts(False)
    qtbot.keyClick(canvas, Qt.Key.Key_A)
    assert review.states[3] == "pending"
    assert "A</b> accept" in review.help_label.value


def test_review_without_prediction(make_napari_viewer):
    from napari_vertebra.widgets.review import ReviewWidget

    review = ReviewWidget(make_napari_viewer())
    review.refresh()
    assert "no prediction" in review.status.value
    assert not review.accept() and not review.reject() and review.accept_all() == 0
    assert class_id("L1") == 13


@pytest.mark.parametrize(
    ("title", "cls"),
    [
        ("Train model", "TrainWidget"),
        ("Predict vertebrae", "PredictWidget"),
        ("Review predictions", "ReviewWidget"),
    ],
)
def test_plugin_menu_opens_the_model_widgets(make_napari_viewer, title, cls):
    from napari_vertebra.widgets._layers import unwrap
    from napari_vertebra.widgets.predict import find_dock_widget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-vertebra", title)
    assert type(widget).__name__ == cls
    assert unwrap(widget.viewer) is viewer
    assert find_dock_widget(viewer, cls, dock=False) is widget
