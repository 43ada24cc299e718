"""Pure-numpy parts of the model area: anatomical ordering, Dice, identification."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.polygons import dice
from napari_vertebra.model.anatomy import (
    box_suppression,
    mask_overlap_suppression,
    order_classes,
)
from napari_vertebra.model.metrics import (
    centroids,
    dice_per_vertebra,
    identification,
    identify,
    one_per_label,
)


def probs_for(classes: list[int], conf: float = 0.8) -> np.ndarray:
    """(N, 17) probabilities peaked at the given class ids (1..17)."""
    p = np.full((len(classes), 17), (1 - conf) / 16)
    for i, c in enumerate(classes):
        p[i, c - 1] = conf
    return p


def test_order_keeps_consistent_sequence():
    cls = [3, 4, 5, 6]
    rows = np.array([10.0, 20, 30, 40])
    assert order_classes(probs_for(cls), rows).tolist() == cls


def test_order_fixes_repeat_using_second_choice():
    # instances 2 and 3 (top to bottom) both say T5; the lower one's second choice is T6
    p = probs_for([4, 5, 5, 7])
    p[2, 5] = 0.15  # T6 is its runner-up
    rows = np.array([10.0, 20, 30, 40])
    out = order_classes(p, rows)
    assert out.tolist() == [4, 5, 6, 7]
    assert len(set(out.tolist())) == 4


def test_order_fixes_inversion():
    p = probs_for([10, 12, 11, 13])  # middle two swapped, each other's runner-up
    p[1, 10] = 0.15
    p[2, 11] = 0.15
    rows = np.array([0.0, 10, 20, 30])
    out = order_classes(p, rows)
    assert out.tolist() == [10, 11, 12, 13]


def test_order_allows_gaps_and_uses_rows_not_input_order():
    # a missing vertebra (T8) stays a gap; input given bottom-up
    cls = [9, 7, 6]
    rows = np.array([30.0, 20, 10])
    out = order_classes(probs_for(cls, 0.9), rows)
    assert out.tolist() == [9, 7, 6]


def test_order_lumbar_run_shifted_when_too_many():
    # 6 instances all sure they are lumbar: at most L1..L5 exist, so the top one becomes T12
    p = probs_for([13, 14, 15, 16, 17, 17])
    p[0, 11] = 0.1
    out = order_classes(p, np.arange(6) * 10.0)
    assert np.all(np.diff(out) == 1)
    assert out[-1] == 17 and out[0] == 12


def test_order_edge_cases():
    assert order_classes(np.zeros((0, 17)), np.zeros(0)).size == 0
    with pytest.raises(ValueError, match="17"):
        order_classes(np.ones((18, 17)), np.arange(18))
    with pytest.raises(ValueError, match="shape"):
        order_classes(np.ones((3, 5)), np.arange(3))


def test_overlap_suppression_keeps_best_of_duplicates():
    m = np.zeros((3, 20, 20), bool)
    m[0, 2:10, 2:10] = True
    m[1, 3:10, 2:10] = True  # duplicate of 0
    m[2, 12:18, 2:10] = True
    keep = mask_overlap_suppression(m, np.array([0.8, 0.9, 0.7]))
    assert sorted(keep.tolist()) == [1, 2]


def test_box_suppression_drops_copies_keeps_neighbours():
    boxes = np.array(
        [
            [10, 10, 30, 20],  # vertebra A
            [11, 10, 30, 21],  # copy of A (another class): IoU ~0.86
            [10, 24, 30, 34],  # neighbour below A: no overlap
            [10, 18, 30, 28],  # straddles A (IoU 0.11) and the neighbour (IoU 0.25)
            [0, 0, 0, 0],  # empty box: IoU 0 with everything
        ],
        float,
    )
    assert box_suppression(boxes, 0.5).tolist() == [0, 2, 3, 4]
    assert box_suppression(boxes, 0.2).tolist() == [0, 2, 4]
    assert box_suppression(boxes, None).tolist() == [0, 1, 2, 3, 4]
    # greedy in the given order: the copy first keeps the copy
    assert box_suppression(boxes[[1, 0, 2]], 0.5).tolist() == [0, 2]
    assert box_suppression(np.zeros((0, 4)), 0.5).size == 0


def test_dice_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :4] = True
    b[:, 2:6] = True
    assert dice(a, b) == pytest.approx(2 * 20 / 80)
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_dice_per_vertebra_missing_class_is_zero():
    gt = np.zeros((2, 10, 10), bool)
    gt[0, :5] = True
    gt[1, 5:] = True
    pred = gt[:1].copy()
    d = dice_per_vertebra(np.array([3, 4]), gt, np.array([3]), pred)
    assert d.tolist() == [1.0, 0.0]


def test_identify_rules():
    """VerSe: the prediction with the true label within 20 mm, and the true vertebra the
    closest one to it."""
    gt_cls = np.array([5, 6, 7])
    gt_c = np.array([[10.0, 10], [30, 10], [60, 10]])
    # T5 right; T6 predicted as T7 (neighbour confusion); the T7 label far away
    pred_cls = np.array([5, 7])
    pred_c = np.array([[12.0, 10], [31, 11]])
    ok, conf = identify(gt_cls, gt_c, pred_cls, pred_c, max_dist=20)
    assert ok.tolist() == [True, False, False]  # T7's prediction is 29 mm away
    assert conf == [(6, 7)]
    # a prediction of another label closer to the vertebra does not steal it
    ok2, _ = identify(np.array([5]), np.array([[10.0, 10]]), np.array([6, 5]),
                      np.array([[11.0, 10], [18, 10]]))  # fmt: skip
    assert ok2.tolist() == [True]


def test_identification_needs_the_closest_true_vertebra():
    # thoracic vertebrae 20 mm apart: a T5 label 12 mm below T5 (within 20 mm) lies
    # closer to T6, so T5 is not identified
    gt_cls = np.array([5, 6, 7])
    gt_c = np.array([[100.0, 50], [120, 50], [140, 50]])
    r = identification(
        gt_cls, gt_c, np.array([5, 6, 7]), gt_c + np.array([[12, 0], [0, 0], [0, 0]])
    )
    assert r.identified.tolist() == [False, True, True]
    assert r.distance_mm[0] == pytest.approx(12.0)
    assert r.localisation_mm.tolist() == [0.0, 0.0]
    # 9 mm below: still closest to T5
    r = identification(gt_cls, gt_c, np.array([5]), np.array([[109.0, 50]]))
    assert r.identified.tolist() == [True, False, False] and r.rate == pytest.approx(1 / 3)


def test_identification_spacing_and_one_prediction_per_label():
    gt_cls, gt_c = np.array([13]), np.array([[50.0, 50]])
    # 12 px away: identified at 1 mm/px, not at 2 mm/px (24 mm)
    pred = np.array([[62.0, 50]])
    assert identification(gt_cls, gt_c, [13], pred).identified.tolist() == [True]
    assert identification(gt_cls, gt_c, [13], pred, spacing=(2, 2)).identified.tolist() == [False]
    assert identification(gt_cls, gt_c, [13], pred, spacing=(0.5, 2.0)).distance_mm[
        0
    ] == pytest.approx(6.0)
    # two L1 labels: the higher-scored stands for L1, wherever it is
    two = np.array([[50.0, 50], [95, 50]])
    r = identification(gt_cls, gt_c, [13, 13], two, pred_scores=[0.5, 0.9])
    assert r.identified.tolist() == [False]
    r = identification(gt_cls, gt_c, [13, 13], two, pred_scores=[0.9, 0.5])
    assert r.identified.tolist() == [True]
    assert one_per_label(np.array([3, 4, 3, 4]), np.array([0.1, 0.9, 0.8, 0.9])).tolist() == [
        1,
        2,
    ]
    # no predictions, an empty predicted mask (NaN centroid)
    assert identification(gt_cls, gt_c, [], np.zeros((0, 2))).identified.tolist() == [False]
    nan = np.array([[np.nan, np.nan]])
    assert identification(gt_cls, gt_c, [13], nan).identified.tolist() == [False]


def test_centroids():
    m = np.zeros((1, 5, 5), bool)
    m[0, 1:4, 2] = True
    assert centroids(m)[0].tolist() == [2.0, 2.0]


def test_cli_and_model_package_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, napari_vertebra.model, napari_vertebra.model.anatomy, "
        "napari_vertebra.synth\n"
        "from napari_vertebra.cli import build_parser\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
