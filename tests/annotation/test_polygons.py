"""Polygons <-> masks, Labels images <-> annotations, and the annotation checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from scipy.spatial import ConvexHull
from skimage.draw import disk, ellipse

from napari_vertebra.annotation.coco import to_coco
from napari_vertebra.annotation.polygons import (
    annotations_to_label_image,
    check_image_annotations,
    check_polygon,
    dice,
    label_image_to_annotations,
    mask_outline,
    mask_to_polygons,
    polygon_area,
    rasterize,
)
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation

SHAPE = (64, 72)


def _dist_to_boundary(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    ap = points[:, None, :] - a[None]
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


convex_polygons = st.lists(
    st.tuples(st.floats(2, SHAPE[0] - 3), st.floats(2, SHAPE[1] - 3)), min_size=3, max_size=12
).map(np.array)


@settings(max_examples=40, deadline=None)
@given(convex_polygons)
def test_rasterize_agrees_with_pycocotools(points):
    try:
        hull = ConvexHull(points)
    except Exception:  # degenerate (collinear) point sets
        return
    poly = points[hull.vertices]
    if polygon_area(poly) < 4:
        return
    ours = rasterize([poly], SHAPE)
    coco = to_coco([AnnotatedImage("a.png", *SHAPE, [VertebraAnnotation(5, [poly])])])
    seg = coco["annotations"][0]["segmentation"]
    theirs = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg, *SHAPE))) > 0
    diff = np.argwhere(ours != theirs).astype(float)
    # pycocotools rounds vertices to 1/5 px: only pixels whose centre is that close to an
    # edge may differ
    if len(diff):
        assert _dist_to_boundary(diff, poly).max() <= 0.3
    assert coco["annotations"][0]["area"] == ours.sum()


@settings(max_examples=30, deadline=None)
@given(
    st.floats(12, 50),
    st.floats(12, 56),
    st.floats(5, 12),
    st.floats(5, 14),
    st.floats(0, np.pi),
)
def test_mask_polygon_round_trip_dice(r, c, a, b, theta):
    mask = np.zeros(SHAPE, bool)
    rr, cc = ellipse(r, c, a, b, SHAPE, rotation=theta)
    mask[rr, cc] = True
    polys = mask_to_polygons(mask, tolerance_px=1.0)
    assert len(polys) == 1
    assert dice(rasterize(polys, SHAPE), mask) >= 0.98


def test_mask_to_polygons_parts_holes_and_small_bits():
    mask = np.zeros((60, 60), bool)
    mask[5:25, 5:25] = True
    mask[35:55, 30:50] = True
    mask[40:45, 35:45] = False  # a hole: filled
    mask[0, 59] = True  # one pixel: below min_area_px
    polys = mask_to_polygons(mask, tolerance_px=0.5, min_area_px=4)
    assert len(polys) == 2
    filled = mask.copy()
    filled[40:45, 35:45] = True
    filled[0, 59] = False
    assert np.array_equal(rasterize(polys, mask.shape), filled)
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    with pytest.raises(ValueError, match="2D"):
        mask_to_polygons(np.zeros((2, 2, 2), bool))


def test_mask_outline_is_one_polygon_whatever_the_fragments():
    """A cracked, holed mask with a far island: one outline of the vertebra, the crack
    and the hole closed, the island dropped (mask_to_polygons gives 3 parts)."""
    mask = np.zeros((80, 80), bool)
    mask[10:40, 10:40] = True
    mask[24:26, :] = False  # a crack through the body: two fragments 2 px apart
    mask[15:20, 15:20] = False  # a hole
    mask[70:73, 70:73] = True  # a far island
    assert len(mask_to_polygons(mask, min_area_px=1)) == 3
    poly = mask_outline(mask)
    assert poly.ndim == 2 and poly.shape[1] == 2
    body = np.zeros_like(mask)
    body[10:40, 10:40] = True
    assert dice(rasterize([poly], mask.shape), body) > 0.98
    assert mask_outline(np.zeros((5, 5), bool)) is None
    with pytest.raises(ValueError, match="2D"):
        mask_outline(np.zeros((2, 2, 2), bool))


def test_mask_edge_touching_outline_stays_in_image():
    mask = np.zeros((20, 30), bool)
    mask[0:10, 0:30] = True
    (poly,) = mask_to_polygons(mask, tolerance_px=0)
    assert poly[:, 0].min() >= -0.5 and poly[:, 1].max() <= 29.5
    assert np.array_equal(rasterize([poly], mask.shape), mask)
    assert check_polygon(poly, mask.shape) == []


def test_label_image_round_trip():
    img = np.zeros((80, 60), np.uint8)
    for k, cid in enumerate((12, 13, 14)):
        rr, cc = disk((15 + 22 * k, 30), 9, shape=img.shape)
        img[rr, cc] = cid
    anns = label_image_to_annotations(img, 1.0)
    assert [a.class_id for a in anns] == [12, 13, 14]
    back = annotations_to_label_image(anns, img.shape)
    assert back.dtype == np.uint8
    for cid in (12, 13, 14):
        assert dice(back == cid, img == cid) >= 0.98
    with pytest.raises(ValueError, match="outside the classes"):
        label_image_to_annotations(np.full((4, 4), 18))


def test_check_polygon_messages():
    square = np.array([[2, 2], [2, 10], [10, 10], [10, 2]], float)
    assert check_polygon(square, (20, 20)) == []
    assert "at least 3" in check_polygon([[0, 0], [1, 1]], (20, 20))[0]
    assert "at least 3" in check_polygon([[0, 0], [1, 1], [1, 1], [0, 0]])[0]
    assert "outside" in check_polygon(square + 15, (20, 20))[0]
    bowtie = np.array([[0, 0], [10, 10], [0, 10], [10, 0]], float)
    assert check_polygon(bowtie) == ["polygon intersects itself"]
    assert check_polygon([[0, 0], [5, 5], [10, 10]]) == ["polygon has zero area"]
    assert "non-finite" in check_polygon([[0, 0], [np.nan, 1], [3, 3]])[0]


def test_self_intersection_detects_only_real_crossings():
    # a concave but simple polygon: no warning
    arrow = np.array([[0, 0], [5, 3], [0, 6], [10, 3]], float)
    assert check_polygon(arrow) == []
    # a star drawn in one stroke crosses itself
    t = np.arange(5) * 4 * np.pi / 5
    star = np.stack([10 + 8 * np.sin(t), 10 + 8 * np.cos(t)], 1)
    assert "polygon intersects itself" in check_polygon(star)


def _box(r0, r1):
    return np.array([[r0, 5], [r0, 30], [r1, 30], [r1, 5]], float)


def test_check_image_annotations_duplicates_and_order():
    ok = [VertebraAnnotation(12, [_box(2, 10)]), VertebraAnnotation(13, [_box(14, 22)])]
    assert check_image_annotations(ok, (40, 40)) == []
    dup = [*ok, VertebraAnnotation(13, [_box(25, 30)])]
    assert any("L1 is used 2 times" in m for m in check_image_annotations(dup, (40, 40)))
    swapped = [VertebraAnnotation(12, [_box(14, 22)]), VertebraAnnotation(13, [_box(2, 10)])]
    msgs = check_image_annotations(swapped, (40, 40))
    assert len(msgs) == 1 and "T12" in msgs[0] and "below" in msgs[0] and "L1" in msgs[0]
    bad = [VertebraAnnotation(1, [[[0, 0], [1, 1]]])]
    assert "T1: polygon has 2 distinct point(s)" in check_image_annotations(bad)[0]
