"""One-click outlines from a model: the detection under the click (issue 12, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_vertebra.annotation.polygons import rasterize
from napari_vertebra.model.config import load_config
from napari_vertebra.model.outline import (
    ModelOutliner,
    candidates,
    detection_under,
    model_outline_at,
)


@pytest.fixture(scope="module")
def tiny_predictor(tiny_overrides):
    """A random-weight tiny model (its detections are arbitrary), keeping every score."""
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.predict import Predictor

    torch.manual_seed(0)
    cfg = load_config(None, tiny_overrides)
    return Predictor(build_model(cfg, load_weights=False), config=cfg, min_score=0.0)


def _image(seed: int = 1) -> np.ndarray:
    from napari_vertebra.synth import synth_spine

    image, _ = synth_spine(np.random.default_rng(seed), (96, 48))
    return image


def test_random_model_gives_none_or_a_polygon_holding_the_click(tiny_predictor):
    image = _image()
    outliner = ModelOutliner(tiny_predictor)
    for point in [(r, c) for r in range(4, 96, 8) for c in range(4, 48, 8)]:
        found = outliner.outline_at(image, point)
        if found is None:
            continue
        assert found.polygon.ndim == 2 and found.polygon.shape[1] == 2
        assert found.mask[point]
        assert rasterize(found.polygon, image.shape)[point]
        assert 0.0 <= found.score <= 1.0
        assert 1 <= found.class_id <= 17


def _det(h: int, w: int, raw: bool) -> dict[str, torch.Tensor]:
    """Three detections whose masks overlap at (30, 20): scores 0.2 (class 3) and 0.7
    (class 9) under the click, 0.95 (class 12) elsewhere. ``raw``: in raw_detections'
    form (masks of the ``keep`` detections, by decreasing score), else full_detections'
    (a mask per detection)."""
    full = torch.zeros((3, 1, h, w))
    full[0, 0, 25:35, 15:25] = 0.8  # score 0.2, under the click
    full[1, 0, 20:45, 10:30] = 0.9  # score 0.7, under the click
    full[2, 0, 40:60, 5:40] = 1.0  # score 0.95, not under the click
    det = {
        "boxes": torch.zeros((3, 4)),
        "labels": torch.tensor([3, 9, 12]),
        "scores": torch.tensor([0.2, 0.7, 0.95]),
        "class_probs": torch.zeros((3, 18)),
        "masks": full,
    }
    if raw:
        det["keep"] = torch.tensor([2, 1, 0])
        det["masks"] = full[[2, 1, 0]]
    return det


@pytest.mark.parametrize("raw", [False, True])
def test_picks_the_highest_scoring_mask_under_the_click(raw):
    cand = candidates(_det(96, 48, raw))
    i = detection_under(cand, (30, 20))
    assert (cand["labels"][i], cand["scores"][i]) == (9, pytest.approx(0.7))
    assert cand["masks"][i][30, 20] and not cand["masks"][i][50, 20]
    assert detection_under(cand, (80, 45)) is None  # under no mask
    assert detection_under(cand, (500, 5)) is None  # outside the image


def test_model_outline_uses_every_detection_with_its_polygon(tiny_predictor, monkeypatch):
    import napari_vertebra.model.detect as detect_module

    h, w = 96, 48
    calls = []

    def fake_full(model, images):
        calls.append(tuple(images[0].shape))
        return [_det(h, w, raw=False)]

    monkeypatch.setattr(detect_module, "full_detections", fake_full)
    outliner = ModelOutliner(tiny_predictor)
    image = np.zeros((h, w), np.float32)
    found = outliner.outline_at(image, (30, 20))
    assert (found.class_id, found.score) == (9, pytest.approx(0.7))
    got = rasterize(found.polygon, (h, w))
    assert got[30, 20] and got[21:44, 11:29].all() and not got[50, 35]
    other = outliner.outline_at(image, (50, 35))
    assert (other.class_id, other.score) == (12, pytest.approx(0.95))
    assert outliner.outline_at(image, (80, 45)) is None
    assert len(calls) == 1  # one forward pass for the three clicks on one image
    model_outline_at(tiny_predictor, image + 1.0, (30, 20))
    assert len(calls) == 2


def test_the_ordered_class_of_the_matching_instance(tiny_predictor, monkeypatch):
    """Predict's anatomically ordered class of the same vertebra comes with the outline."""
    from types import SimpleNamespace

    import napari_vertebra.model.detect as detect_module

    h, w = 96, 48
    det = _det(h, w, raw=False)
    monkeypatch.setattr(detect_module, "full_detections", lambda model, images: [det])
    ordered = np.zeros((2, h, w), bool)
    ordered[0, 20:45, 10:30] = True  # the clicked detection's vertebra, ordered as 10
    ordered[1, 40:60, 5:40] = True  # the other one, ordered as 13
    seen = []

    def finish(d, shape, min_score=None, spacing=None):
        seen.append((d is det, tuple(shape), min_score))
        return SimpleNamespace(masks=ordered, classes=np.array([10, 13]))

    monkeypatch.setattr(tiny_predictor, "finish", finish, raising=False)
    found = model_outline_at(tiny_predictor, np.zeros((h, w), np.float32), (30, 20))
    assert seen == [(True, (h, w), 0.0)]  # every detection, whatever its score
    assert (found.class_id, found.ordered_class_id) == (9, 10)
    small = model_outline_at(tiny_predictor, np.zeros((h, w), np.float32), (26, 16))
    assert small.ordered_class_id == 10  # the 0.7 mask still wins under this click
    ordered[0] = False  # no ordered instance overlaps it: no ordered class
    assert (
        model_outline_at(tiny_predictor, np.zeros((h, w), np.float32), (30, 20)).ordered_class_id
        is None
    )
