"""Fixed physical scale (config ``pixels_per_mm``): one pixel size for every field of view,
crops in training and tiles in prediction instead of squeezing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_vertebra.model.config import load_config
from napari_vertebra.model.scale import FixedScaleTransform, fit_rows, row_tiles


def _target(rows: tuple[int, int], shape: tuple[int, int]) -> dict:
    """One box/mask covering ``rows`` (a 'vertebra' 30 px tall) in an image of ``shape``."""
    m = torch.zeros((1, *shape), dtype=torch.uint8)
    m[0, rows[0] : rows[1], 40:80] = 1
    box = torch.tensor([[40.0, rows[0], 80.0, rows[1]]])
    return {"boxes": box, "masks": m, "labels": torch.tensor([1])}


def _box_height(transform, shape, rows) -> float:
    transform.train()
    image = torch.rand(3, *shape)
    _, targets = transform([image], [_target(rows, shape)])
    b = targets[0]["boxes"][0]
    return float(b[3] - b[1])


def test_a_vertebra_keeps_its_pixel_height_in_a_full_mip_and_a_partial_view(tiny_overrides):
    tiny = tiny_overrides
    from napari_vertebra.model.build import build_model

    fixed = build_model(load_config(None, {**tiny, "pixels_per_mm": 1.5, "max_size": 1024}))
    assert isinstance(fixed.transform, FixedScaleTransform)
    full = _box_height(fixed.transform, (600, 140), (300, 330))
    part = _box_height(fixed.transform, (240, 140), (100, 130))
    assert full == pytest.approx(45.0, abs=1.0) and part == pytest.approx(full, abs=0.5)
    assert fixed.transform.squeezed == 0

    # torchvision's resizing (pixels_per_mm null): the same vertebra changes size with the
    # field of view; this is what the fixed scale removes
    resized = build_model(load_config(None, {**tiny, "min_size": 256, "max_size": 512}))
    assert not isinstance(resized.transform, FixedScaleTransform)
    r_full = _box_height(resized.transform, (600, 140), (300, 330))
    r_part = _box_height(resized.transform, (240, 140), (100, 130))
    assert abs(r_part - r_full) > 5


def test_an_image_too_large_for_the_fixed_scale_is_counted_when_fed_directly():
    t = FixedScaleTransform(2.0, 256, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert t.scale_for(100, 60) == 2.0
    assert t.scale_for(300, 60) == pytest.approx(256 / 300)
    t.eval()
    t([torch.rand(3, 300, 60)])
    assert t.squeezed == 1


def test_row_tiles_cover_the_image_with_the_overlap():
    assert row_tiles(500, 600, 128) == [(0, 500)]
    tiles = row_tiles(1500, 600, 128)
    assert tiles[0][0] == 0 and tiles[-1][1] == 1500
    assert all(b - a == 600 for a, b in tiles)
    for (_, a1), (b0, _) in itertools.pairwise(tiles):
        assert a1 - b0 >= 128  # every 128-row window lies whole in some tile


def test_fit_rows_crops_tall_images_and_refuses_too_wide_ones():
    rng = np.random.default_rng(0)
    assert fit_rows(300, 140, 400, rng) is None
    r0, r1 = fit_rows(900, 140, 400, rng)
    assert r1 - r0 == 400 and 0 <= r0 and r1 <= 900
    with pytest.raises(ValueError, match="pixels_per_mm"):
        fit_rows(300, 500, 400, rng)


def test_training_crops_a_tall_mip_instead_of_squeezing_it(tmp_path, tiny_overrides):
    tiny = tiny_overrides
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.model.data import VertebraDataset
    from napari_vertebra.synth import synth_column

    col = synth_column(np.random.default_rng(3), name="tall")
    write_coco([col], tmp_path)
    cfg = load_config(
        None, {**tiny, "pixels_per_mm": 1.0, "max_size": 320, "aug_partial_prob": 0.0}
    )
    ds = VertebraDataset(tmp_path, cfg, train=True)
    assert col.height > 320
    for epoch in range(3):
        image, target = ds[(0, epoch)]
        assert image.shape[-2] == 320 == ds.output_shape(0, epoch)[0]
        assert len(target["labels"]) >= 4  # vertebrae wholly in the window are kept
    val = VertebraDataset(tmp_path, cfg, train=False)
    assert val[0][0].shape[-2] == col.height  # validation sees the whole MIP (tiled)


def _raw(boxes, scores, masks, n_cls=17) -> dict:
    """A raw_detections-like dict: every detection kept, masks at the tile's size."""
    n = len(boxes)
    probs = torch.full((n, n_cls + 1), 0.01)
    probs[:, 1] = 0.9
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(n, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "class_probs": probs,
        "masks": torch.stack(masks) if masks else torch.zeros((0, 1, 1, 1)),
        "keep": torch.arange(n),
        "mask_min_score": torch.tensor(0.0, dtype=torch.float64),
        "box_iou": torch.tensor(0.5, dtype=torch.float64),
        "mask_rois": torch.tensor(n),
    }


def _mask(shape, r0, r1) -> torch.Tensor:
    m = torch.zeros((1, *shape))
    m[0, r0:r1, 10:30] = 1.0
    return m


def test_merge_tiles_keeps_each_vertebra_once_and_whole():
    from napari_vertebra.model.scale import merge_tiles

    h, w = 500, 40
    # tile A rows 0..300, tile B rows 200..500 (overlap 100)
    a = _raw(
        [[10, 50, 30, 80], [10, 220, 30, 250], [10, 285, 30, 300]],
        [0.9, 0.8, 0.95],
        [_mask((300, w), 50, 80), _mask((300, w), 220, 250), _mask((300, w), 285, 300)],
    )  # the third is cut by A's lower edge
    b = _raw(
        [[10, 20, 30, 50], [10, 85, 30, 120]],
        [0.7, 0.85],
        [_mask((300, w), 20, 50), _mask((300, w), 85, 120)],
    )  # B's rows 20..50 = image 220..250 (the same vertebra as A's second); 85..120 = 285..320
    merged = merge_tiles([(0, 300, a), (200, 500, b)], (h, w), 0.0, 0.5, 17)
    keep = merged["keep"].numpy()
    rows = sorted(
        (float(merged["boxes"][i, 1]), float(merged["boxes"][i, 3]), float(merged["scores"][i]))
        for i in keep
    )
    assert rows == [
        (50, 80, pytest.approx(0.9)),
        (220, 250, pytest.approx(0.8)),
        (285, 320, pytest.approx(0.85)),
    ]
    assert merged["masks"].shape == (3, 1, h, w)
    for k, i in enumerate(keep):  # each mask lies where its box says, in image rows
        r = np.nonzero(merged["masks"][k, 0].numpy().any(1))[0]
        assert (r[0], r[-1] + 1) == (int(merged["boxes"][i, 1]), int(merged["boxes"][i, 3]))


def test_predictor_tiles_a_mip_taller_than_the_model_sees(monkeypatch, tiny_overrides):
    tiny = tiny_overrides
    from napari_vertebra.model import predict as P
    from napari_vertebra.model.build import build_model

    cfg = load_config(None, {**tiny, "pixels_per_mm": 1.0, "max_size": 256})
    pred = P.Predictor(build_model(cfg), config=cfg, min_score=0.0)
    assert pred.tile_rows == 256
    seen = []
    real = P.raw_detections

    def spy(model, images, *a, **k):
        seen.extend(tuple(t.shape[-2:]) for t in images)
        return real(model, images, *a, **k)

    monkeypatch.setattr(P, "raw_detections", spy)
    mip = np.random.default_rng(0).uniform(0, 1500, (700, 80)).astype(np.float32)
    out = pred.predict(mip)
    assert seen and all(h <= 256 for h, _ in seen) and len(seen) >= 3
    assert out.shape == (700, 80) and out.masks.shape[1:] == (700, 80)
    assert pred.model.transform.squeezed == 0


def test_validation_and_evaluate_take_mips_taller_than_the_model_sees(tiny_overrides):
    """A MIP taller than the model's rows is tiled in validation and ``evaluate`` too:
    the first tall image used to end training's validation with an UnboundLocalError
    (paper.yaml sees 602 mm at once; a tall patient's C7..sacrum MIP is longer)."""
    from napari_vertebra.model.build import build_model
    from napari_vertebra.model.evaluate import named_results

    cfg = load_config(None, {**tiny_overrides, "pixels_per_mm": 1.0, "max_size": 256})
    rng = np.random.default_rng(0)
    tall, short = (rng.uniform(0, 1500, (h, 80)).astype(np.float32) for h in (600, 200))
    raw, kept = named_results(build_model(cfg), [tall, short, tall], cfg, 0.0, ids=[7, 8, 9])
    assert {r["image_id"] for r in raw} <= {7, 8, 9}
    assert all(r["image_id"] in (7, 8, 9) for r in kept)
