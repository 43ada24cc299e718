"""The "Review predictions" widget: accept, reject and fix vertebrae into the project."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.polygons import dice, mask_to_polygons, rasterize
from napari_vertebra.core.labels import class_id, class_name

pytestmark = [pytest.mark.gui, pytest.mark.torch]


@pytest.fixture(scope="module")
def shared_checkpoint(tmp_path_factory):
    """An untrained small Mask R-CNN (its detections are arbitrary, enough to review)."""
    from napari_vertebra.model.predict_jobs import avoid_triton

    avoid_triton()  # as the widget does: Triton after napari's OpenGL crashes (llvmpipe)
    import torch

    from napari_vertebra.model.build import build_model, save_checkpoint
    from napari_vertebra.model.config import load_config

    cfg = load_config("smoke", {"min_size": 192, "max_size": 256})
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_checkpoint(path, model=build_model(cfg).state_dict(), config=cfg.to_dict(), epoch=0)
    return path


@pytest.fixture
def reviewing(make_napari_viewer, sample_result, shared_checkpoint, qtbot, tmp_path):
    """Viewer with the sample MIP, Annotate (empty project), Predict (done) and Review."""
    from napari_vertebra.core.pipeline import mip_labels
    from napari_vertebra.widgets.annotate import AnnotateWidget
    from napari_vertebra.widgets.predict import PredictWidget
    from napari_vertebra.widgets.review import ReviewWidget

    viewer = make_napari_viewer()
    mip = viewer.add_image(
        sample_result.mip,
        name="MIP lumbar CT",
        colormap="gray",
        metadata={"pipeline_result": sample_result},
    )
    viewer.add_labels(mip_labels(sample_result), name="MIP labels lumbar CT", opacity=0.3)
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
    assert predict.prediction is not None, predict.status.value
    assert len(predict.prediction) >= 4, "the random model should give a few detections"
    return viewer, annotate, predict, review


def saved(annotate):
    return annotate.project.load(annotate.image_key.value)


def no_question(*args, **kwargs):
    raise AssertionError(f"asked without a polygon to replace: {args}")


def test_accept_reject_fix(reviewing):
    _viewer, annotate, predict, review = reviewing
    review.ask = no_question  # the project is empty: nothing to ask about
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

    # accept all the rest: one per class, never the class the fix took
    pending = [i for i, s in enumerate(review.states) if s == "pending"]
    classes = {int(pred.classes[i]) for i in pending} - {cid}
    assert review.accept_all() == len(classes)
    assert review.states[3] == "pending"
    got = [x.class_id for x in saved(annotate)]
    assert sorted(got) == sorted(classes | {cid})  # each class once
    assert "accepted" in review.summary.value


def hand_polygon(pred, i):
    """A hand-drawn quadrilateral over predicted vertebra ``i`` (not its outline)."""
    rows, cols = np.nonzero(pred.masks[i])
    r0, r1, c0, c1 = rows.min() + 0.25, rows.max() - 0.5, cols.min() + 0.5, cols.max() - 0.75
    return np.array([[r0, c0], [r0 - 1.0, c1], [r1, c1 + 0.5], [r1 + 0.5, c0]])


def polygons_of(annotate, cid):
    return [p for a in saved(annotate) if a.class_id == cid for p in a.polygons]


def test_accept_over_a_hand_polygon_asks_and_reject_restores_it(reviewing):
    from napari_vertebra.annotation.types import VertebraAnnotation

    _viewer, annotate, predict, review = reviewing
    pred = predict.prediction
    c0, c1 = int(pred.classes[0]), int(pred.classes[1])
    hand = VertebraAnnotation(c0, [hand_polygon(pred, 0)])
    other = VertebraAnnotation(c1 if c1 != c0 else c0 % 17 + 1, [hand_polygon(pred, 1)])
    annotate.set_annotations([hand, other])
    review.refresh()
    asked = []
    review.ask = lambda title, text, choices: asked.append(text) or "replace"

    assert review.accept(0)
    assert len(asked) == 1 and class_name(c0) in asked[0]
    (p,) = polygons_of(annotate, c0)  # replaced (the user said so) by the prediction
    assert p.shape != hand.polygons[0].shape or not np.allclose(p, hand.polygons[0])
    (model,) = [a for a in saved(annotate) if a.class_id == c0]  # marked, with its score
    assert model.source == "model" and model.score == pytest.approx(float(pred.scores[0]))
    assert review.reject(0)
    (p,) = polygons_of(annotate, c0)
    np.testing.assert_allclose(p, hand.polygons[0], atol=1e-3)  # exactly the hand one
    assert [a.source for a in saved(annotate) if a.class_id == c0] == ["hand"]
    np.testing.assert_allclose(polygons_of(annotate, other.class_id)[0], other.polygons[0])

    # keep both: the hand polygon stays; reject takes only the prediction out
    review.ask = lambda *a: "keep"
    assert review.accept(0)
    assert len(polygons_of(annotate, c0)) == 2
    assert any("used 2 times" in w for w in annotate.warnings)  # the Checks say so
    assert review.reject(0)
    (p,) = polygons_of(annotate, c0)
    np.testing.assert_allclose(p, hand.polygons[0], atol=1e-3)

    # Cancel: nothing changes
    review.ask = lambda *a: None
    assert not review.accept(0)
    assert review.states[0] == "rejected" and len(polygons_of(annotate, c0)) == 1


def test_accept_all_asks_with_a_count_and_no_changes_nothing(reviewing):
    from napari_vertebra.annotation.types import VertebraAnnotation

    _viewer, annotate, predict, review = reviewing
    pred = predict.prediction
    firsts = {}
    for i, c in enumerate(pred.classes):
        firsts.setdefault(int(c), i)
    (ca, ia), (cb, ib) = list(firsts.items())[:2]
    hands = [VertebraAnnotation(c, [hand_polygon(pred, i)]) for c, i in ((ca, ia), (cb, ib))]
    annotate.set_annotations(hands)
    review.refresh()
    before = [(a.class_id, a.polygons[0].copy()) for a in saved(annotate)]
    asked = []
    review.ask = lambda title, text, choices: asked.append((text, choices)) or None

    assert review.accept_all() == 0
    (text, _choices) = asked[0]
    assert text.startswith("2 of the ") and class_name(ca) in text
    assert review.states == ["pending"] * len(pred)
    after = [(a.class_id, a.polygons[0]) for a in saved(annotate)]
    assert len(after) == len(before)
    for (c, p), (c2, p2) in zip(before, after, strict=True):
        assert c == c2 and np.allclose(p, p2, atol=1e-3)

    # "accept only the others": every hand polygon stays as it was
    review.ask = lambda *a: "skip"
    assert review.accept_all() == len(firsts) - 2
    for c, p in before:
        (q,) = polygons_of(annotate, c)
        np.testing.assert_allclose(q, p, atol=1e-3)
    assert review.states[ia] == "pending" and review.states[ib] == "pending"


def answer_next_dialog(qtbot, text):
    """Answer the next question box as a user: click its button ``text`` with the mouse,
    or (``text`` "Enter") press Enter on the widget that has the keyboard focus."""
    from qtpy.QtCore import Qt, QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    def answer():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):  # not shown yet
            QTimer.singleShot(20, answer)
            return
        if text == "Enter":
            qtbot.keyClick(QApplication.focusWidget() or box, Qt.Key.Key_Return)
        else:
            button = next(b for b in box.buttons() if b.text() == text)
            qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
        if box.isVisible():  # the answer did not close it: do not hang the test
            box.reject()

    QTimer.singleShot(0, answer)


@pytest.mark.parametrize(
    ("key", "answer"), [("A", "Keep both"), ("F", "Keep both"), ("A", "Enter")]
)
def test_keep_both_over_a_polygon_from_3d_labels_keeps_both(
    reviewing, inline_workers, qtbot, key, answer
):
    """A (or F) on a vertebra that has a polygon from "Labels from 3D", on the polygon
    layer, then "Keep both" clicked or Enter (it used to be "Replace"): the 3D polygon
    stays beside the prediction and the Checks flag the class used twice."""
    from qtpy.QtCore import Qt

    viewer, annotate, predict, review = reviewing
    assert annotate.labels_from_3d()
    from_3d = annotate.annotations()
    pred = predict.prediction
    row = next(i for i, c in enumerate(pred.classes) if int(c) in {a.class_id for a in from_3d})
    cid = int(pred.classes[row])
    before = [p for a in from_3d if a.class_id == cid for p in a.polygons]
    review.refresh()
    review.select(row)
    review.fix_class.value = class_name(cid)
    review.bind_shortcuts(True)  # as when the widget is shown
    viewer.layers.selection.active = annotate.shapes  # where Labels from 3D leaves you
    answer_next_dialog(qtbot, answer)
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, getattr(Qt.Key, f"Key_{key}"))
    assert review.states[row] == ("accepted" if key == "A" else "fixed")
    after = saved(annotate)
    kept = [a for a in after if a.class_id == cid]
    assert sorted(a.source for a in kept) == sorted([from_3d[0].source, "model"])
    old = [p for a in kept if a.source != "model" for p in a.polygons]
    assert len(old) == len(before)
    for p, q in zip(old, before, strict=True):
        np.testing.assert_allclose(p, q, atol=1e-3)  # the 3D polygon as it was
    assert f"{class_name(cid)} is used 2 times" in annotate.warnings
    assert "kept beside" in review.status.value and review.status.level == "warning"


def crack(mask):
    """``mask`` in fragments: a 2 px crack across it, a hole and a far 3x3 island."""
    m = mask.copy()
    rows, cols = np.nonzero(m)
    mid = int(np.median(rows))
    m[mid : mid + 2, :] = False
    m[rows.min() + 1, cols.min() + 1 : cols.max() - 1] = False
    far = (0, 0) if rows.min() > m.shape[0] // 2 else (m.shape[0] - 3, m.shape[1] - 3)
    m[far[0] : far[0] + 3, far[1] : far[1] + 3] = True
    return m


def test_accept_all_gives_one_polygon_per_vertebra_whatever_its_masks(reviewing, qtbot):
    """Fragmented masks (a crack, an island far off): "Accept all pending" gave one
    polygon per fragment (13 vertebrae became 72 polygons); now one per vertebra."""
    from qtpy.QtCore import Qt

    _viewer, annotate, predict, review = reviewing
    review.ask = no_question
    pred = predict.prediction
    pred.masks = np.stack([crack(m) for m in pred.masks])
    assert sum(len(mask_to_polygons(m)) for m in pred.masks) > 2 * len(pred)
    review.refresh()
    qtbot.mouseClick(review.accept_all_button.native, Qt.MouseButton.LeftButton)
    accepted = [i for i, s in enumerate(review.states) if s == "accepted"]
    assert accepted
    anns = saved(annotate)
    assert sorted(a.class_id for a in anns) == sorted(int(pred.classes[i]) for i in accepted)
    assert [len(a.polygons) for a in anns] == [1] * len(anns)


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


def test_keyboard_shortcuts_with_the_boxes_layer_active(reviewing, qtbot):
    from qtpy.QtCore import Qt

    viewer, annotate, predict, review = reviewing
    review.ask = no_question
    review.bind_shortcuts(True)  # as when the widget is shown
    boxes = predict.boxes_layer
    viewer.layers.selection.active = boxes  # where Predict leaves the user
    mode, n = boxes.mode, len(boxes.data)
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_A)
    assert review.states[0] == "accepted"
    assert len(boxes.selected_data) < n  # napari's "select all" did not run
    qtbot.keyClick(canvas, Qt.Key.Key_R)
    assert review.states[1] == "rejected"
    assert boxes.mode == mode  # not switched to rectangle drawing
    assert review.current == 2  # on to the next pending one
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert review.current == 3
    qtbot.keyClick(canvas, Qt.Key.Key_F)  # fix: the polygon layer becomes active
    assert review.states[3] == "fixed"
    assert viewer.layers.selection.active is annotate.shapes
    qtbot.keyClick(canvas, Qt.Key.Key_R)  # still Review's key on the polygon layer
    assert review.states[3] == "rejected" and annotate.shapes.mode == "direct"

    # hidden: the layers' own keys are back, the review keys gone
    review.bind_shortcuts(False)
    states = list(review.states)
    picker = annotate.vertebra.value
    qtbot.keyClick(canvas, Qt.Key.Key_Period)  # Annotate's "next vertebra" still works
    assert annotate.vertebra.value != picker or picker == "L5"
    viewer.layers.selection.active = boxes
    qtbot.keyClick(canvas, Qt.Key.Key_R)
    assert boxes.mode == "add_rectangle"  # napari's own key again
    qtbot.keyClick(canvas, Qt.Key.Key_A)
    assert review.states == states
    assert "A</b> accept" in review.help_label.value


def test_review_without_prediction(make_napari_viewer):
    from napari_vertebra.widgets.review import ReviewWidget

    review = ReviewWidget(make_napari_viewer())
    review.refresh()
    assert "no prediction" in review.status.value
    assert not review.accept() and not review.reject() and review.accept_all() == 0
    assert class_id("L1") == 13


def test_keys_follow_the_review_tab(make_napari_viewer, qtbot, tmp_path):
    """Qt keeps a tabbed dock "visible" behind another tab: the keys follow the tab."""
    from napari.utils.key_bindings import coerce_keybinding

    from napari_vertebra.widgets.annotate import AnnotateWidget
    from napari_vertebra.widgets.review import ReviewWidget

    viewer = make_napari_viewer(show=True)
    annotate = AnnotateWidget(viewer, project_dir=str(tmp_path / "project"))
    review = ReviewWidget(viewer)
    docks = [
        viewer.window.add_dock_widget(annotate, name="Annotate vertebrae"),
        viewer.window.add_dock_widget(review, name="Review predictions", tabify=True),
    ]
    key = coerce_keybinding("a")
    docks[1].raise_()
    qtbot.waitUntil(lambda: review.keys.active, timeout=5000)
    assert viewer.keymap.get(key) is not None
    docks[0].raise_()  # Annotate's tab: Review is behind it
    qtbot.waitUntil(lambda: not review.keys.active, timeout=5000)
    assert viewer.keymap.get(key) is None


def test_ask_returns_the_clicked_button_or_none_for_cancel(make_napari_viewer):
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    from napari_vertebra.widgets.review import ReviewWidget

    review = ReviewWidget(make_napari_viewer())

    def click(pick):
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):  # not shown yet
            QTimer.singleShot(20, lambda: click(pick))
            return
        pick(box).click()

    choices = {"replace": "Replace L1", "keep": "Keep both"}
    by_text = lambda text: lambda box: next(b for b in box.buttons() if b.text() == text)  # noqa: E731
    QTimer.singleShot(0, lambda: click(by_text("Keep both")))
    assert review.ask("L1 already has a polygon", "Replace it?", choices) == "keep"
    QTimer.singleShot(0, lambda: click(by_text("Replace L1")))
    assert review.ask("L1 already has a polygon", "Replace it?", choices) == "replace"
    QTimer.singleShot(0, lambda: click(lambda box: box.button(QMessageBox.StandardButton.Cancel)))
    assert review.ask("L1 already has a polygon", "Replace it?", choices) is None


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
    from napari_vertebra.widgets._session import session_for

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-vertebra", title)
    assert type(widget).__name__ == cls
    assert unwrap(widget.viewer) is viewer
    assert widget.session is session_for(viewer)  # napari hands it a proxy: same session
