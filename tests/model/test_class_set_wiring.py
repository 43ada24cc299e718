"""The class set chosen in the config reaches every step: files, dataset, model, prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_vertebra.core.labels import EXTENDED, PAPER, class_id
from napari_vertebra.model.config import load_config


def _column(class_set, seed=11, **kw):
    from napari_vertebra.synth import synth_column

    return synth_column(np.random.default_rng(seed), class_set, name=f"c{seed}", **kw)


def _stacked(names, h, w, peak, rest, pitch, height) -> dict:
    """Detections of an extended model: one box per name, stacked ``pitch`` px apart,
    whose class probabilities peak (``peak``, else ``rest``) at that name (constructed)."""
    n = len(names)
    probs = torch.full((n, 22), rest)
    masks = torch.zeros((n, 1, h, w))
    for k, name in enumerate(names):
        probs[k, class_id(name)] = peak
        masks[k, 0, 10 + pitch * k : 10 + pitch * k + height, 10:30] = 1.0
    boxes = [[10, 10 + pitch * k, 30, 10 + pitch * k + height] for k in range(n)]
    return {
        "boxes": torch.tensor(boxes).float(),
        "labels": torch.tensor([class_id(x) for x in names]),
        "scores": torch.full((n,), peak),
        "class_probs": probs / probs.sum(1, keepdim=True),
        "masks": masks,
    }


@pytest.mark.parametrize("cs", [PAPER, EXTENDED], ids=lambda c: c.name)
def test_class_sets_round_trip_through_coco_and_via(tmp_path, cs):
    from napari_vertebra.annotation.coco import read_coco, write_coco
    from napari_vertebra.annotation.via import read_via, write_via

    col = _column(cs, thoracic=13, lumbar=6)
    ids = [a.class_id for a in col.annotations]
    if cs is EXTENDED:
        assert {class_id(n) for n in ("C7", "T13", "L6", "S1")} <= set(ids)
    else:
        assert set(ids) <= set(PAPER.ids)
    path = write_coco([col], tmp_path / "coco")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [c["name"] for c in data["categories"]] == [c["name"] for c in cs.coco_categories()]
    back = read_coco(path)[0]
    assert [a.class_id for a in back.annotations] == ids
    via = write_via([col], tmp_path / "via" / "project.json")
    vdata = json.loads(via.read_text(encoding="utf-8"))
    options = vdata["_via_attributes"]["region"]
    assert list(next(iter(options.values()))["options"]) == list(cs.levels)
    assert sorted(a.class_id for a in read_via(via)[0].annotations) == sorted(ids)


def test_a_paper_model_refuses_extended_labels_with_the_fix_in_the_message(
    tmp_path, tiny_overrides
):
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.model.data import VertebraDataset

    write_coco([_column(EXTENDED, thoracic=13, lumbar=5)], tmp_path)
    with pytest.raises(ValueError, match=r"T13 .*class_set: extended") as e:
        VertebraDataset(tmp_path, load_config(None, tiny_overrides))
    assert "C7" in str(e.value) and "S1" in str(e.value)
    ds = VertebraDataset(tmp_path, load_config(None, {**tiny_overrides, "class_set": "extended"}))
    assert int(ds[0][1]["labels"].max()) == class_id("S1")


def test_extended_model_predicts_with_its_classes_and_names_a_13th_thoracic(tiny_overrides):
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.detect import logits_dim
    from napari_vertebra.model.predict import Predictor, postprocess

    cfg = load_config(None, {**tiny_overrides, "class_set": "extended"})
    model = build_model(cfg)
    assert logits_dim(model) == EXTENDED.num_classes == 22
    pred = Predictor(model, config=cfg, min_score=0.0).predict(
        np.random.default_rng(1).uniform(0, 1500, (96, 48)).astype(np.float32)
    )
    assert pred.class_probs.shape[1] == 21 and pred.levels is not None
    with pytest.raises(ValueError, match="class set"):  # a model/config mismatch is caught
        Predictor(model, config=load_config(None, tiny_overrides))

    # five vertebrae whose class probabilities say T11, T12, T13, L1, L2 (constructed)
    names = ["T11", "T12", "T13", "L1", "L2"]
    h, w = 200, 40
    det = _stacked(names, h, w, peak=0.9, rest=0.002, pitch=35, height=25)
    out = postprocess(det, (h, w), 0.5, class_set="extended")
    assert out.names == names
    assert out.levels.variant == (13, 5) and out.levels.confidence > 0.5
    assert "T11..L2" in out.level_summary
    legacy = postprocess(det, (h, w), 0.5, order=False)
    assert legacy.levels is None and legacy.names == names


def test_the_predictor_divides_out_the_training_share_stored_in_the_checkpoint(
    tiny_overrides,
):
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.predict import Predictor

    # the whole class evidence (weight 1; the default 0.5 halves it)
    cfg = load_config(
        None, {**tiny_overrides, "class_set": "extended", "level_evidence_weight": 1.0}
    )
    predictor = Predictor(build_model(cfg), config=cfg, min_score=0.0)
    assert predictor.class_counts is None and predictor.class_frequencies is None
    # T8..T13, the last one a lone T13 at the bottom edge: its probability 0.6 against
    # about 0.02 for L1 does not beat the 1 % prior of 13 thoracic vertebrae by itself
    names = ["T8", "T9", "T10", "T11", "T12", "T13"]
    h, w = 260, 40
    det = _stacked(names, h, w, peak=0.6, rest=0.02, pitch=40, height=28)
    assert predictor.finish(det, (h, w)).names[-1] == "L1"
    # a training set where T13 and L6 were 20 times rarer than the other levels: the same
    # probability is strong evidence once that share is divided out
    counts = np.full(21, 200)
    counts[[class_id("T13") - 1, class_id("L6") - 1]] = 10
    predictor.class_counts = counts
    out = predictor.finish(det, (h, w))
    assert out.names == names and out.levels.variant == (13, 5)
    predictor.config = predictor.config.replace(level_class_prior=False)
    assert predictor.finish(det, (h, w)).names[-1] == "L1"


def test_a_certain_naming_says_how_this_model_did_on_its_validation(tiny_overrides):
    """A level confidence of 0.99 from a model whose "certain" namings were right on only
    65 % of its validation images must say so where it is shown."""
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.predict import Predictor

    cfg = load_config(None, {**tiny_overrides, "class_set": "extended"})
    predictor = Predictor(build_model(cfg), config=cfg, min_score=0.0)
    names = ["C7", "T1", "T2", "T3", "T4"]  # C7 above: a landmark, a sure naming
    h, w = 240, 40
    det = _stacked(names, h, w, peak=0.9, rest=0.005, pitch=24, height=18)
    plain = predictor.finish(det, (h, w))
    assert plain.names == names and plain.levels.confidence >= 0.9
    assert "validation" not in plain.level_summary  # a bare model: nothing to say
    predictor.validation = {"val_level_certain_share": 0.8, "val_level_certain_id_rate": 0.65}
    out = predictor.finish(det, (h, w))
    assert out.level_summary.startswith(plain.level_summary)
    assert "namings called certain were identified at only 0.65" in out.level_summary
    predictor.validation["val_level_certain_id_rate"] = 0.97
    assert "identified at 0.97)" in predictor.finish(det, (h, w)).level_summary
    # an unsure naming is not "certain": no such note
    flat = _stacked(names, h, w, peak=0.05, rest=0.05, pitch=24, height=18)  # no evidence
    unsure = predictor.finish(flat, (h, w))
    assert unsure.levels.confidence < 0.9 and "validation" not in unsure.level_summary
    # figures measured on a scan left out (the starter model) say so; with no certain
    # naming there, the identification rate is what a certain naming is shown with
    predictor.validation_on = "a scan left out"
    text = predictor.finish(det, (h, w)).level_summary
    assert "(on a scan left out, namings called certain were identified at 0.97)" in text
    predictor.validation = {"val_level_certain_share": 0.0, "val_id_rate": 0.4}
    text = predictor.finish(det, (h, w)).level_summary
    assert "(on a scan left out, no naming was called certain; identification 0.40)" in text
