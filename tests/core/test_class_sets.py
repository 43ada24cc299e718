"""Class sets (core/labels.py): the paper's T1..L5 and the extended set with landmarks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vertebra.core import labels as L
from napari_vertebra.core.labels import EXTENDED, PAPER, ClassSet, get_class_set

DATA = Path(__file__).resolve().parents[1] / "data"
VERSE_JSON = DATA / "tptbox-l3" / "labels_vert_verse.json"


def test_paper_set_is_todays_classes():
    assert PAPER.levels == L.VERTEBRAE
    assert PAPER.ids == tuple(range(1, 18)) and PAPER.num_classes == L.NUM_CLASSES
    for i in PAPER.ids:
        assert PAPER.class_name(i) == L.class_name(i)
        assert PAPER.colour(i) == L.class_colour(i)
        assert PAPER.supercategory(i) == L.supercategory(i)
    every = L.class_colours_rgba()
    assert PAPER.colours_rgba() == {k: every[k] for k in (0, *PAPER.ids)}
    assert EXTENDED.colours_rgba() == every
    assert get_class_set(None) is PAPER and get_class_set("Paper") is PAPER


def test_module_functions_name_every_level_of_every_set():
    # annotations store stable level ids; names and colours must not depend on the set
    for cs in (PAPER, EXTENDED):
        for i in cs.ids:
            assert L.class_name(i) == cs.class_name(i) == L.level_name(i)
            assert L.class_id(cs.class_name(i)) == i
            assert L.class_colour(i) == cs.colour(i)
            assert L.supercategory(i) == cs.supercategory(i)
    assert L.class_id("sacrum") == L.class_id("S1") == 21
    with pytest.raises(ValueError, match="unknown vertebra"):
        L.class_id("T14")
    with pytest.raises(ValueError, match=r"outside 1\.\.21"):
        L.class_name(22)
    assert L.load_convention("verse") == L.CONVENTIONS["verse"]


@pytest.mark.parametrize("cs", [PAPER, EXTENDED], ids=lambda c: c.name)
def test_names_and_ids_round_trip(cs):
    assert len(set(cs.ids)) == len(cs.ids) == len(cs.levels) == cs.num_classes - 1
    for name, cid in zip(cs.levels, cs.ids, strict=True):
        assert cs.class_id(name) == cid and cs.class_id(name.lower()) == cid
        assert cs.class_name(cid) == name == L.level_name(cid)
    ranks = [cs.rank(i) for i in cs.ids_in_order()]
    assert ranks == list(range(len(cs.levels)))
    assert len(set(cs.colours)) == len(cs.colours)
    with pytest.raises(ValueError, match=cs.name):
        cs.class_id("C3")
    with pytest.raises(ValueError, match=cs.name):
        cs.class_name(len(cs.ids) + 1)


def test_extended_set_adds_landmarks_and_transitional_levels():
    assert EXTENDED.levels[0] == "C7" and EXTENDED.levels[-1] == "S1"
    assert EXTENDED.levels.index("T13") == EXTENDED.levels.index("T12") + 1
    assert EXTENDED.levels.index("L6") == EXTENDED.levels.index("L5") + 1
    assert EXTENDED.num_classes == 22
    # the paper's levels keep their ids and colours
    for i in PAPER.ids:
        assert EXTENDED.class_name(i) == PAPER.class_name(i)
        assert EXTENDED.colour(i) == PAPER.colour(i)
    assert EXTENDED.class_id("sacrum") == EXTENDED.class_id("S1")
    assert EXTENDED.rank(EXTENDED.class_id("C7")) == 0  # first, though its id is 18
    assert EXTENDED.supercategory(EXTENDED.class_id("C7")) == "cervical"
    assert EXTENDED.supercategory(EXTENDED.class_id("S1")) == "sacral"
    assert EXTENDED.supercategory(EXTENDED.class_id("T13")) == "thoracic"


def test_class_set_validation():
    with pytest.raises(ValueError, match="unknown class set"):
        get_class_set("cervical")
    with pytest.raises(ValueError, match=r"exactly 1..2"):
        ClassSet("bad", ("T1", "C7"), (1, 18), ("#000000", "#ffffff"))
    with pytest.raises(ValueError, match="differ in length"):
        ClassSet("bad", ("T1",), (1,), ())


@pytest.mark.parametrize("cs", [PAPER, EXTENDED], ids=lambda c: c.name)
def test_coco_categories_round_trip(cs):
    cats = json.loads(json.dumps(cs.coco_categories()))
    assert [c["id"] for c in cats] == sorted(cs.ids)
    assert cs.category_map(cats) == {i: i for i in cs.ids}
    # another tool's file: other category ids, other order; matched by name
    foreign = [{"id": 100 + k, "name": c["name"]} for k, c in enumerate(reversed(cats))]
    m = cs.category_map(foreign)
    assert {cs.class_name(v) for v in m.values()} == set(cs.levels)
    assert all(cs.class_name(m[c["id"]]) == c["name"] for c in foreign)


def test_paper_categories_match_the_coco_writer():
    from napari_vertebra.annotation.coco import coco_categories

    assert PAPER.coco_categories() == coco_categories()


def test_paper_set_refuses_extended_categories():
    with pytest.raises(ValueError, match=r"'T13'.*paper class set"):
        PAPER.category_map(EXTENDED.coco_categories())


def test_conventions_for_both_sets():
    # the paper set's tables are today's
    for src in ("verse", "totalsegmentator"):
        assert PAPER.convention(src) == L.CONVENTIONS[src]
    v = EXTENDED.convention("verse")
    name = {s: EXTENDED.class_name(c) for s, c in v.items()}
    assert name[7] == "C7" and name[8] == "T1" and name[19] == "T12" and name[28] == "T13"
    assert name[20] == "L1" and name[24] == "L5" and name[25] == "L6" and name[26] == "S1"
    assert not set(range(1, 7)) & set(v)  # C1..C6 are not classes
    t = EXTENDED.convention("totalsegmentator")
    tname = {s: EXTENDED.class_name(c) for s, c in t.items()}
    assert tname[44] == "C7" and tname[43] == "T1" and tname[32] == "T12" and tname[27] == "L5"
    assert tname[25] == tname[26] == "S1"
    assert 45 not in t  # C6
    # a dataset's own JSON table (VerSe names, "sacrum" included)
    j = EXTENDED.convention(VERSE_JSON)
    assert j == v
    assert PAPER.convention(VERSE_JSON) == L.load_convention(VERSE_JSON)


def test_label_maps_of_both_sets():
    arr = np.array([[0, 7, 8, 19], [28, 20, 25, 26]])
    ext = EXTENDED.to_class_map(arr, "verse")
    assert [EXTENDED.class_name(c) for c in ext.ravel() if c] == [
        "C7", "T1", "T12", "T13", "L1", "L6", "S1"
    ]  # fmt: skip
    pap = L.to_class_map(arr, "verse", "paper")
    assert np.array_equal(pap, L.to_class_map(arr, "verse"))
    assert [PAPER.class_name(c) for c in pap.ravel() if c] == ["T1", "T12", "L1"]


def test_real_label_maps_map_alike_in_both_sets():
    mask = sitk.GetArrayFromImage(
        sitk.ReadImage(str(DATA / "tptbox-l3" / "sub-ct_seg-vert_label-22_msk.nii.gz"))
    )
    a = PAPER.to_class_map(mask, "verse")
    b = EXTENDED.to_class_map(mask, "verse")
    assert np.array_equal(a, b)  # L2..L4 keep their ids
    assert {PAPER.class_name(c) for c in np.unique(a) if c} == {"L2", "L3", "L4"}
    ts = sitk.GetArrayFromImage(
        sitk.ReadImage(str(DATA / "totalseg-dicom" / "example_seg_dicom.nii.gz"))
    )
    c = EXTENDED.to_class_map(ts, "totalsegmentator")
    assert {EXTENDED.class_name(v) for v in np.unique(c) if v} == {"T11", "T12"}


def test_convention_errors_name_the_set(tmp_path):
    bad = tmp_path / "cervical.json"
    bad.write_text(json.dumps({"1": "C1", "2": "C2"}))
    with pytest.raises(ValueError, match="extended class set"):
        EXTENDED.convention(bad)
    with pytest.raises(ValueError, match="unknown label convention"):
        EXTENDED.convention(tmp_path / "missing.json")


def test_annotations_accept_extended_ids():
    from napari_vertebra.annotation.types import VertebraAnnotation

    sq = np.array([[0.0, 0], [0, 4], [4, 4]])
    assert VertebraAnnotation(EXTENDED.class_id("T13"), [sq]).name == "T13"
    assert VertebraAnnotation(5, [sq]).name == "T5"
    with pytest.raises(ValueError, match="not a vertebra level"):
        VertebraAnnotation(22, [sq])
