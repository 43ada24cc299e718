"""``evaluate --predictions``: the field's metrics on real MIPs made from 3D labels.

The split holds the MIPs of the lumbar sample (T12..L5, TotalSegmentator labels) and the
TPTBox crop (L2..L4, VerSe labels), annotated by projecting their 3D label maps. The
predictions files are COCO results (RLE masks, pycocotools ``mask.encode``) derived from
the ground truth: the expected identification rates follow from the centroids.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_vertebra.annotation.coco import read_coco, write_coco
from napari_vertebra.annotation.polygons import rasterize
from napari_vertebra.cli import main as cli_main

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def split(
    tmp_path_factory, lumbar_ct_path, lumbar_labels_path, tptbox_ct_path, tptbox_labels_path
):
    """A COCO split folder (annotations.json + PNGs, as ``dataset build`` writes it)."""
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.core import read_ct, read_labels

    images = []
    for ct_p, lab_p, conv, scan in [
        (lumbar_ct_path, lumbar_labels_path, "totalsegmentator", "lumbar"),
        (tptbox_ct_path, tptbox_labels_path, "verse", "tptbox"),
    ]:
        ct = read_ct(ct_p)
        im = labels_to_annotations(ct, read_labels(lab_p, like=ct), conv, scan=scan)
        im.file_name = f"images/{scan}.png"
        images.append(im)
    out = tmp_path_factory.mktemp("split") / "test"
    write_coco(images, out)
    return out


def truth(split_dir) -> list[tuple[int, list[int], np.ndarray]]:
    """[(image id, class ids, masks (N, H, W))] of the split, read back from disk."""
    data = json.loads((split_dir / "annotations.json").read_text(encoding="utf-8"))
    out = []
    for entry, im in zip(data["images"], read_coco(split_dir / "annotations.json"), strict=True):
        shape = (im.height, im.width)
        masks = np.stack([rasterize(a.polygons, shape) for a in im.annotations])
        out.append((entry["id"], [a.class_id for a in im.annotations], masks))
    return out


def centroid(m: np.ndarray) -> np.ndarray:
    r, c = np.nonzero(m)
    return np.array([r.mean(), c.mean()])


def result(image_id: int, cls: int, mask: np.ndarray, score: float = 0.95) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"image_id": image_id, "category_id": cls, "segmentation": rle, "score": score}


def block(shape: tuple[int, int], centre: np.ndarray, half: int = 2) -> np.ndarray:
    """A (2 half + 1)^2 px square mask centred on the integer pixel ``centre``."""
    m = np.zeros(shape, bool)
    r, c = (int(v) for v in centre)
    assert half <= r < shape[0] - half and half <= c < shape[1] - half, "inside the image"
    m[r - half : r + half + 1, c - half : c + half + 1] = True
    return m


def evaluate(tmp_path, split_dir, results: list[dict], *extra: str) -> dict:
    pred = tmp_path / "results.json"
    pred.write_text(json.dumps(results), encoding="utf-8")
    out = tmp_path / "out"
    args = ["evaluate", "--predictions", str(pred), "--data", str(split_dir), "-o", str(out)]
    assert cli_main([*args, *extra]) == 0
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    for key in ("id_rate", "id_rate_per_image", "mean_dice", "localisation_mm", "mask_mAP",
                "box_mAP", "id_rate_pooled", "dice_per_class"):  # fmt: skip
        assert key in metrics, key
    assert (out / "dice_per_class.png").is_file()
    return metrics


def test_ground_truth_as_predictions(tmp_path, split):
    gt = truth(split)
    assert [len(c) for _, c, _ in gt] == [6, 3]  # T12..L5, L2..L4
    results = [result(i, c, m) for i, cls, ms in gt for c, m in zip(cls, ms, strict=True)]
    m = evaluate(tmp_path, split, results)
    assert m["id_rate"] == 1.0 and m["id_rate_pooled"] == 1.0
    assert m["id_rate_per_image"] == {"images/lumbar.png": 1.0, "images/tptbox.png": 1.0}
    assert m["localisation_mm"] == pytest.approx(0.0, abs=1e-9)
    assert m["mean_dice"] == pytest.approx(1.0)
    assert m["dice_per_class"]["L3"] == pytest.approx(1.0) and m["dice_per_class"]["T1"] is None
    assert m["mask_mAP"] == pytest.approx(1.0) and m["box_mAP"] == pytest.approx(1.0)
    assert m["n_true"] == m["n_identified"] == 9


def test_the_level_confidence_is_checked_against_the_truth(tmp_path, split, capsys):
    """Is "level confidence 0.97" honest? evaluate says how often a naming called certain
    (>= 0.9) is right, and warns when those images are identified below 0.9."""
    gt = truth(split)

    def named(shift_second: bool, conf: tuple[float, float]) -> list[dict]:
        out = []
        for k, (i, cls, ms) in enumerate(gt):
            for c, m in zip(cls, ms, strict=True):
                r = result(i, c - 1 if (k == 1 and shift_second) else c, m)
                out.append({**r, "level_confidence": conf[k]})
        return out

    # the second image named one level off, and called certain all the same
    m = evaluate(tmp_path, split, named(True, (0.95, 0.97)))
    assert m["level_certain_share"] == 1.0 and m["level_certain_id_rate"] == 0.5
    assert m["level_uncertain_id_rate"] is None
    assert [p["level_confidence"] for p in m["per_image"]] == [0.95, 0.97]
    out = capsys.readouterr().out
    assert "100% of images called certain (>= 0.9), identified at 0.500" in out
    assert "overstates" in out
    # the same off-by-one naming, now with a low confidence: honest, no warning
    m = evaluate(tmp_path, split, named(True, (0.95, 0.40)))
    assert m["level_certain_share"] == 0.5 and m["level_certain_id_rate"] == 1.0
    assert m["level_uncertain_id_rate"] == 0.0
    assert "overstates" not in capsys.readouterr().out
    # results without a level confidence (another tool's): no such figures
    plain = [{k: v for k, v in r.items() if k != "level_confidence"} for r in named(False, (1, 1))]
    assert "level_certain_share" not in evaluate(tmp_path, split, plain)


def test_every_class_shifted_by_one_level(tmp_path, split):
    gt = truth(split)
    results = [result(i, c - 1, m) for i, cls, ms in gt for c, m in zip(cls, ms, strict=True)]
    m = evaluate(tmp_path, split, results)
    assert m["id_rate"] == 0.0 and m["id_rate_pooled"] == 0.0
    assert m["localisation_mm"] is None
    assert m["n_neighbour_confusions"] == 9  # each prediction lies on its true neighbour
    assert (
        m["mean_dice"] < 0.15
    )  # the labelled masks sit on the neighbours (MIPs overlap a little)


def test_every_centroid_moved_25_mm(tmp_path, split):
    gt = truth(split)
    results, moved = [], []
    for i, cls, ms in gt:
        shape = ms.shape[1:]
        for c, mask in zip(cls, ms, strict=True):
            g = centroid(mask)
            # 25 mm (1 mm px) in the first direction that stays inside the image
            for u in ([1, 0], [-1, 0], [0, 1], [0, -1], [0.6, 0.8], [-0.6, -0.8]):
                target = np.round(g + 25 * np.array(u))
                if 3 <= target[0] < shape[0] - 3 and 3 <= target[1] < shape[1] - 3:
                    break
            b = block(shape, target)
            moved.append(np.hypot(*(centroid(b) - g)))
            results.append(result(i, c, b))
    assert min(moved) > 24.0  # rounding moves the centroid by at most 0.71 px
    m = evaluate(tmp_path, split, results)
    assert m["id_rate"] == 0.0 and m["id_rate_pooled"] == 0.0


def test_copies_under_absent_levels_do_not_steal(tmp_path, split):
    gt = truth(split)
    results = []
    for i, cls, ms in gt:
        absent = [c for c in range(1, 18) if c not in cls]
        for k, (c, mask) in enumerate(zip(cls, ms, strict=True)):
            results.append(result(i, c, mask, score=0.9))
            # the copy scores higher than the original
            results.append(result(i, absent[k], mask, score=0.99))
    m = evaluate(tmp_path, split, results)
    assert m["id_rate"] == 1.0 and m["id_rate_pooled"] == 1.0
    assert m["mean_dice"] == pytest.approx(1.0)


def test_moved_less_than_half_way_to_the_neighbour(tmp_path, split):
    gt = truth(split)
    results, expected = [], []
    for i, cls, ms in gt:
        shape = ms.shape[1:]
        cen = np.array([centroid(m) for m in ms])
        pred = []
        for k, c in enumerate(cls):
            d = np.hypot(*(cen - cen[k]).T)
            d[k] = np.inf
            nb = int(np.argmin(d))
            # towards the nearest neighbour, by just under half their distance (and 20 mm)
            step = min(d[nb] / 2, 20.0) - 1.0
            target = np.round(cen[k] + step * (cen[nb] - cen[k]) / d[nb])
            b = block(shape, target)
            pred.append(centroid(b))
            results.append(result(i, c, b))
        # expected from the centroids: within 20 mm and closest to its own vertebra
        pred = np.array(pred)
        for k in range(len(cls)):
            dist = np.hypot(*(cen - pred[k]).T)
            expected.append(dist[k] <= 20.0 and np.argmin(dist) == k)
    assert all(expected)
    m = evaluate(tmp_path, split, results)
    assert m["id_rate"] == 1.0 and m["id_rate_pooled"] == 1.0
    assert 5.0 < m["localisation_mm"] < 20.0


def test_spacing_of_the_split_is_used(tmp_path, split):
    """A split whose images say 2 mm pixels: a 12 px offset is 24 mm, not identified."""
    data = json.loads((split / "annotations.json").read_text(encoding="utf-8"))
    gt = truth(split)
    results = []
    for i, cls, ms in gt:
        for c, mask in zip(cls, ms, strict=True):
            results.append(
                result(i, c, block(mask.shape, np.round(centroid(mask)) + np.array([0, 12])))
            )
    assert evaluate(tmp_path, split, results)["id_rate"] == 1.0
    for e in data["images"]:
        e.setdefault("meta", {})["spacing_mm"] = 2.0
    other = tmp_path / "split2mm"
    other.mkdir()
    (other / "annotations.json").write_text(json.dumps(data), encoding="utf-8")
    m = evaluate(tmp_path, other, results)
    assert m["id_rate"] == 0.0
    assert m["per_image"][0]["spacing_mm"] == [2.0, 2.0]


def test_threshold_mAP_and_file_name_matching(tmp_path, split):
    """``--min-score`` gives separately named mAPs; our ``predict`` output (file_name)
    is matched by file name even with other image ids."""
    gt = truth(split)
    results = []
    for i, cls, ms in gt:
        for c, mask in zip(cls, ms, strict=True):
            r = result(99 + i, c, mask)  # ids as `predict` numbers its inputs
            r["file_name"] = str(split / ("images/lumbar.png" if i == 1 else "images/tptbox.png"))
            results.append(r)
            results.append({**result(99 + i, c, mask, 0.2), "file_name": r["file_name"]})
    m = evaluate(tmp_path, split, results, "--min-score", "0.5")
    assert m["id_rate"] == 1.0
    assert "mask_mAP_at_threshold" in m and "box_mAP_at_threshold" in m
    assert m["warnings"] and "file_name" in m["warnings"][0]


def test_bad_inputs_are_clear_errors(tmp_path, split, capsys):
    out = tmp_path / "out"
    gt = truth(split)
    good = [result(gt[0][0], gt[0][1][0], gt[0][2][0])]
    cases = {
        "unknown_image": ([{**good[0], "image_id": 77}], "image_id 77"),
        "no_segmentation": (
            [{k: v for k, v in good[0].items() if k != "segmentation"}],
            "missing 'segmentation'",
        ),
        "not_a_list": ({"a": 1}, "not COCO results"),
        "bad_category": ([{**good[0], "category_id": 40}], "category_id 40"),
        "list_category": ([{**good[0], "category_id": [13]}], "category_id [13]"),
        "text_score": ([{**good[0], "score": "high"}], "score 'high'"),
        "wrong_size": ([result(gt[0][0], 13, np.ones((5, 5), bool))], "mask size"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(content), encoding="utf-8")
        args = ["evaluate", "--predictions", str(path), "--data", str(split), "-o", str(out)]
        assert cli_main(args) == 2, name
        err = capsys.readouterr().err
        assert message in err and str(path) in err, (name, err)
        assert "Traceback" not in err
        assert not out.exists(), name  # nothing written
    # neither or both of CHECKPOINT and --predictions
    assert cli_main(["evaluate", "--data", str(split), "-o", str(out)]) == 2
    assert "exactly one" in capsys.readouterr().err
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(good), encoding="utf-8")
    assert cli_main(["evaluate", "x.pt", "--predictions", str(path), "--data", str(split),
                     "-o", str(out)]) == 2  # fmt: skip
    assert not out.exists()


def test_checkpoint_and_its_predictions_file_agree(tiny_data, tiny_config, tmp_path):
    """``evaluate CHECKPOINT`` and ``evaluate --predictions`` on the output of
    ``predict`` (the same model, images of the split) give the same metrics."""
    import torch

    from napari_vertebra.model.build import build_model, save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(
        tmp_path / "random.pt", model=build_model(tiny_config).state_dict(),
        config=tiny_config.to_dict(), epoch=0,
    )  # fmt: skip
    split = tiny_data / "test"
    pngs = [str(split / im.file_name) for im in read_coco(split / "annotations.json")]
    out = tmp_path / "pred"
    assert cli_main(["predict", str(ckpt), *pngs, "-o", str(out), "--min-score", "0"]) == 0
    by_ckpt = tmp_path / "ev_ckpt"
    assert cli_main(["evaluate", str(ckpt), "--data", str(split), "-o", str(by_ckpt),
                     "--min-score", "0"]) == 0  # fmt: skip
    a = json.loads((by_ckpt / "metrics.json").read_text(encoding="utf-8"))
    b = evaluate(tmp_path, split, json.loads((out / "predictions.json").read_text("utf-8")))
    assert a["n_pred"] == b["n_pred"] > 0  # random heads: boxes everywhere at score 0
    for key in ("id_rate", "id_rate_pooled", "mean_dice", "localisation_mm"):
        assert a[key] == pytest.approx(b[key]), key
    assert a["id_rate_per_image"] == b["id_rate_per_image"]
    assert "mask_mAP_at_threshold" in a  # raw and thresholded mAP, named apart
    # both carry each image's level confidence, so the same check of it
    assert a["level_certain_share"] is not None
    for key in ("level_certain_share", "level_certain_id_rate", "level_uncertain_id_rate"):
        assert a[key] == pytest.approx(b[key]), key


@pytest.mark.parametrize(
    ("field", "value"), [("score", 7.5), ("score", -0.2), ("level_confidence", 1.5)]
)
def test_a_probability_out_of_range_is_refused(tmp_path, split, capsys, field, value):
    """A results entry with ``score: 7.5`` (issue 19: scored as given, exit 0) is refused
    with the valid range, naming the file and the entry; nothing is written."""
    gt = truth(split)
    good = [result(i, c, m) for i, cls, ms in gt for c, m in zip(cls, ms, strict=True)]
    good[1][field] = value
    path = tmp_path / "results.json"
    path.write_text(json.dumps(good), encoding="utf-8")
    out = tmp_path / "out"
    args = ["evaluate", "--predictions", str(path), "--data", str(split), "-o", str(out)]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"entry 1: {field} {value}" in err and "0..1" in err and str(path) in err, err
    assert not out.exists()
