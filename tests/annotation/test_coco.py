"""COCO writing and validated reading, checked against pycocotools."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO

from napari_vertebra.annotation import _atomic
from napari_vertebra.annotation.coco import CocoFormatError, read_coco, to_coco, write_coco
from napari_vertebra.annotation.image_files import HU_SCALE, read_image, write_mip_png
from napari_vertebra.annotation.polygons import check_polygon, dice, mask_to_polygons, rasterize
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation


def _coco_masks(json_path) -> dict[tuple[str, int], np.ndarray]:
    """{(file name, category name): mask} decoded by pycocotools."""
    c = COCO(str(json_path))
    out = {}
    for a in c.loadAnns(c.getAnnIds()):
        name = c.loadCats(a["category_id"])[0]["name"]
        out[(c.loadImgs(a["image_id"])[0]["file_name"], name)] = c.annToMask(a) > 0
    return out


def test_round_trip_through_pycocotools(tmp_path, make_synthetic):
    images = [make_synthetic("scanA", first=1, n=17), make_synthetic("scanB", 10, 8, seed=3)]
    path = write_coco(images, tmp_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [i["id"] for i in data["images"]] == [1, 2]
    assert [a["id"] for a in data["annotations"]] == list(range(1, 26))
    assert data["images"][0]["scan"] == "scanA" and data["images"][0]["hu_scale"] == HU_SCALE
    cats = {c["id"]: (c["name"], c["supercategory"]) for c in data["categories"]}
    assert cats[1] == ("T1", "thoracic") and cats[12] == ("T12", "thoracic")
    assert cats[13] == ("L1", "lumbar") and cats[17] == ("L5", "lumbar") and len(cats) == 17

    masks = _coco_masks(path)
    assert len(masks) == 25
    for im in images:
        for a in im.annotations:
            ours = rasterize(a.polygons, (im.height, im.width))
            theirs = masks[(im.file_name, a.name)]
            # back to polygons from pycocotools' mask: class and mask are kept
            again = rasterize(mask_to_polygons(theirs), theirs.shape)
            assert dice(again, ours) >= 0.98
    back = read_coco(path, load_images=True)
    assert [b.scan for b in back] == ["scanA", "scanB"]
    for im, b in zip(images, back, strict=True):
        assert [a.class_id for a in b.annotations] == [a.class_id for a in im.annotations]
        assert np.abs(b.image - im.image).max() <= 0.5 / HU_SCALE + 1e-4
        for a, a2 in zip(im.annotations, b.annotations, strict=True):
            np.testing.assert_allclose(a2.polygons[0], a.polygons[0], atol=1e-3)


def test_annotation_fields(tmp_path):
    poly = np.array([[10, 5], [10, 25], [30, 25], [30, 5]], float)
    im = AnnotatedImage("x/y.png", 40, 40, [VertebraAnnotation(13, [poly], score=0.7)])
    coco = to_coco([im])
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [5.5, 10.5, 20.0, 20.0]
    assert ann["area"] == int(rasterize([poly], (40, 40)).sum()) == 21 * 21
    assert ann["iscrowd"] == 0 and ann["score"] == 0.7 and ann["category_id"] == 13
    assert ann["segmentation"][0][:2] == [5.5, 10.5]  # x = col + 0.5, y = row + 0.5


def test_category_mapping_by_name(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    data = {
        "images": [{"id": 7, "file_name": "a.png", "width": 50, "height": 60}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 101, "segmentation": [[1, 1, 9, 1, 9, 9]]},
            {"id": 2, "image_id": 7, "category_id": 5, "segmentation": [[1, 20, 9, 20, 9, 29]]},
        ],
        "categories": [
            {"id": 101, "name": "L1"},
            {"id": 5, "name": "t12"},
            {"id": 9, "name": "C7"},
        ],
    }
    p = tmp_path / "other.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    (im,) = read_coco(p)
    assert [a.name for a in im.annotations] == ["L1", "T12"]
    assert im.height == 60 and im.width == 50 and im.image is None


def test_malformed_coco_lists_every_problem(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"")
    data = {
        "images": [
            {"id": 1, "file_name": "ok.png", "width": 10, "height": 10},
            {"id": 2, "file_name": "missing.png", "width": 10, "height": 10},
            {"id": 3, "file_name": "ok.png", "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 99, "segmentation": [[1, 1, 5, 1, 5, 5]]},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]]},
            {"id": 3, "image_id": 42, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
            {"id": 4, "image_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
            {"id": 5, "image_id": 1, "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        ],
        "categories": [{"id": 1, "name": "T1"}, {"id": 2, "name": "pelvis"}],
    }
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CocoFormatError) as e:
        read_coco(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "missing.png not found" in msg
    assert "images[2]: missing key(s) 'id'" not in msg and "missing key(s) 'width'" in msg
    assert "unknown category_id 99" in msg
    assert "has 2 point(s); 3 needed" in msg
    assert "image_id 42 names no image" in msg
    assert "missing key(s) 'category_id'" in msg
    assert "'pelvis'" in msg and "not a vertebra" in msg
    assert len(e.value.errors) == 7
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{not json", "not valid JSON"),
        ('{"images": []}', "missing top-level key 'annotations'"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' is not a list"),
    ],
)
def test_malformed_top_level(tmp_path, text, needle):
    p = tmp_path / "a.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(CocoFormatError, match=needle):
        read_coco(p)


def test_write_coco_validates_before_writing(tmp_path, make_synthetic, files_in):
    good = make_synthetic("s", 1, 5)
    bad = AnnotatedImage("b.png", 10, 10, [VertebraAnnotation(2, [[[0, 0], [3, 3]]])])
    out = tmp_path / "out"
    with pytest.raises(
        CocoFormatError, match=r"image 2 \('b.png'\), annotation 1 \(T2\): polygon 0 has 2 point"
    ):
        write_coco([good, bad], out)
    assert files_in(tmp_path) == set()
    wrong_shape = AnnotatedImage("c.png", 10, 10, [], image=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="shape"):
        write_coco([wrong_shape], out)
    with pytest.raises(ValueError, match="twice"):
        write_coco([good, good], out)
    assert files_in(tmp_path) == set()


def test_write_coco_failure_midway_leaves_nothing(tmp_path, make_synthetic, monkeypatch, files_in):
    images = [make_synthetic(f"s{k}", 1, 4, seed=k) for k in range(3)]
    calls = {"n": 0}
    real = _atomic.png_bytes

    def flaky(a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(a)

    monkeypatch.setattr("napari_vertebra.annotation.coco.png_bytes", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_coco(images, tmp_path / "out")
    assert files_in(tmp_path) == set()


def test_mip_png_scale(tmp_path):
    mip = np.array([[0.0, 100.0, 1500.0], [1234.567, 2000.0, -5.0]], np.float32)
    write_mip_png(tmp_path / "m.png", mip)
    raw = read_image(tmp_path / "m.png")
    assert raw.max() == 65535 and raw[0, 2] == 1500 * HU_SCALE  # clipped, scaled
    back = read_image(tmp_path / "m.png", hu_scale=HU_SCALE)
    assert abs(back[1, 0] - 1234.567) <= 0.5 / HU_SCALE + 1e-4
    assert back[1, 2] == 0.0
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "nothing.png")


# coordinates on a quarter-pixel grid: exact in binary, like annotation tools' output
polys = st.lists(
    st.tuples(st.integers(0, 47 * 4), st.integers(0, 59 * 4)), min_size=3, max_size=8
).map(lambda v: np.array(v, float) / 4)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 17), polys), min_size=1, max_size=5))
def test_to_coco_from_coco_round_trip(tmp_path_factory, items):
    shape = (48, 60)
    anns = [VertebraAnnotation(c, [p]) for c, p in items]
    im = AnnotatedImage("p.png", *shape, anns, image=np.zeros(shape, np.float32))
    out = tmp_path_factory.mktemp("coco")
    # a degenerate polygon (collinear, crossing, covering no pixel) is refused, the rest
    # round-trips
    degenerate = [
        bool(check_polygon(p, shape, allow_touching=True)) or not rasterize([p], shape).any()
        for _, p in items
    ]
    if any(degenerate):
        with pytest.raises(CocoFormatError, match=r"polygon 0|cover no pixel"):
            write_coco([im], out)
        assert not any(out.iterdir())
        return
    back = read_coco(write_coco([im], out))[0]
    assert [a.class_id for a in back.annotations] == [c for c, _ in items]
    for a, b in zip(anns, back.annotations, strict=True):
        assert np.array_equal(rasterize(a.polygons, shape), rasterize(b.polygons, shape))


def test_rle_segmentation_is_read_as_polygons(tmp_path):
    from pycocotools import mask as mask_utils

    from napari_vertebra.annotation.rle import rle_decode

    rng = np.random.default_rng(0)
    for _ in range(20):  # our decoder agrees with pycocotools' encoder
        m = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert np.array_equal(rle_decode({**rle, "counts": rle["counts"].decode()}), m)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    (tmp_path / "a.png").write_bytes(b"")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "score": 0.5,
             "segmentation": {"size": [30, 40], "counts": rle["counts"].decode()}},
            {"id": 2, "image_id": 1, "category_id": 3,
             "segmentation": {"size": [30, 40], "counts": [5, 7]}},
        ],
        "categories": [{"id": 3, "name": "L2"}],
    }  # fmt: skip
    p = tmp_path / "rle.json"
    p.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CocoFormatError, match=r"annotations\[1\].*add up to 12, not 30x40"):
        read_coco(p)
    data["annotations"].pop()
    p.write_text(json.dumps(data), encoding="utf-8")
    (im,) = read_coco(p)
    (a,) = im.annotations
    assert a.name == "L2" and a.score == 0.5
    assert np.array_equal(rasterize(a.polygons, mask.shape), mask)


def test_convert_malformed_coco_writes_nothing(tmp_path, cli, capsys, files_in):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1]]}],
        "categories": [{"id": 1, "name": "T1"}],
    }
    p = tmp_path / "in" / "bad.json"
    p.parent.mkdir()
    p.write_text(json.dumps(data), encoding="utf-8")
    out = tmp_path / "out"
    assert cli(["convert", str(p), str(out / "x_via.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json" in err and "1 point(s)" in err
    assert files_in(out) == set()
