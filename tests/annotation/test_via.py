"""VIA 1 / VIA 2 import and export, and the ``convert`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from napari_vertebra.annotation.coco import read_coco, write_coco
from napari_vertebra.annotation.convert import convert, detect_format
from napari_vertebra.annotation.image_files import write_mip_png
from napari_vertebra.annotation.polygons import dice, mask_to_polygons, rasterize
from napari_vertebra.annotation.via import ViaFormatError, read_via, write_via


def _region(xs, ys, **attrs):
    return {
        "shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
        "region_attributes": attrs,
    }


@pytest.mark.parametrize("version", [1, 2])
def test_via_round_trip_keeps_classes_and_masks(tmp_path, make_synthetic, version):
    images = [make_synthetic("a", 1, 17), make_synthetic("b", 12, 5, seed=1)]
    path = write_via(images, tmp_path / "proj.json", class_attribute="level", version=version)
    assert detect_format(path) == f"via{version}"
    back = read_via(path, class_attribute="level", load_images=True)
    for im, b in zip(images, back, strict=True):
        assert (b.height, b.width, b.scan) == (im.height, im.width, im.scan)
        assert b.image.shape == im.image.shape
        assert [a.class_id for a in b.annotations] == [a.class_id for a in im.annotations]
        for a, a2 in zip(im.annotations, b.annotations, strict=True):
            m1 = rasterize(a.polygons, (im.height, im.width))
            assert dice(m1, rasterize(a2.polygons, (im.height, im.width))) >= 0.98
    # and on to COCO + pycocotools masks
    coco_path = write_coco(back, tmp_path / "coco")
    c = COCO(str(coco_path))
    assert len(c.getAnnIds()) == 22
    for ann in c.loadAnns(c.getAnnIds()):
        im = images[ann["image_id"] - 1]
        name = c.loadCats(ann["category_id"])[0]["name"]
        (orig,) = [a for a in im.annotations if a.name == name]
        mask = c.annToMask(ann) > 0
        again = rasterize(mask_to_polygons(mask), mask.shape)
        assert dice(again, rasterize(orig.polygons, mask.shape)) >= 0.98


def test_via2_project_as_written_by_via(tmp_path):
    """A hand-made VIA 2 project: polygon, rect, checkbox attribute, two parts of L1."""
    write_mip_png(tmp_path / "img.png", np.zeros((50, 40), np.float32))
    meta = {
        "img.png1234": {
            "filename": "img.png",
            "size": 1234,
            "regions": [
                _region([5, 20, 20, 5], [5, 5, 15, 15], vertebra="L1"),
                {
                    "shape_attributes": {
                        "name": "rect",
                        "x": 5,
                        "y": 30,
                        "width": 15,
                        "height": 10,
                    },
                    "region_attributes": {"vertebra": {"L2": True}},
                },
                _region([25, 35, 30], [5, 5, 12], vertebra="l1"),
            ],
            "file_attributes": {},
        }
    }
    data = {"_via_settings": {}, "_via_img_metadata": meta, "_via_attributes": {}}
    (tmp_path / "p.json").write_text(json.dumps(data), encoding="utf-8")
    (im,) = read_via(tmp_path / "p.json")
    assert (im.height, im.width) == (50, 40)  # from the image file
    l1, l2 = im.annotations
    assert (l1.name, len(l1.polygons), l2.name) == ("L1", 2, "L2")
    np.testing.assert_allclose(l1.polygons[0][0], [4.5, 4.5])  # (y, x) - 0.5


def test_via_errors_unknown_attribute_class_and_size(tmp_path, files_in, cli):
    meta = {
        "a.png-1": {
            "filename": "a.png",
            "size": -1,
            "regions": {"0": _region([1, 9, 9], [1, 1, 9], kind="L1")},
        },
        "b.png-1": {
            "filename": "b.png",
            "size": -1,
            "regions": {"0": _region([1, 9, 9], [1, 1, 9], vertebra="S9")},
        },
    }
    p = tmp_path / "in" / "v1.json"
    p.parent.mkdir()
    p.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ViaFormatError) as e:
        read_via(p, image_size=(20, 20))
    msg = str(e.value)
    assert "no region attribute 'vertebra' (found: 'kind')" in msg
    assert "'S9'" in msg and "unknown vertebra" in msg
    only_a = tmp_path / "in" / "a.json"
    only_a.write_text(json.dumps({"a.png-1": meta["a.png-1"]}), encoding="utf-8")
    (im,) = read_via(only_a, class_attribute="kind", image_size={"a.png": (30, 20)})
    assert (im.height, im.width) == (30, 20) and im.annotations[0].name == "L1"
    with pytest.raises(ViaFormatError, match="image size unknown"):
        read_via(only_a, class_attribute="kind")
    # the convert command: one error line, status 2, nothing written
    out = tmp_path / "out"
    assert cli(["convert", str(p), str(out / "x.json"), "--image-size", "20", "20"]) == 2
    assert files_in(out) == set()


def test_via2_project_without_the_attribute(tmp_path):
    data = {
        "_via_img_metadata": {},
        "_via_attributes": {"region": {"name": {}, "type": {}}, "file": {}},
    }
    (tmp_path / "p.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(
        ViaFormatError, match=r"no region attribute 'vertebra'.*\['name', 'type'\]"
    ):
        read_via(tmp_path / "p.json")


def test_convert_coco_via_coco(tmp_path, make_synthetic, cli):
    src = write_coco([make_synthetic("s1", 5, 9)], tmp_path / "coco")
    via = tmp_path / "via" / "project_via.json"
    assert cli(["convert", str(src), str(via)]) == 0
    assert detect_format(via) == "via2"
    assert (via.parent / "s1.png").is_file()  # the image travels along
    back = tmp_path / "back" / "annotations.json"
    assert cli(["convert", str(via), str(back)]) == 0
    a, b = read_coco(src, load_images=True)[0], read_coco(back, load_images=True)[0]
    assert b.scan == "s1" and np.array_equal(a.image, b.image)
    assert [x.name for x in a.annotations] == [x.name for x in b.annotations]
    convert(src, tmp_path / "v1" / "out.json", to="via1")
    assert detect_format(tmp_path / "v1" / "out.json") == "via1"
    with pytest.raises(ValueError, match="neither a COCO file nor a VIA"):
        (tmp_path / "junk.json").write_text("[1, 2]", encoding="utf-8")
        convert(tmp_path / "junk.json", tmp_path / "o.json")
