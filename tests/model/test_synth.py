"""Synthetic spine MIPs (pure numpy) and the ``synth`` command."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.coco import read_coco
from napari_vertebra.annotation.polygons import polygon_centroid, rasterize
from napari_vertebra.cli import main as cli_main
from napari_vertebra.model.spine import BODY_HEIGHT_MM
from napari_vertebra.synth import clip_polygon_rows, synth_spine


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
    areas = [rasterize(a.polygons[0], image.shape).sum() for a in anns]
    assert areas[-1] > 1.5 * areas[0]
    body = rasterize(anns[8].polygons[0], image.shape)
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


# ----------------------------------------------------------------------------- whole outlines


def test_whole_outline_adds_the_posterior_elements_to_the_same_image():
    body_img, body = synth_spine(np.random.default_rng(7), (192, 96))
    whole_img, whole = synth_spine(np.random.default_rng(7), (192, 96), outline="whole")
    assert np.array_equal(body_img, whole_img)  # the outline does not change the pixels
    assert [a.class_id for a in whole] == [a.class_id for a in body] == list(range(1, 18))
    for b, w in zip(body, whole, strict=True):
        mb = rasterize(b.polygons[0], body_img.shape)
        mw = rasterize(w.polygons[0], body_img.shape)
        assert (mb & mw).sum() >= 0.9 * mb.sum()  # the body is inside the whole outline
        assert mw.sum() > 1.3 * mb.sum()
        # the posterior elements lie behind the body (larger column = posterior)
        assert w.polygons[0][:, 1].max() > b.polygons[0][:, 1].max() + 3
    with pytest.raises(ValueError, match="outline"):
        synth_spine(np.random.default_rng(0), (96, 48), outline="bodies")


# ----------------------------------------------------------------------------- anatomy at scale

from napari_vertebra.core.labels import EXTENDED, LEVEL_IDS, PAPER  # noqa: E402
from napari_vertebra.synth import (  # noqa: E402
    LUMBAR_COUNT_RATES,
    THORACIC_COUNT_RATES,
    _draw_count,
    synth_column,
    synth_column_dataset,
    synth_views,
    write_synth_columns,
)

PX = 2.0  # mm per pixel in these tests: small images (about 300 x 70 px)


def _rows_mm(image) -> list[float]:
    return [polygon_centroid(a.polygons[0])[0] * PX for a in image.annotations]


@pytest.mark.parametrize(
    ("thoracic", "lumbar", "paper_names", "extra"),
    [
        (12, 5, [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)], []),
        (13, 5, [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)], ["T13"]),
        (11, 6, [f"T{i}" for i in range(1, 12)] + [f"L{i}" for i in range(1, 6)], ["L6"]),
    ],
)
def test_columns_follow_the_class_set_and_the_variant(thoracic, lumbar, paper_names, extra):
    paper = synth_column(np.random.default_rng(4), "paper", PX, thoracic=thoracic, lumbar=lumbar)
    ext = synth_column(np.random.default_rng(4), EXTENDED, PX, thoracic=thoracic, lumbar=lumbar)
    assert np.array_equal(paper.image, ext.image)  # the class set changes labels, not pixels
    assert [a.name for a in paper.annotations] == paper_names
    names = [a.name for a in ext.annotations]
    assert names[0] == "C7" and names[-1] == "S1"
    assert set(names) == {"C7", "S1", *paper_names, *extra}
    assert [EXTENDED.rank(a.class_id) for a in ext.annotations] == sorted(
        EXTENDED.rank(a.class_id) for a in ext.annotations
    )
    for im in (paper, ext):
        assert np.all(np.diff(_rows_mm(im)) > 0)  # top to bottom
        assert im.meta["thoracic"] == thoracic and im.meta["lumbar"] == lumbar
    # the whole vertebra is outlined: the outline reaches behind the body
    assert ext.meta["outline"] == "whole"


def test_columns_have_a_physical_scale():
    for seed in range(3):
        col = synth_column(np.random.default_rng(seed), "paper", PX, thoracic=12, lumbar=5)
        s = col.meta["patient_scale"]
        assert 0.9 <= s <= 1.1
        assert 450 <= col.height * PX <= 750  # C5..sacrum of an adult, in mm
        assert col.width * PX == pytest.approx(140, abs=PX)
        gaps = np.diff(_rows_mm(col))
        # typical adult centroid spacing: about 20 mm at T1/T2, 33..42 mm at L4/L5
        assert 14 <= gaps[0] <= 28 and 28 <= gaps[-1] <= 50
        assert gaps[-3:].mean() > 1.4 * gaps[:3].mean()


def test_vertebrae_keep_their_pixel_height_in_a_partial_view():
    col = synth_column(np.random.default_rng(5), "extended", PX)
    full = {a.name: a.polygons[0] for a in col.annotations}
    views = synth_views(col, 6, np.random.default_rng(0))
    assert views
    for v in views:
        r0 = v.meta["rows"][0]
        for a in v.annotations:
            p, q = a.polygons[0], full[a.name]
            if q[:, 0].min() >= r0 and q[:, 0].max() <= v.meta["rows"][1] - 1:
                assert np.ptp(p[:, 0]) == pytest.approx(np.ptp(q[:, 0]))
                assert p[:, 0].min() + r0 == pytest.approx(q[:, 0].min())


@pytest.mark.parametrize("cs", [PAPER, EXTENDED], ids=lambda c: c.name)
def test_views_hold_4_to_17_consecutive_vertebrae(cs):
    rng = np.random.default_rng(8)
    n_views = 0
    for k in range(4):
        t, lum = [(12, 5), (13, 5), (11, 5), (12, 6)][k]
        col = synth_column(rng, cs, PX, thoracic=t, lumbar=lum)
        order = [a.name for a in col.annotations]
        for v in synth_views(col, 5, rng):
            n_views += 1
            countable = [lv for lv in v.meta["visible"] if lv in LEVEL_IDS]  # C7..sacrum
            assert 4 <= len(countable) <= 17
            names = [a.name for a in v.annotations]
            assert names and v.meta["levels"] == names
            i = order.index(names[0])
            assert names == order[i : i + len(names)]  # consecutive in this spine
            if cs is EXTENDED:  # every vertebra in view is a class
                assert abs(len(names) - len(countable)) <= 1
            assert v.image.shape == (v.height, v.width)
            for a in v.annotations:  # outlines of clipped masks run on pixel edges
                assert a.polygons[0][:, 0].min() >= -0.5 - 1e-6
                assert a.polygons[0][:, 0].max() <= v.height - 0.5 + 1e-6
            lm = v.meta["landmarks"]
            assert ("S1" in lm) == ("S1" in v.meta["visible"])
            assert ("C7" in lm) == ("C7" in v.meta["visible"])
    assert n_views >= 15


def test_both_class_sets_get_the_same_views():
    a = synth_column_dataset(2, 4, "paper", PX, seed=3)
    b = synth_column_dataset(2, 4, "extended", PX, seed=3)
    assert [im.file_name for im in a] == [im.file_name for im in b]
    assert sum(im.meta.get("view") == "full" for im in a) == 2
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and x.scan == y.scan
        assert x.meta["landmarks"] == y.meta["landmarks"]
        assert x.meta["visible"] == y.meta["visible"]
        assert set(x.meta["levels"]) <= set(y.meta["levels"])
        assert set(y.meta["levels"]) - set(x.meta["levels"]) <= {"C7", "T13", "L6", "S1"}
        if x.meta.get("view") == "full":
            assert x.meta["landmarks"] == ["C7", "S1", "TL"]


def test_variant_frequencies():
    rng = np.random.default_rng(0)
    n = 20000
    t = np.array([_draw_count(rng, THORACIC_COUNT_RATES, "t") for _ in range(n)])
    lum = np.array([_draw_count(rng, LUMBAR_COUNT_RATES, "l") for _ in range(n)])
    for k, p in THORACIC_COUNT_RATES.items():
        assert abs((t == k).mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3
    for k, p in LUMBAR_COUNT_RATES.items():
        assert abs((lum == k).mean() - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3
    col = synth_column(rng, "extended", PX, thoracic_rates={13: 1.0}, lumbar_rates={6: 1.0})
    assert {"T13", "L6"} <= {a.name for a in col.annotations}


def test_decoder_names_synthetic_views_from_peaked_evidence():
    from napari_vertebra.model.levels import decode_levels

    # the decoder's size prior fits the generator's anatomy (variants: test_levels.py)
    rng = np.random.default_rng(2)
    col = synth_column(rng, "extended", PX, thoracic=12, lumbar=5)
    for v in synth_views(col, 6, rng):
        truth = [a.name for a in v.annotations]
        p = np.full((len(truth), len(EXTENDED.ids)), 0.4 / (len(EXTENDED.ids) - 1))
        for i, n in enumerate(truth):
            p[i, EXTENDED.class_id(n) - 1] = 0.6
        rows = np.array([polygon_centroid(a.polygons[0]) for a in v.annotations]) * PX
        d = decode_levels(p, EXTENDED, centroids_mm=rows)
        assert list(d.levels) == truth and d.confidence > 0.9


def test_write_synth_columns(tmp_path):
    counts = write_synth_columns(tmp_path, 3, views_per_column=2, pixel_mm=3.0, seed=1)
    total = 0
    for split in ("train", "val", "test"):
        images = read_coco(tmp_path / split / "annotations.json")
        assert len(images) == counts[split] >= 1
        assert len({im.scan for im in images}) == 1  # one column per split here
        assert any(im.meta.get("view") == "full" for im in images)
        total += len(images)
    assert total == sum(counts.values())
    write_synth_columns(tmp_path / "ext", 3, views_per_column=1, class_set="extended", seed=1)
    ext = read_coco(tmp_path / "ext" / "train" / "annotations.json")
    assert {a.name for im in ext for a in im.annotations} >= {"C7", "S1"}


def test_column_errors():
    with pytest.raises(ValueError, match="pixel_mm"):
        synth_column(np.random.default_rng(0), pixel_mm=0)
    with pytest.raises(ValueError, match="no spine variant"):
        synth_column(np.random.default_rng(0), thoracic=10)
    with pytest.raises(ValueError, match="unknown class set"):
        synth_column(np.random.default_rng(0), "cervical")


# ----------------------------------------------------------------------------- the command


def test_synth_command_writes_columns_at_1_mm_with_whole_outlines(tmp_path, capsys):
    """``napari-vertebra synth`` (the README's cluster example) writes whole columns at
    1 mm per pixel with whole-vertebra outlines and the spacing recorded (issue 19: 256
    x 128 px images, about 1.8 mm per pixel, no spacing)."""
    from napari_vertebra.model.evaluate import image_spacing

    assert cli_main(["synth", "-o", str(tmp_path), "--n", "3", "--views-per-image", "1"]) == 0
    assert "1 mm per pixel" in capsys.readouterr().out
    splits = [tmp_path / s / "annotations.json" for s in ("train", "val", "test")]
    images = [im for p in splits for im in read_coco(p, load_images=True)]
    assert len(images) == 6  # 3 columns, each with one partial view
    for im in images:
        assert image_spacing({"meta": im.meta}, default=None) == (1.0, 1.0)
        assert im.meta["outline"] == "whole" and im.image.shape == (im.height, im.width)
    full = [im for im in images if im.meta.get("view") == "full"]
    assert len(full) == 3
    for im in full:
        assert 450 <= im.height <= 800 and im.width == 140  # C5..sacrum at 1 mm: ~600 mm
        # each vertebra at its physical size: its outline's rows are its body height
        # (typical adult, times the patient scale) in mm, or more: the posterior elements
        # (a thoracic spinous process slopes down a body height)
        for a in im.annotations:
            rows = np.concatenate(a.polygons)[:, 0]
            body = BODY_HEIGHT_MM[a.name] * im.meta["patient_scale"]
            assert 0.8 * body <= rows.max() - rows.min() <= 2.5 * body, a.name


def test_synth_command_scaled_images_record_no_spacing(tmp_path):
    from napari_vertebra.model.evaluate import image_spacing

    assert cli_main(["synth", "-o", str(tmp_path), "--n", "3", "--size", "128", "64"]) == 0
    for im in read_coco(tmp_path / "train" / "annotations.json"):
        assert image_spacing({"meta": im.meta}, default=None) is None
