"""Partial views, scan-wise splits and the dataset builder."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.coco import read_coco, write_coco
from napari_vertebra.annotation.dataset import SPLITS, build_dataset, split_scans
from napari_vertebra.annotation.partial import crop_view, partial_views
from napari_vertebra.annotation.polygons import dice, rasterize
from napari_vertebra.annotation.types import AnnotatedImage, VertebraAnnotation


def test_crop_view_min_visible():
    box = np.array([[10, 5], [10, 25], [29, 25], [29, 5]], float)  # rows 10..29: 20 rows
    im = AnnotatedImage("a.png", 60, 30, [VertebraAnnotation(3, [box])], np.ones((60, 30)))
    kept = crop_view(im, 18, 60, min_visible=0.5)  # 12 of 20 rows visible
    (a,) = kept.annotations
    assert kept.height == 42 and kept.image.shape == (42, 30)
    assert np.array_equal(rasterize(a.polygons, (42, 30)), rasterize([box], (60, 30))[18:])
    assert crop_view(im, 22, 60, min_visible=0.5).annotations == []  # 8 of 20 rows
    assert crop_view(im, 22, 60, min_visible=0.3).annotations[0].class_id == 3
    inside = crop_view(im, 5, 40)
    np.testing.assert_allclose(inside.annotations[0].polygons[0], box - [5, 0])
    assert inside.meta["rows"] == [5, 40] and inside.meta["source"] == "a.png"


def test_partial_views_rules(make_synthetic):
    im = make_synthetic("full", 1, 17)
    views = partial_views(im, 12, seed=3, min_visible=0.5)
    assert len(views) >= 10
    assert len({tuple(v.meta["rows"]) for v in views}) == len(views)
    for v in views:
        ids = [a.class_id for a in v.annotations]
        assert 4 <= len(ids) <= 17 and ids == list(range(ids[0], ids[0] + len(ids)))
        r0, r1 = v.meta["rows"]
        for a in v.annotations:
            src = next(s for s in im.annotations if s.class_id == a.class_id)
            full = rasterize(src.polygons, (im.height, im.width))
            visible = full[r0:r1].sum() / full.sum()
            assert visible >= 0.5
            assert dice(rasterize(a.polygons, (v.height, v.width)), full[r0:r1]) >= 0.95
    lengths = {len(v.annotations) for v in views}
    assert len(lengths) > 2  # random run lengths
    again = partial_views(im, 12, seed=3, min_visible=0.5)
    assert [v.meta["rows"] for v in again] == [v.meta["rows"] for v in views]
    assert partial_views(make_synthetic("short", 1, 3), 5) == []  # fewer than 4


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 30])
def test_split_scans(n):
    scans = [f"s{i}" for i in range(n)]
    split = split_scans(scans + scans[:2], (0.7, 0.15, 0.15), seed=1)
    got = [s for name in SPLITS for s in split[name]]
    assert sorted(got) == sorted(scans)  # each scan once, duplicates merged
    sizes = [len(split[name]) for name in SPLITS]
    if n >= 3:
        assert min(sizes) >= 1
    else:
        assert sizes == [1, n - 1, 0]
    if n == 30:
        assert sizes == [21, 5, 4] or sizes == [21, 4, 5]
    assert split == split_scans(scans, (0.7, 0.15, 0.15), seed=1)


def _check_split_dir(out):
    where: dict[str, str] = {}
    counts = {}
    for name in SPLITS:
        images = read_coco(out / name / "annotations.json", load_images=True)
        counts[name] = len(images)
        for im in images:
            assert im.scan is not None
            assert where.setdefault(im.scan, name) == name, f"{im.scan} in two splits"
            assert im.image.shape == (im.height, im.width)
            ids = sorted(a.class_id for a in im.annotations)
            if im.meta.get("view") == "partial":
                assert 4 <= len(ids) <= 17 and ids == list(range(ids[0], ids[0] + len(ids)))
            assert len(set(ids)) == len(ids)
            for a in im.annotations:
                for p in a.polygons:
                    assert p[:, 0].min() >= -0.5 and p[:, 0].max() <= im.height - 0.5
                    assert p[:, 1].min() >= -0.5 and p[:, 1].max() <= im.width - 0.5
    return where, counts


def test_build_dataset_real_and_synthetic(tmp_path, lumbar_annotated, make_synthetic):
    syn = [make_synthetic(f"syn{k}", 1 + k, 17 - 2 * k, seed=k) for k in range(5)]
    # the same scan twice (e.g. two series of one patient) must stay in one split
    twin = make_synthetic("syn0", 5, 8, seed=9)
    twin.file_name = "syn0_other.png"
    calls = []
    paths = build_dataset(
        [lumbar_annotated, *syn, twin],
        tmp_path / "ds",
        views_per_image=4,
        seed=0,
        progress=lambda f, m: calls.append(f),
    )
    assert set(paths) == set(SPLITS)
    where, counts = _check_split_dir(tmp_path / "ds")
    assert set(where) == {"lumbar", *(f"syn{k}" for k in range(5))}
    assert all(counts[n] > 0 for n in SPLITS)
    assert calls and calls[-1] == 1.0 and all(0 <= f <= 1 for f in calls)


def test_dataset_command(tmp_path, make_synthetic, cli, capsys, files_in):
    a = write_coco([make_synthetic("p1", 1, 17), make_synthetic("p2", 6, 12)], tmp_path / "a")
    b = write_coco([make_synthetic("p3", 3, 9)], tmp_path / "b")
    out = tmp_path / "ds"
    argv = ["dataset", "build", str(a), str(b), "-o", str(out), "--views-per-image", "3", "-q"]
    assert cli([*argv, "--no-full"]) == 0
    where, counts = _check_split_dir(out)
    assert sorted(where) == ["p1", "p2", "p3"] and all(counts.values())
    assert "train:" in capsys.readouterr().out
    # a broken input: error, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": [], "categories": [}', encoding="utf-8")
    assert cli(["dataset", "build", str(bad), "-o", str(tmp_path / "ds2")]) == 2
    assert files_in(tmp_path / "ds2") == set()


def test_dataset_failure_while_writing_leaves_nothing(
    tmp_path, make_synthetic, monkeypatch, files_in
):
    from napari_vertebra.annotation import coco

    images = [make_synthetic(f"q{k}", 1, 8, seed=k) for k in range(4)]
    real, calls = coco.png_bytes, []

    def flaky(a):
        calls.append(1)
        if len(calls) == 7:
            raise OSError("disk full")
        return real(a)

    monkeypatch.setattr(coco, "png_bytes", flaky)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(images, tmp_path / "ds", views_per_image=2)
    assert files_in(tmp_path) == set()
