"""The Qt-free review controller: accept / reject / fix / accept all never lose a polygon."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_vertebra.annotation.review import (
    ReviewController,
    ReviewError,
    same_annotation,
)
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import class_id

L1, L2, L3 = class_id("L1"), class_id("L2"), class_id("L3")
SHAPE = (120, 60)


def box_mask(r0: int, r1: int, c0: int = 15, c1: int = 45) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[r0:r1, c0:c1] = True
    return m


def hand(cid: int, r0: float, r1: float) -> VertebraAnnotation:
    """A hand-drawn quadrilateral (not the outline of any predicted mask)."""
    poly = np.array([[r0, 12.0], [r0 + 1, 47.0], [r1, 46.0], [r1 - 1, 13.0]])
    return VertebraAnnotation(cid, [poly])


@pytest.fixture
def predicted():
    """Three predicted vertebrae L1, L2, L3 (scores .9 .8 .7) as (masks, classes, scores)."""
    masks = np.stack([box_mask(10, 30), box_mask(40, 60), box_mask(70, 90)])
    return masks, [L1, L2, L3], [0.9, 0.8, 0.7]


def coords(annotations, cid):
    return [a.polygons for a in annotations if a.class_id == cid]


def test_accept_over_a_hand_polygon_needs_an_answer_and_reject_restores_it(predicted):
    h1 = hand(L1, 9.3, 31.7)
    before = [h1, hand(L2, 41.2, 58.4)]
    rc = ReviewController.from_prediction(*predicted, before=before)
    assert rc.states == ["pending"] * 3
    assert [a.class_id for a in rc.conflicts(0, before)] == [L1]
    with pytest.raises(ReviewError, match="L1 already has a polygon"):
        rc.accept(0, before)
    assert rc.states[0] == "pending"  # refused: nothing changed

    after = rc.accept(0, before, on_conflict="replace")
    (model,) = [a for a in after if a.class_id == L1]
    assert model.source == "model" and model.score == pytest.approx(0.9)
    assert not any(same_annotation(a, h1) for a in after)
    assert rc.states[0] == "accepted"
    assert rc.missing(after) == []

    restored = rc.reject(0, after)
    assert rc.states[0] == "rejected"
    (back,) = coords(restored, L1)
    np.testing.assert_array_equal(back[0], h1.polygons[0])  # exactly the hand polygon
    assert len(restored) == len(before) and rc.missing(restored) == []


def test_keep_both_marks_the_prediction_and_reject_removes_only_it(predicted):
    h1 = hand(L1, 9.3, 31.7)
    rc = ReviewController.from_prediction(*predicted, before=[h1])
    both = rc.accept(0, [h1], on_conflict="keep")
    assert sorted(a.source for a in both) == ["hand", "model"]
    assert [a.score for a in both if a.source == "model"] == [pytest.approx(0.9)]
    left = rc.reject(0, both)
    assert len(left) == 1 and same_annotation(left[0], h1)


def test_a_second_row_of_the_same_class_takes_over_and_reject_gives_the_hand_back(predicted):
    masks, _, scores = predicted
    h1 = hand(L1, 9.3, 31.7)
    rc = ReviewController.from_prediction(masks, [L1, L1, L3], scores, before=[h1])
    a = rc.accept(0, [h1], on_conflict="replace")
    # row 1 is also L1: the hand polygon row 0 replaced is what it meets
    assert [x.class_id for x in rc.conflicts(1, a)] == [L1]
    assert same_annotation(rc.conflicts(1, a)[0], h1)
    b = rc.accept(1, a, on_conflict="replace")
    assert rc.states[:2] == ["rejected", "accepted"]
    assert len(coords(b, L1)) == 1
    c = rc.reject(1, b)
    assert len(c) == 1 and same_annotation(c[0], h1)


def test_fix_then_edit_then_reject_finds_the_edited_polygon(predicted):
    rc = ReviewController.from_prediction(*predicted, before=[hand(L3, 70, 90)])
    anns = rc.fix(1, rc.before, class_id=L2)
    assert rc.states[1] == "fixed"
    edited = [
        VertebraAnnotation(a.class_id, [a.polygons[0] + 0.7]) if a.class_id == L2 else a
        for a in anns
    ]  # the annotator dragged the polygon (source / score lost by the Shapes layer)
    out = rc.reject(1, edited)
    assert [a.class_id for a in out] == [L3]


def test_accept_all_plans_conflicts_and_skip_or_refuse_keeps_hand_polygons(predicted):
    masks, _, scores = predicted
    masks = np.concatenate([masks, masks[:1]])
    before = [hand(L1, 9.3, 31.7), hand(L3, 69.5, 91.0)]
    rc = ReviewController.from_prediction(masks, [L1, L2, L3, L1], [*scores, 0.5], before)
    plan = rc.plan_accept_all(before)
    assert plan.rows == (0, 1, 2) and plan.left == (3,)  # the weaker L1 stays pending
    assert sorted(plan.conflicts) == [0, 2] and plan.conflict_names() == ["L1", "L3"]

    with pytest.raises(ReviewError, match="2 vertebra"):
        rc.accept_all(before)
    assert rc.states == ["pending"] * 4

    kept, done = rc.accept_all(before, on_conflict="skip")
    assert done == [1]
    assert all(any(same_annotation(a, b) for a in kept) for b in before)

    rc2 = ReviewController.from_prediction(masks, [L1, L2, L3, L1], [*scores, 0.5], before)
    replaced, done = rc2.accept_all(before, on_conflict="replace")
    assert done == [0, 1, 2] and all(a.source == "model" for a in replaced)
    back = rc2.reject(2, rc2.reject(0, replaced))
    assert all(any(same_annotation(a, b) for a in back) for b in before)


def test_missing_names_a_vertebra_that_lost_its_polygon(predicted):
    before = [hand(L1, 9.3, 31.7), hand(L2, 41.2, 58.4)]
    rc = ReviewController.from_prediction(*predicted, before=before)
    assert rc.missing(before[1:]) == ["L1"]


def test_empty_mask_and_bad_rows_are_refused(predicted):
    masks, classes, scores = predicted
    masks = masks.copy()
    masks[2] = False
    rc = ReviewController.from_prediction(masks, classes, scores)
    with pytest.raises(ReviewError, match="L3: the predicted mask is empty"):
        rc.accept(2, [])
    with pytest.raises(ReviewError, match="row 7"):
        rc.reject(7, [])
    assert rc.next_pending(0) == 1 and rc.next_pending(2) == 0


def test_controller_imports_no_gui_or_torch():
    code = (
        "import sys, napari_vertebra.annotation.review\n"
        "bad = [m for m in ('torch', 'napari', 'PyQt6', 'PyQt5', 'qtpy', 'PySide6', "
        "'magicgui', 'torchvision') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
