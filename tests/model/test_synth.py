"""Synthetic spine MIPs (pure numpy) and the ``synth`` command."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.coco import read_coco
from napari_vertebra.annotation.polygons import polygon_centroid
from napari_vertebra.cli import main as cli_main
from napari_vertebra.synth import clip_polygon_rows, fill_polygon, synth_spine


def test_full_column_has_t1_to_l5_in_order():
    rng = np.random.default_rng(0)
    image, anns = synth_spine(rng, (256, 128))
    assert image.shape == (256, 128) and image.dtype == np.float32
    assert [a.class_id for a in anns] == list(range(1, 18))
    rows = [polygon_centroid(a.polygons[0])[0] for a in anns]
    assert np.all(np.diff(rows) > 0)  # T1 at the top, L5 at the bottom
    # windowed HU: 0 outside 100..1500
    assert image.min() == 0 and image.max() <= 1500
    assert np.all((image == 0) | (image >= 100))
    # bodies are bright, and the lower (lumbar) bodies are bigger than the upper ones
    areas = [fill_polygon(a.polygons[0], image.shape).sum() for a in anns]
    assert areas[-1] > 1.5 * areas[0]
    body = fill_polygon(anns[8].polygons[0], image.shape)
    assert image[body].mean() > 3 * image[~body].mean()


def test_partial_views_drop_cut_vertebrae():
    rng = np.random.default_rng(3)
    for _ in range(5):
        image, anns = synth_spine(rng, (256, 128), partial=True)
        assert image.shape[0] <= 256
        ids = [a.class_id for a in anns]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        for a in anns:
            assert a.polygons[0][:, 0].min() >= -1e-6
            assert a.polygons[0][:, 0].max() <= image.shape[0] - 1 + 1e-6


def test_clip_polygon_rows():
    sq = np.array([[0.0, 0], [0, 10], [10, 10], [10, 0]])
    c = clip_polygon_rows(sq, 2, 5)
    assert c[:, 0].min() == 2 and c[:, 0].max() == 5


def test_too_small_size():
    with pytest.raises(ValueError, match="too small"):
        synth_spine(np.random.default_rng(0), (32, 16))


def test_synth_command_writes_coco_splits(tmp_path):
    assert cli_main(["synth", "-o", str(tmp_path), "--n", "6", "--size", "128", "64"]) == 0
    total = 0
    for split in ("train", "val", "test"):
        images = read_coco(tmp_path / split / "annotations.json", load_images=True)
        assert images and all(im.scan for im in images)
        assert images[0].image.shape == (128, 64)
        total += len(images)
    assert total == 6
