"""Confidence with the paper's meaning: ``min_score`` applies to the class probability.

An untrained classifier spreads its probability over 18 classes (about 1/18 each), so
1 - p(background) is about 17/18 = 0.94 for any box: that number must never let a
detection through. The class probability of an untrained model is far below 0.9.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vertebra.model.predict import Predictor, postprocess


def _det(class_probs: list[list[float]], labels: list[int], boxes: list[list[float]], masks):
    """Detections as :func:`full_detections` returns them (masks of every detection);
    ``scores``: the probability of each detection's class, as torchvision computes it."""
    probs = torch.tensor(class_probs, dtype=torch.float32)
    lab = torch.tensor(labels)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": lab,
        "scores": probs[torch.arange(len(lab)), lab],
        "class_probs": probs,
        "masks": torch.from_numpy(np.stack(masks)[:, None].astype(np.float32)),
    }


def _probs(bg: float, **classes: float) -> list[float]:
    """A row of 18 probabilities: background, then T1..L5 (by 1-based index)."""
    p = np.zeros(18)
    p[0] = bg
    for k, v in classes.items():
        p[int(k[1:])] = v
    rest = 1 - p.sum()
    p[p == 0] = rest / max(1, (p == 0).sum())
    return p.tolist()


def test_threshold_is_on_the_class_probability():
    shape = (80, 40)
    m = np.zeros((3, *shape), bool)
    m[0, 5:20, 10:30] = True
    m[1, 30:45, 10:30] = True
    m[2, 50:65, 10:30] = True
    boxes = [[10, 5, 30, 20], [10, 30, 30, 45], [10, 50, 30, 65]]
    probs = [
        _probs(0.02, c5=0.95),  # confident T5
        _probs(0.02, c6=0.49, c7=0.48),  # surely a vertebra, T6 or T7: not confident
        _probs(0.05, c8=0.06),  # an untrained-like row: 1 - p(bg) = 0.95
    ]
    det = _det(probs, [5, 6, 8], boxes, list(m))
    pred = postprocess(det, shape, 0.9)
    assert pred.raw_classes.tolist() == [5]
    assert pred.scores == pytest.approx([0.95])
    assert pred.vertebra_scores == pytest.approx([0.98])
    # below the class probability of the second, above the third's
    low = postprocess(det, shape, 0.4)
    assert low.raw_classes.tolist() == [5, 6]
    assert low.scores == pytest.approx([0.95, 0.49])
    assert np.all(low.vertebra_scores >= low.scores)
    assert len(postprocess(det, shape, 0.0)) == 3


def test_copies_of_one_vertebra_keep_the_most_probable_class():
    """Mask R-CNN boxes a proposal once per class; the duplicate suppression keeps the
    copy of the most probable class (its box and mask), whatever their order."""
    shape = (60, 40)
    m = np.zeros((2, *shape), bool)
    m[:, 10:30, 5:35] = True
    row = _probs(0.05, c10=0.6, c11=0.3)
    for order in ([11, 10], [10, 11]):
        det = _det([row, row], order, [[5, 10, 35, 30], [5, 10, 35, 30]], list(m))
        pred = postprocess(det, shape, 0.0)
        assert pred.raw_classes.tolist() == [10] and pred.scores == pytest.approx([0.6])


@pytest.mark.slow
def test_untrained_model_predicts_nothing(tiny_data, tmp_path):
    """A checkpoint trained for 1 step at lr 0 (random heads) predicts no vertebra at the
    default threshold on a blank, a noise and a synthetic spine MIP."""
    from napari_vertebra.cli import main as cli_main
    from napari_vertebra.synth import synth_spine

    run = tmp_path / "run"
    small = ["min_size=128", "max_size=256", "fpn_channels=16", "box_head_dim=32",
             "mask_head_layers=[16]"]  # fmt: skip
    assert cli_main(["train", "--config", "smoke", "--data", str(tiny_data), "-o", str(run),
                     "--epochs", "1", "--device", "cpu", "lr=0", "warmup_iters=0",
                     "max_steps_per_epoch=1", "batch_size=1", "val_max_images=1",
                     *small]) == 0  # fmt: skip
    rng = np.random.default_rng(0)
    images = {
        "blank": np.zeros((256, 128), np.float32),
        "noise": rng.uniform(0, 1500, (256, 128)).astype(np.float32),
        "spine": synth_spine(rng, (256, 128))[0],
    }
    default = Predictor(run / "last.pt")  # the config's min_score (smoke: 0.5)
    paper = Predictor(run / "last.pt", min_score=0.9)
    assert paper.min_score == 0.9
    for name, im in images.items():
        assert len(default.predict(im)) == 0, name
        assert len(paper.predict(im)) == 0, name
        # not vacuous: the detector boxes many "vertebrae" that 1 - p(bg) would pass
        everything = paper.predict(im, min_score=0.0)
        assert len(everything) >= 5, name
        assert np.median(everything.vertebra_scores) > 0.9, name
        assert everything.scores.max() < 0.5, name
