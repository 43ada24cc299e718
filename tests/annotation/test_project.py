"""The autosaved annotation project store."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools.coco import COCO

from napari_vertebra.annotation import _atomic
from napari_vertebra.annotation.coco import read_coco
from napari_vertebra.annotation.image_files import HU_SCALE
from napari_vertebra.annotation.project import AnnotationProject, safe_key
from napari_vertebra.annotation.types import VertebraAnnotation


def _anns(offset=0.0):
    sq = np.array([[2, 2], [2, 20], [15, 20], [15, 2]], float) + offset
    return [
        VertebraAnnotation(16, [sq]),
        VertebraAnnotation(17, [sq + np.array([20, 0])], score=0.9),
    ]


def _equal(a, b):
    assert [x.class_id for x in a] == [x.class_id for x in b]
    assert [x.score for x in a] == [x.score for x in b]
    for x, y in zip(a, b, strict=True):
        for p, q in zip(x.polygons, y.polygons, strict=True):
            np.testing.assert_allclose(p, q, atol=1e-3)


def test_save_load_in_a_new_object(tmp_path, make_synthetic):
    syn = make_synthetic("case1", 13, 5)
    proj = AnnotationProject(tmp_path / "p")
    proj.add_image("case1", syn.image, scan="patient-7", meta={"source": "ct.nii.gz"})
    proj.save("case1", syn.annotations)
    assert proj.load("other") == []

    again = AnnotationProject(tmp_path / "p")
    assert again.list_images() == ["case1"]
    _equal(again.load("case1"), syn.annotations)
    im = again.image("case1")
    assert im.scan == "patient-7" and im.meta["source"] == "ct.nii.gz"
    assert np.abs(im.image - syn.image).max() <= 0.5 / HU_SCALE + 1e-4
    # the image is stored once: a second add keeps it (same shape), a new shape is refused
    again.add_image("case1", np.zeros_like(syn.image))
    assert again.image("case1").image.max() > 0
    with pytest.raises(ValueError, match="stored as"):
        again.add_image("case1", np.zeros((3, 3)))


def test_crash_during_save_keeps_previous_file(tmp_path, monkeypatch):
    proj = AnnotationProject(tmp_path)
    proj.add_image("img", np.zeros((40, 30), np.float32))
    proj.save("img", _anns())
    before = sorted(p.name for p in (tmp_path / "annotations").iterdir())

    def boom(fd):
        raise OSError("power cut")

    monkeypatch.setattr(_atomic.os, "fsync", boom)
    with pytest.raises(OSError, match="power cut"):
        proj.save("img", _anns(offset=3.0))
    monkeypatch.undo()
    _equal(AnnotationProject(tmp_path).load("img"), _anns())
    assert sorted(p.name for p in (tmp_path / "annotations").iterdir()) == before  # no temp


def test_keys_are_safe(tmp_path):
    proj = AnnotationProject(tmp_path)
    for bad in ("../x", "a/b", ".hidden", "", "a b"):
        with pytest.raises(ValueError, match="safe file name"):
            proj.save(bad, [])
    assert safe_key("case 1/ct.nii.gz") == "case_1_ct"
    assert safe_key("///") == "image"


def test_export_coco(tmp_path, make_synthetic):
    proj = AnnotationProject(tmp_path / "p")
    for k in range(2):
        syn = make_synthetic(f"s{k}", 1 + k, 6, seed=k)
        proj.add_image(f"s{k}", syn.image, scan=f"s{k}")
        proj.save(f"s{k}", syn.annotations)
    path = proj.export_coco(tmp_path / "out")
    c = COCO(str(path))
    assert len(c.getImgIds()) == 2 and len(c.getAnnIds()) == 12
    back = read_coco(path, load_images=True)
    assert [b.scan for b in back] == ["s0", "s1"]
    assert back[1].annotations[0].name == "T2"
