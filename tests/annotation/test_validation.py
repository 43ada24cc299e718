"""Annotations are validated on every path: the COCO / VIA readers, ``convert`` and
``dataset build`` refuse malformed polygons, categories and ids with one clear message
naming the image and the annotation, write nothing, and clip polygons that only reach
past the image edge (with a warning). Real annotations from 3D labels still pass."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from napari_vertebra.annotation.coco import CocoFormatError, read_coco, write_coco
from napari_vertebra.annotation.convert import convert
from napari_vertebra.annotation.dataset import build_dataset
from napari_vertebra.annotation.image_files import write_mip_png
from napari_vertebra.annotation.polygons import (
    check_polygon,
    dice,
    mask_to_polygons,
    rasterize,
)
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation
from napari_vertebra.annotation.validate import clip_to_image, validate_polygon
from napari_vertebra.annotation.via import ViaFormatError, read_via

H, W = 60, 50  # image rows, cols
SQUARE_XY = [10, 10, 30, 10, 30, 20, 10, 20]  # COCO x, y pairs, well inside


def _coco(polygons: dict[int, list[float]] | None = None) -> dict:
    """A valid COCO dict: one 60 x 50 image 'mip.png' (id 7), annotations T12 (id 1),
    L1 (id 2), L5 (id 3) stacked top to bottom; ``polygons`` replaces some by id."""
    anns = []
    for ann_id, (cat, r0) in enumerate([(12, 5), (13, 20), (17, 38)], start=1):
        seg = [10, r0, 40, r0, 40, r0 + 12, 10, r0 + 12]
        seg = (polygons or {}).get(ann_id, seg)
        anns.append({"id": ann_id, "image_id": 7, "category_id": cat, "segmentation": [seg]})
    return {
        "images": [{"id": 7, "file_name": "mip.png", "width": W, "height": H}],
        "annotations": anns,
        "categories": [{"id": i, "name": n} for i, n in [(12, "T12"), (13, "L1"), (17, "L5")]],
    }


BOWTIE = [10, 20, 30, 32, 30, 20, 10, 32]  # edges cross at (20, 26)
COLLINEAR = [10, 20, 20, 25, 30, 30]
OUTSIDE = [10, 65, 30, 65, 30, 75, 10, 75]  # rows 64.5..74.5 of a 60-row image
ABSURD = [10, 20, 1e300, 20, 30, 30]


def _dup_category(d: dict) -> None:
    d["categories"].append({"id": 12, "name": "L5"})


def _list_image_id(d: dict) -> None:
    d["images"][0]["id"] = [7]
    for a in d["annotations"]:
        a["image_id"] = [7]


def _bool_ann_id(d: dict) -> None:
    d["annotations"][1]["id"] = True


def _list_ann_id(d: dict) -> None:
    d["annotations"][1]["id"] = [2]


def _float_category_id(d: dict) -> None:
    d["annotations"][1]["category_id"] = 13.0


def _unknown_name(d: dict) -> None:
    d["categories"][1]["name"] = "pelvis"


#: (case id, edit of the valid COCO dict, words the message must hold)
MALFORMED = [
    ("self-intersecting", {2: BOWTIE}, ["id 2", "mip.png", "L1", "polygon 0 intersects itself"]),
    ("collinear", {2: COLLINEAR}, ["id 2", "mip.png", "L1", "zero area"]),
    ("fully-outside", {3: OUTSIDE}, ["id 3", "mip.png", "L5", "entirely outside"]),
    ("absurd", {2: ABSURD}, ["id 2", "mip.png", "L1", "1e+300 px outside", "wrong"]),
    ("non-finite", {2: [10, 20, float("nan"), 20, 30, 30]}, ["id 2", "finite numbers"]),
    ("duplicate-category", _dup_category, ["id 12 is used twice", "'T12' and 'L5'"]),
    ("image-id-list", _list_image_id, ["id [7]", "is not an integer"]),
    ("annotation-id-bool", _bool_ann_id, ["id True", "is not an integer"]),
    ("annotation-id-list", _list_ann_id, ["id [2]", "is not an integer"]),
    ("category-id-float", _float_category_id, ["category_id 13.0 is not an integer"]),
    ("category-not-vertebra", _unknown_name, ["id 2", "'pelvis'", "not a vertebra"]),
]


def _malformed(edit) -> dict:
    d = _coco(edit if isinstance(edit, dict) else None)
    if callable(edit):
        edit(d)
    return d


@pytest.fixture
def coco_dir(tmp_path):
    """Write a COCO dict as tmp/in/annotations.json beside a real 16-bit PNG."""

    def make(data: dict):
        d = tmp_path / "in"
        d.mkdir(exist_ok=True)
        write_mip_png(d / "mip.png", np.full((H, W), 100.0, np.float32))
        path = d / "annotations.json"
        path.write_text(json.dumps(data), encoding="utf-8")  # NaN as JSON's NaN
        return path

    return make


def test_valid_fixture_is_accepted(coco_dir):
    (im,) = read_coco(coco_dir(_coco()), load_images=True)
    assert [a.name for a in im.annotations] == ["T12", "L1", "L5"] and im.warnings == []


@pytest.mark.parametrize("case, edit, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_reader_refuses_and_names_image_and_annotation(coco_dir, case, edit, words):
    path = coco_dir(_malformed(edit))
    with pytest.raises(CocoFormatError) as e:
        read_coco(path)
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, (case, w, msg)


@pytest.mark.parametrize("case, edit, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_convert_refuses_without_traceback_or_output(
    coco_dir, tmp_path, cli, capsys, files_in, case, edit, words
):
    path = coco_dir(_malformed(edit))
    out = tmp_path / "out"
    for target in ("x.json", "x_via.json"):
        assert cli(["convert", str(path), str(out / target)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") and words[-1] in captured.err
        assert "Traceback" not in captured.err and captured.out == ""
    assert files_in(out) == set()


@pytest.mark.parametrize("case, edit, words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_dataset_build_refuses_without_traceback_or_output(
    coco_dir, tmp_path, cli, capsys, files_in, case, edit, words
):
    path = coco_dir(_malformed(edit))
    out = tmp_path / "ds"
    assert cli(["dataset", "build", str(path), "-o", str(out), "-q"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and words[-1] in captured.err
    assert "Traceback" not in captured.err
    assert files_in(out) == set()


def test_real_command_line_prints_one_error_and_no_traceback(coco_dir, tmp_path, files_in):
    """The installed entry point (not only main()): exit 2, stderr one message."""
    path = coco_dir(_malformed(_list_image_id))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "napari_vertebra.cli", "convert", str(path), str(out / "o.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "is not an integer" in run.stderr
    assert "Traceback" not in run.stderr
    assert files_in(out) == set()


# --------------------------------------------------------------------------- repairs


def test_polygon_partly_outside_is_clipped_with_a_warning(coco_dir, tmp_path, cli, capsys):
    # L5 runs 6 px past the bottom and 4 px past the right edge
    overhang = [30, 40, 54, 40, 54, 66, 30, 66]
    path = coco_dir(_coco({3: overhang}))
    (im,) = read_coco(path)
    l5 = im.annotations[2]
    (p,) = l5.polygons
    assert p[:, 0].max() <= H - 0.5 and p[:, 1].max() <= W - 0.5  # inside now
    assert p[:, 0].min() == pytest.approx(39.5) and p[:, 1].min() == pytest.approx(29.5)
    # the same pixels as the polygon drawn past the edge (the raster clips anyway)
    xy = np.asarray(overhang, float).reshape(-1, 2)
    original = np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1)
    assert np.array_equal(rasterize([p], (H, W)), rasterize([original], (H, W)))
    assert check_polygon(p, (H, W)) == []
    (note,) = im.warnings
    assert "id 3" in note and "mip.png" in note and "L5" in note and "clipped" in note
    # convert: exit 0, the warning on stderr, the clipped polygon written
    out = tmp_path / "out" / "x.json"
    assert cli(["convert", str(path), str(out)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "clipped" in err and "L5" in err
    (back,) = read_coco(out)
    assert back.warnings == []  # already inside the image
    assert np.array_equal(rasterize(back.annotations[2].polygons, (H, W)), rasterize([p], (H, W)))
    # dataset build: the warning lands in dataset.json and on stderr
    ds = tmp_path / "ds"
    assert cli(["dataset", "build", str(path), "-o", str(ds), "-q", "--views-per-image", "1"]) == 0
    summary = json.loads((ds / "dataset.json").read_text(encoding="utf-8"))
    assert len(summary["warnings"]) == 1 and "clipped" in summary["warnings"][0]
    assert "clipped" in capsys.readouterr().err


def test_convert_api_warns_by_default(coco_dir, tmp_path):
    path = coco_dir(_coco({3: [30, 40, 54, 40, 54, 66, 30, 66]}))
    with pytest.warns(UserWarning, match="clipped"):
        convert(path, tmp_path / "o.json")
    seen: list[str] = []
    convert(path, tmp_path / "o2.json", warn=seen.append)
    assert len(seen) == 1 and "L5" in seen[0]


def test_touching_polygon_is_accepted_crossing_is_not(coco_dir):
    """A contour through a one-pixel neck retraces an edge: touching, fill unambiguous."""
    # two squares joined by a zero-width bridge along row 15 (x, y pairs)
    bridge = [5, 5, 15, 5, 15, 15, 25, 15, 25, 5, 35, 5]
    bridge += [35, 25, 25, 25, 25, 15, 15, 15, 15, 25, 5, 25]
    xy = np.asarray(bridge, float).reshape(-1, 2)
    rc = np.stack([xy[:, 1], xy[:, 0]], axis=1)
    assert check_polygon(rc) == ["polygon intersects itself"]  # strict: touches count
    assert check_polygon(rc, allow_touching=True) == []
    (im,) = read_coco(coco_dir(_coco({1: bridge})))
    assert im.warnings == [] and len(im.annotations) == 3


def test_write_path_refuses_bad_polygons_from_memory(tmp_path, files_in):
    """``write_coco`` (the widget export, labels-to-coco) checks the same rules."""
    img = np.zeros((H, W), np.float32)
    bad = {
        "intersects itself": [[5, 5], [25, 25], [5, 25], [25, 5]],
        "zero area": [[5, 5], [10, 10], [20, 20]],
        "entirely outside": [[70, 5], [70, 20], [80, 20]],
        "wrong image size": [[5, 5], [1e300, 5], [20, 20]],
        "non-finite": [[5, 5], [np.inf, 5], [20, 20]],
        "cover no pixel": [[5.1, 5.1], [5.1, 5.4], [5.4, 5.4]],
    }
    for words, poly in bad.items():
        im = AnnotatedImage("a.png", H, W, [VertebraAnnotation(14, [poly])], image=img)
        with pytest.raises(CocoFormatError, match=r"'a.png'\), annotation 1 \(L2\)") as e:
            write_coco([im], tmp_path / "out")
        assert words in str(e.value)
    assert files_in(tmp_path) == set()


def test_dataset_build_api_validates_in_memory_images(tmp_path, files_in, make_synthetic):
    im = make_synthetic("s", 1, 5)
    im.annotations[2] = VertebraAnnotation(3, [[[5, 5], [25, 25], [5, 25], [25, 5]]])
    with pytest.raises(ValueError, match=r"s.png: T3: polygon 0 intersects itself"):
        build_dataset([im], tmp_path / "ds", views_per_image=2, include_full=False)
    assert files_in(tmp_path) == set()


# --------------------------------------------------------------------------- VIA


def _via(points_x: list[float], points_y: list[float]) -> dict:
    def region(xs, ys, name):
        sa = {"name": "polygon", "all_points_x": xs, "all_points_y": ys}
        return {"shape_attributes": sa, "region_attributes": {"vertebra": name}}

    regions = [region([10, 40, 40, 10], [5, 5, 17, 17], "T12"), region(points_x, points_y, "L1")]
    entry = {
        "filename": "mip.png",
        "size": -1,
        "regions": regions,
        "file_attributes": {"height": H, "width": W},
    }
    return {"mip.png-1": entry}


@pytest.mark.parametrize(
    "xs, ys, words",
    [
        ([20, 32, 20, 32], [10, 30, 30, 10], "intersects itself"),
        ([20, 25, 30], [10, 20, 30], "zero area"),
        ([20, 30, 30, 20], [65, 65, 75, 75], "entirely outside"),
        ([20, 20, 30], [10, 1e300, 30], "wrong image size"),
        ([20, "x", 30], [10, 20, 30], "not numbers"),
    ],
)
def test_via_reader_and_convert_refuse(tmp_path, cli, capsys, files_in, xs, ys, words):
    path = tmp_path / "in" / "via.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_via(xs, ys)), encoding="utf-8")
    with pytest.raises(ViaFormatError) as e:
        read_via(path)
    msg = str(e.value)
    assert "image 'mip.png' region 1 (L1)" in msg and words in msg
    out = tmp_path / "out"
    assert cli(["convert", str(path), str(out / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert files_in(out) == set()


def test_via_nan_and_bad_sizes_are_refused(tmp_path):
    path = tmp_path / "via.json"
    path.write_text(json.dumps(_via([20, float("nan"), 30], [10, 20, 30])), encoding="utf-8")
    with pytest.raises(ViaFormatError, match="region 1 \\(L1\\): polygon has non-finite"):
        read_via(path)
    for h in (0, -4, 10**9, True):
        data = _via([20, 30, 30], [10, 10, 30])
        data["mip.png-1"]["file_attributes"]["height"] = h
        path.write_text(json.dumps(data), encoding="utf-8")
        with pytest.raises(ViaFormatError, match=r"image 'mip\.png'"):
            read_via(path)


def test_via_partly_outside_is_clipped(tmp_path):
    path = tmp_path / "via.json"
    path.write_text(json.dumps(_via([20, 56, 56, 20], [30, 30, 40, 40])), encoding="utf-8")
    (im,) = read_via(path)
    (note,) = im.warnings
    assert "region 1 (L1)" in note and "clipped" in note
    assert im.annotations[1].polygons[0][:, 1].max() == pytest.approx(W - 0.5)


@pytest.mark.parametrize(
    "brk, words",
    [
        (lambda e: e.update(file_attributes="oops"), "image size unknown"),
        (lambda e: e["regions"][1].update(region_attributes=["vertebra"]), "no region attr"),
        (lambda e: e["regions"][1].update(shape_attributes=["polygon"]), "not supported"),
        (
            lambda e: e["regions"][1]["shape_attributes"].update(all_points_x=[[1], [2], [3]]),
            "not numbers",
        ),
    ],
)
def test_malformed_via_structures_give_errors_not_tracebacks(tmp_path, brk, words):
    data = _via([20, 30, 30], [10, 10, 30])
    brk(data["mip.png-1"])
    path = tmp_path / "v.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ViaFormatError, match=words):
        read_via(path)


# --------------------------------------------------------------------------- geometry


def test_validate_polygon_rules():
    sq = np.array([[10, 10], [10, 20], [20, 20], [20, 10]], float)
    kept, errs, notes = validate_polygon(sq, (H, W))
    assert np.array_equal(kept, sq) and errs == [] and notes == []
    # half a pixel past the edge is still inside (pixel centres 0..n-1)
    edge = np.array([[-0.5, -0.5], [-0.5, W - 0.5], [H - 0.5, W - 0.5]])
    assert validate_polygon(edge, (H, W))[1:] == ([], [])
    # an overhang beyond half the image is refused, below it is clipped
    assert "wrong image size" in validate_polygon(sq + np.array([100, 0]), (H, W))[1][0]
    assert "entirely outside" in validate_polygon(sq + np.array([60, 0]), (H, W))[1][0]
    kept, errs, notes = validate_polygon(sq + np.array([45, 0]), (H, W))
    assert errs == [] and len(notes) == 1 and kept[:, 0].max() == H - 0.5


def test_clip_to_image_keeps_the_pixels_inside():
    rng = np.random.default_rng(3)
    for _ in range(40):
        # star-shaped (simple) polygons around a centre near an edge
        t = np.sort(rng.uniform(0, 2 * np.pi, 9))
        r = rng.uniform(5, 20, 9)
        c = rng.uniform([0, 0], [H, W])
        p = np.stack([c[0] + r * np.sin(t), c[1] + r * np.cos(t)], 1)
        q = clip_to_image(p, (H, W))
        want = rasterize([p], (H, W))
        if len(q) < 3:
            assert not want.any()
            continue
        assert q[:, 0].min() >= -0.5 and q[:, 0].max() <= H - 0.5
        assert q[:, 1].min() >= -0.5 and q[:, 1].max() <= W - 0.5
        assert check_polygon(q, (H, W), allow_touching=True) == []
        # same pixels, up to pixel centres lying on the clip line
        assert dice(rasterize([q], (H, W)), want) >= 0.98


def test_mask_to_polygons_never_returns_a_crossing_outline(monkeypatch):
    """If the simplification ever crossed itself, the traced contour is used."""
    from napari_vertebra.annotation import polygons as poly_mod

    mask = np.zeros((30, 30), bool)
    mask[5:25, 8:22] = True

    def crossing(ring, tolerance):  # a simplification gone wrong: a bowtie
        return np.array([[5, 8], [25, 22], [5, 22], [25, 8]], float) - 0.5

    monkeypatch.setattr(poly_mod, "approximate_polygon", crossing)
    (p,) = mask_to_polygons(mask)
    assert check_polygon(p, mask.shape, allow_touching=True) == []
    assert np.array_equal(rasterize([p], mask.shape), mask)


# --------------------------------------------------------------------------- real data


REAL_SAMPLES = [
    pytest.param(
        "lumbar",
        "lumbar_ct_path",
        "lumbar_labels_path",
        "totalsegmentator",
        id="lumbar",
        marks=pytest.mark.slow,  # about 20 s
    ),
    pytest.param("tptbox", "tptbox_ct_path", "tptbox_labels_path", "verse", id="tptbox"),
    pytest.param("dicom", "dicom_dir", "dicom_labels_path", "totalsegmentator", id="dicom"),
]


@pytest.mark.parametrize("name, ct_fx, lab_fx, conv", REAL_SAMPLES)
def test_labels_from_3d_on_the_real_samples_pass_validation(
    request, tmp_path, name, ct_fx, lab_fx, conv
):
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.annotation.partial import partial_views
    from napari_vertebra.core import read_ct, read_labels, run_pipeline

    ct = read_ct(request.getfixturevalue(ct_fx))
    labels = read_labels(request.getfixturevalue(lab_fx), like=ct)
    result = run_pipeline(ct, labels=labels)
    for min_visible in (0.0, 0.5):  # 0.0 keeps the thin, cut-off vertebrae too
        im = labels_to_annotations(
            ct, labels, conv, result=result, min_visible=min_visible, scan=name
        )
        assert im.annotations
        # partial views (slivers cut at the window edges) pass too
        views = partial_views(im, 20, 0, min_vertebrae=1)
        assert views
        for v in [im, *views]:
            for a in v.annotations:
                for p in a.polygons:
                    kept, errs, notes = validate_polygon(p, (v.height, v.width))
                    assert (errs, notes) == ([], []), (name, v.file_name, a.name)
                    assert np.array_equal(kept, p)  # unchanged
        # written and read back: no error, no warning, the same classes
        back = read_coco(write_coco([im, *views], tmp_path / f"{name}{min_visible}"))
        assert all(b.warnings == [] for b in back)
        assert [a.name for a in back[0].annotations] == [a.name for a in im.annotations]


def test_rle_of_another_size_is_refused_before_decoding(coco_dir):
    """A huge RLE size would allocate gigabytes when decoded: checked against the image
    entry first."""
    data = _coco()
    data["annotations"][1]["segmentation"] = {"size": [100_000, 100_000], "counts": [10**10]}
    with pytest.raises(CocoFormatError, match=r"id 2, image 7 'mip.png', L1\): RLE size"):
        read_coco(coco_dir(data))
