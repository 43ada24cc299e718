"""Polygons carried onto the MIP of a re-run, keys per MIP grid, the MIP check (issue 19)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_vertebra.annotation.from3d import labels_to_annotations
from napari_vertebra.annotation.mip_check import mip_problems
from napari_vertebra.annotation.polygons import dice, rasterize
from napari_vertebra.annotation.regrid import carry_annotations, map_mip_points, mip_grid
from napari_vertebra.annotation.session import AnnotationSession
from napari_vertebra.core import run_pipeline
from napari_vertebra.core.io import read_ct, read_volume
from napari_vertebra.core.labels import to_class_map
from napari_vertebra.synth import synth_column

CLASS_IDS = {i: i for i in range(1, 22)}


@pytest.fixture(scope="module")
def lumbar(lumbar_ct_path, lumbar_labels_path):
    """The lumbar sample with its labels as class ids, and its first pipeline run."""
    ct = read_ct(lumbar_ct_path)
    ids = read_volume(lumbar_labels_path).array
    labels = ct.with_array(to_class_map(ids, "totalsegmentator"))
    return ct, labels, run_pipeline(ct, labels=labels)


def _scores(carried, fresh, shape):
    ref = {a.name: rasterize(a.polygons, shape) for a in fresh.annotations}
    return {a.name: dice(rasterize(a.polygons, shape), ref[a.name]) for a in carried}


@pytest.mark.parametrize(
    "change",
    [{"crop_margin_anterior_mm": 30.0}, {"crop_margin_posterior_mm": 20.0}, {"spacing_mm": 1.5}],
)
def test_carried_polygons_lie_where_labels_from_3d_puts_them(lumbar, change):
    ct, labels, first = lumbar
    old = labels_to_annotations(ct, labels, CLASS_IDS, result=first)
    params = dataclasses.replace(first.params, **change)
    new = run_pipeline(ct, params, labels=labels, previous=first)
    assert mip_grid(new) != mip_grid(first)
    carried = carry_annotations(old.annotations, first, new)
    fresh = labels_to_annotations(ct, labels, CLASS_IDS, params=params, result=new)
    scores = _scores(carried.annotations, fresh, new.mip.shape)
    assert set(scores) == {a.name for a in fresh.annotations}
    assert min(scores.values()) >= 0.85, scores
    assert carried.dropped == []


def test_points_map_through_millimetres(lumbar):
    ct, labels, first = lumbar
    wide = run_pipeline(ct, dataclasses.replace(first.params, crop_margin_anterior_mm=70.0),
                        labels=labels, previous=first)  # fmt: skip
    dy = first.crop_box[1][0] - wide.crop_box[1][0]
    assert dy > 0
    rc = np.array([[3.0, 4.0], [10.5, 20.25]])
    np.testing.assert_allclose(map_mip_points(rc, first, wide), rc + np.array([0, dy]), atol=1e-9)
    np.testing.assert_allclose(map_mip_points(rc + np.array([0, dy]), wide, first), rc, atol=1e-9)
    # the same grid: nothing moves, and an x margin leaves the grid alone
    lr = run_pipeline(ct, dataclasses.replace(first.params, crop_margin_lr_mm=20.0),
                      labels=labels, previous=first)  # fmt: skip
    assert mip_grid(lr) == mip_grid(first)


def test_a_polygon_the_new_crop_leaves_out_is_dropped_and_named(lumbar):
    ct, labels, first = lumbar
    old = labels_to_annotations(ct, labels, CLASS_IDS, result=first)
    narrow = run_pipeline(ct, dataclasses.replace(first.params, crop_margin_anterior_mm=0.0,
                                                  crop_margin_posterior_mm=0.0),
                          labels=labels, previous=first)  # fmt: skip
    far = dataclasses.replace(
        old.annotations[0], polygons=[np.array([[1.0, 0.0], [1.0, 3.0], [4.0, 0.0]])]
    )
    carried = carry_annotations([far, *old.annotations[1:]], first, narrow)
    h, w = narrow.mip.shape
    for a in carried.annotations:
        for p in a.polygons:
            assert p[:, 0].min() >= 0 and p[:, 0].max() <= h - 1
            assert p[:, 1].min() >= 0 and p[:, 1].max() <= w - 1
    assert carried.dropped == [old.annotations[0].name]


def test_keys_never_name_two_grids(tmp_path, lumbar):
    """A key the project holds for another size or grid is passed over."""
    _, _, first = lumbar
    session = AnnotationSession()
    session.open(tmp_path / "p")
    grid = mip_grid(first)
    meta = {"source_path": "/data/ct.nii.gz", "mip_grid": grid}
    key = session.key_for("MIP ct", meta, (336, 136))
    assert key == "ct_336x136"
    session.save(key, [], image=np.zeros((336, 136), np.float32), meta={"mip_grid": grid})
    assert session.key_for("MIP ct", meta, (336, 136)) == key  # the same grid: the same key
    moved = dict(grid, y=[grid["y"][0] + 5, grid["y"][1] + 5])
    other = session.key_for("MIP ct", dict(meta, mip_grid=moved), (336, 136))
    assert other == "ct_336x136_2"  # same size, another grid: its own key
    stale = dict(meta, project_key=key)  # a key kept in the layer from an earlier run
    assert session.key_for("MIP ct", stale, (336, 99)) == "ct_336x99"
    assert session.key_for("MIP ct", meta, (336, 136), avoid=key) == "ct_336x136_2"
    session.close()


def test_mip_problems():
    rng = np.random.default_rng(0)
    column = synth_column(rng, outline="whole")
    assert mip_problems(column.image) == []
    noise = rng.integers(0, 256, (300, 120)).astype(np.uint8)
    problems = mip_problems(noise)
    assert any("0..255" in p for p in problems) and any("pixel noise" in p for p in problems)
    bright = mip_problems(rng.integers(0, 1500, (300, 120)).astype(np.float32))
    assert len(bright) == 1 and "pixel noise" in bright[0]  # bright enough, but noise
    assert mip_problems(np.zeros((20, 20))) == ["every pixel is 0"]
