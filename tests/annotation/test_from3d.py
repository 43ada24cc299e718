"""Annotations from 3D label maps on the lumbar sample, and ``labels-to-coco``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vertebra.annotation.coco import read_coco
from napari_vertebra.annotation.from3d import labels_to_annotations, projected_masks
from napari_vertebra.annotation.polygons import dice, polygon_centroid, rasterize
from napari_vertebra.core.labels import to_class_map


def test_lumbar_sample_polygons(lumbar_pipeline, lumbar_annotated):
    _, _, result = lumbar_pipeline
    im = lumbar_annotated
    names = [a.name for a in im.annotations]
    assert names[-6:] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert set(names) <= {"T11", "T12", "L1", "L2", "L3", "L4", "L5"}
    assert im.image.shape == result.mip.shape == (im.height, im.width)
    # top to bottom: centroid rows increase with the class id
    rows = [np.mean([polygon_centroid(p)[0] for p in a.polygons]) for a in im.annotations]
    assert np.all(np.diff(rows) > 0)
    # the polygons match the projected masks
    masks = projected_masks(to_class_map(result.labels_cropped.array, "totalsegmentator"))
    for a in im.annotations:
        raster = rasterize(a.polygons, result.mip.shape)
        d = dice(raster, masks[a.class_id])
        assert d >= 0.95, (a.name, d)
        # same orientation as the MIP: the outline covers bone (windowed HU > 0)
        assert (im.image[raster] > 0).mean() >= 0.95
    # T11 is cut at the top: the visibility rule measured and applied it
    frac = im.meta["visible_fraction"]
    assert frac["T11"] < 0.5 and "T11" in im.meta["dropped"]
    assert all(frac[n] == 1.0 for n in ("L1", "L2", "L3", "L4", "L5"))


def test_visibility_threshold(lumbar_pipeline, lumbar_annotated):
    ct, labels, result = lumbar_pipeline
    t12 = lumbar_annotated.meta["visible_fraction"]["T12"]
    keep_all = labels_to_annotations(ct, labels, result=result, min_visible=0.0)
    assert keep_all.annotations[0].name == "T11"
    stricter = labels_to_annotations(ct, labels, result=result, min_visible=min(1.0, t12 + 0.01))
    assert "T12" not in [a.name for a in stricter.annotations]
    with pytest.raises(ValueError, match="min_visible"):
        labels_to_annotations(ct, labels, result=result, min_visible=1.5)


def test_grid_mismatch_is_a_clear_error(lumbar_pipeline):
    ct, labels, _ = lumbar_pipeline
    from napari_vertebra.core.volume import Volume

    smaller = Volume(labels.array[:, :, :-1], labels.spacing, labels.origin, labels.direction)
    with pytest.raises(ValueError, match="grid does not match the CT"):
        labels_to_annotations(ct, smaller)


def test_labels_to_coco_command(
    tmp_path, lumbar_ct_path, lumbar_labels_path, tptbox_labels_path, cli, files_in, capsys
):
    out = tmp_path / "out"
    # a label map from another scan: one error line, status 2, nothing written
    assert (
        cli(["labels-to-coco", str(lumbar_ct_path), str(tptbox_labels_path), "-o", str(out), "-q"])
        == 2
    )
    assert "grid does not match" in capsys.readouterr().err
    assert files_in(out) == set()
    table = tmp_path / "table.json"
    table.write_text(
        json.dumps({str(27 + k): n for k, n in enumerate("L5 L4 L3 L2 L1 T12".split())}),
        encoding="utf-8",
    )
    args = ["labels-to-coco", str(lumbar_ct_path), str(lumbar_labels_path), "-o", str(out)]
    assert cli([*args, "--convention", str(table), "--scan", "pat1", "-q"]) == 0
    (im,) = read_coco(out / "annotations.json", load_images=True)
    assert im.scan == "pat1" and im.file_name == "images/pat1.png"
    assert [a.name for a in im.annotations] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert im.image.max() > 100  # HU


def test_extended_class_set_outlines_the_sacrum_too(lumbar_pipeline, lumbar_annotated):
    """The extended set adds the levels the label map has beyond T1..L5 (here the
    sacrum as S1) and leaves the T1..L5 outlines as the paper set gives them."""
    from napari_vertebra.core.labels import EXTENDED

    ct, labels, result = lumbar_pipeline
    ext = labels_to_annotations(
        ct, labels, "totalsegmentator", result=result, scan="lumbar", class_set="extended"
    )
    names = [a.name for a in ext.annotations]
    assert "S1" in names and names[-1] == "S1"  # superior to inferior
    assert names == sorted(names, key=lambda n: EXTENDED.levels.index(n))
    paper = {a.name: a for a in lumbar_annotated.annotations}
    for a in ext.annotations:
        if a.name in paper:
            assert a.class_id == paper[a.name].class_id
            assert np.allclose(np.concatenate(a.polygons), np.concatenate(paper[a.name].polygons))
