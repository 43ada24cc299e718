"""Evaluation against a COCO split: the field's metrics for our model or any other.

Metrics (:func:`detection_metrics`), from COCO results (RLE masks) and the split's
ground truth:

- ``id_rate``: VerSe identification rate (:mod:`napari_vertebra.model.metrics`: the
  prediction with the vertebra's label within 20 mm, and that vertebra the closest true
  one), per image (``id_rate_per_image``, {image file name: rate}) and averaged over the
  images that show vertebrae; ``id_rate_pooled`` over all true vertebrae;
- ``localisation_mm``: mean distance (mm) of identified vertebrae to their prediction;
- ``dice_per_class`` and ``mean_dice`` (over true vertebrae; a missing one counts 0);
- ``box_mAP`` / ``mask_mAP`` (and ``*_mAP50``): pycocotools COCOeval of the **raw**
  detections (every detection of the box stage, torchvision's ``box_score_thresh``, or
  a results file as given), the numbers validation reports too;
- ``box_mAP_at_threshold`` / ``mask_mAP_at_threshold``: the same on the predictions at
  the operating threshold (``min_score`` on the class probability, duplicates removed,
  anatomical order): a truncated precision-recall curve, not comparable with the above.
- ``level_certain_share``, ``level_certain_id_rate``, ``level_uncertain_id_rate``: is
  the level confidence honest on these images? The share of images whose naming is
  called certain (level confidence >= :data:`~napari_vertebra.model.levels.CERTAIN`),
  and the identification rate of those images and of the rest (None when no image is
  in the group; absent when the predictions carry no ``level_confidence``: ours do).

Distances use each image's pixel spacing in mm (``spacing`` or ``spacing_mm`` of the COCO
image entry or its ``meta``; 1 mm, the preprocessed MIP's, when absent). Identification,
localisation and Dice use the thresholded predictions (for a results file: its entries
with ``score >= min_score``, all by default), one per label (the highest-scored).

``napari-vertebra evaluate CHECKPOINT --data SPLIT -o OUT`` and ``napari-vertebra evaluate
--predictions RESULTS.json --data SPLIT -o OUT`` write ``OUT/metrics.json`` and
``OUT/dice_per_class.png`` (a box plot of Dice per vertebra like the paper's figure 7).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from napari_vertebra.core.labels import EXTENDED, PAPER, class_id, class_name, class_set_for
from napari_vertebra.core.progress import ProgressCallback, report

from .levels import CERTAIN
from .metrics import centroids, dice, identification, one_per_label

__all__ = [
    "coco_map",
    "detection_metrics",
    "evaluate_model",
    "evaluate_predictor",
    "format_table",
    "ground_truth",
    "image_spacing",
    "level_calibration",
    "model_results",
    "named_results",
    "read_results",
    "run_evaluation",
    "run_results_evaluation",
    "split_ground_truth",
]

#: Identification distance of VerSe, mm.
ID_MAX_DIST_MM = 20.0
_MAP_KEYS = ("box_mAP", "box_mAP50", "mask_mAP", "mask_mAP50")


# --------------------------------------------------------------------- ground truth
def image_spacing(entry: dict[str, Any] | None) -> tuple[float, float]:
    """(row mm, col mm) pixel spacing of a COCO image entry (or an image's ``meta``).

    Looks for ``spacing`` or ``spacing_mm`` (a number or [row, col]) in the entry, then
    in its ``meta``; 1 mm (the preprocessed MIP's) when none is given.
    """
    entry = entry or {}
    for where in (entry, entry.get("meta") if isinstance(entry.get("meta"), dict) else {}):
        for key in ("spacing", "spacing_mm"):
            if key not in where or where[key] is None:
                continue
            v = np.asarray(where[key], dtype=float).reshape(-1)
            if v.size == 1:
                v = np.repeat(v, 2)
            if v.size != 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(
                    f"image {entry.get('file_name', entry.get('id', '?'))!r}: {key} "
                    f"{where[key]!r} is not a positive pixel spacing (mm, or [row, col] mm)"
                )
            return float(v[0]), float(v[1])
    return 1.0, 1.0


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth(
    images: Sequence[Any],
    ids: Sequence[int] | None = None,
    entries: Sequence[dict] | None = None,
) -> dict:
    """A COCO ground-truth dict (RLE masks, category ids = class ids 1..17) of
    :class:`~napari_vertebra.annotation.types.AnnotatedImage` objects.

    Masks are rasterised as the training dataset does. ``ids`` are the image ids (default
    1..N, the convention of :func:`model_results`); ``entries`` the COCO image entries
    the images came from (for their pixel spacing; else each image's ``meta``). Each
    image entry gets ``spacing`` [row mm, col mm].
    """
    from napari_vertebra.annotation.polygons import rasterize

    ids = list(range(1, len(images) + 1)) if ids is None else [int(i) for i in ids]
    out_images, anns = [], []
    for k, (im, img_id) in enumerate(zip(images, ids, strict=True)):
        spacing = image_spacing(entries[k] if entries is not None else {"meta": im.meta})
        out_images.append(
            {
                "id": img_id,
                "file_name": im.file_name,
                "height": int(im.height),
                "width": int(im.width),
                "spacing": list(spacing),
            }
        )
        shape = (int(im.height), int(im.width))
        for a in im.annotations:
            m = rasterize(a.polygons, shape)
            if not m.any():
                continue
            rle = _rle(m)
            x0, y0, x1, y1 = _mask_box(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": int(a.class_id),
                    "segmentation": rle,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(m.sum()),
                    "iscrowd": 0,
                }
            )
    cats = class_set_for(a["category_id"] for a in anns).coco_categories()
    return {"images": out_images, "annotations": anns, "categories": cats}


def _mask_box(m: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _read_split(split_dir: str | os.PathLike, load_images: bool = False) -> tuple[list, dict]:
    """(AnnotatedImages, :func:`split_ground_truth`) of a COCO split."""
    from napari_vertebra.annotation.coco import read_coco

    from .data import split_json

    path = split_json(split_dir)
    images = read_coco(path, load_images=load_images, check_files=load_images)
    if not images:
        raise ValueError(f"{path}: the COCO split has no images to evaluate on")
    data = json.loads(path.read_text(encoding="utf-8"))  # valid: read_coco checked it
    entries = list(data["images"])
    gt = ground_truth(images, [e["id"] for e in entries], entries)
    cats = {}
    for c in data["categories"]:
        with contextlib.suppress(ValueError):
            cats[int(c["id"])] = class_id(str(c["name"]))
    gt["_categories"] = cats
    gt["_source"] = str(path)
    return images, gt


def split_ground_truth(split_dir: str | os.PathLike) -> dict:
    """:func:`ground_truth` of a COCO split (``SPLIT/annotations.json`` as ``dataset
    build`` writes it, or the file), with the file's image ids and spacing. The dict
    also holds ``"_categories"``: {the file's category id: class id 1..17}."""
    return _read_split(split_dir)[1]


# ------------------------------------------------------------------ results files
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _result_errors(k: int, r: Any, gt_images: dict[int, dict], cats: dict[int, int]) -> list:
    tag = f"entry {k}"
    if not isinstance(r, dict):
        return [f"{tag}: not an object"]
    errs = [
        f"{tag}: missing {key!r}"
        for key in ("image_id", "category_id", "segmentation", "score")
        if key not in r
    ]
    if errs:
        return errs
    if (
        isinstance(r["score"], bool)
        or not isinstance(r["score"], (int, float))
        or not math.isfinite(r["score"])
    ):
        errs.append(f"{tag}: score {r['score']!r} is not a number")
    if not _is_int(r["category_id"]) or r["category_id"] not in cats:
        errs.append(f"{tag}: category_id {r['category_id']!r} is not a vertebra of the split")
    if not _is_int(r["image_id"]) or r["image_id"] not in gt_images:
        errs.append(f"{tag}: image_id {r['image_id']!r} is not an image of the split")
        return errs
    seg = r["segmentation"]
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg) and not (
        isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg)
    ):
        errs.append(f"{tag}: segmentation is neither RLE ({{size, counts}}) nor polygons")
    elif isinstance(seg, dict):
        im = gt_images[r["image_id"]]
        if not isinstance(seg["counts"], (str, list)):
            errs.append(f"{tag}: RLE counts must be a string or a list of run lengths")
        elif not isinstance(seg["size"], list) or seg["size"] != [im["height"], im["width"]]:
            errs.append(
                f"{tag}: mask size {seg['size']} is not the image's "
                f"[{im['height']}, {im['width']}] (image_id {r['image_id']})"
            )
    return errs


def _match_file_names(results: list, gt: dict, warnings: list[str]) -> None:
    """Where every entry names its image (``file_name``, as ``napari-vertebra predict``
    writes), match images by file name, not by ``image_id`` (in place)."""
    if not results or not all(isinstance(r, dict) and r.get("file_name") for r in results):
        return
    names = {str(PurePosixPath(im["file_name"])): im["id"] for im in gt["images"]}
    moved = 0
    for r in results:
        given = str(r["file_name"]).replace("\\", "/")
        hits = {n for n in names if given == n or given.endswith("/" + n)}
        if len(hits) != 1:
            raise ValueError(
                f"results entry for {given!r} names {'no' if not hits else 'several'} "
                "image(s) of the split; give results for the split's images"
            )
        img_id = names[hits.pop()]
        if r.get("image_id") != img_id:
            moved += 1
        r["image_id"] = img_id
    if moved:
        warnings.append(
            f"{moved} results entries had another image_id than their file_name's image "
            "in the split; matched by file_name"
        )


def read_results(
    path: str | os.PathLike, gt: dict, warnings: list[str] | None = None
) -> list[dict]:
    """COCO results (a JSON list of {image_id, category_id, segmentation, score[, bbox]})
    of any tool, validated against ``gt`` (:func:`split_ground_truth`).

    Segmentations may be RLE (compressed or not) or polygons; they come back as
    compressed RLE, category ids as class ids 1..17 (by the split's category names), and
    bbox from the mask when absent. Entries that carry ``file_name`` (our ``predict``)
    are matched to images by it. Raises ValueError naming the file and the problems.
    """
    from pycocotools import mask as mask_utils

    from napari_vertebra.annotation._io import read_json

    warnings = [] if warnings is None else warnings
    p = Path(path)
    data = read_json(p)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]  # a COCO file with scored annotations
    if not isinstance(data, list):
        raise ValueError(f"{p}: not COCO results (expected a JSON list of detections)")
    gt_images = {im["id"]: im for im in gt["images"]}
    cats = gt.get("_categories") or {c["id"]: c["id"] for c in gt["categories"]}
    _match_file_names(data, gt, warnings)
    errors = [e for k, r in enumerate(data) for e in _result_errors(k, r, gt_images, cats)]
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(f"{p}: {'; '.join(errors[:5])}{more}")
    out = []
    for r in data:
        im = gt_images[r["image_id"]]
        h, w = im["height"], im["width"]
        seg = r["segmentation"]
        try:
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg["counts"], list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = {"size": list(seg["size"]), "counts": seg["counts"].encode("ascii")}
            m = mask_utils.decode(rle)
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(
                f"{p}: a segmentation of image {r['image_id']} is unreadable ({e})"
            ) from e
        entry = {
            "image_id": int(r["image_id"]),
            "category_id": int(cats[r["category_id"]]),
            "segmentation": _rle(m),
            "score": float(r["score"]),
        }
        conf = r.get("level_confidence")
        if isinstance(conf, (int, float)) and not isinstance(conf, bool) and 0 <= conf <= 1:
            entry["level_confidence"] = float(conf)
        if isinstance(r.get("bbox"), list) and len(r["bbox"]) == 4:
            entry["bbox"] = [float(v) for v in r["bbox"]]
        else:
            entry["bbox"] = [float(v) for v in mask_utils.toBbox(entry["segmentation"])]
        out.append(entry)
    return out


# ----------------------------------------------------------------------- metrics
def coco_map(gt: dict, results: list[dict]) -> dict[str, float]:
    """``box_mAP``, ``box_mAP50``, ``mask_mAP``, ``mask_mAP50`` (pycocotools COCOeval,
    0..1, -1 where undefined) of COCO ``results`` against the ground-truth dict ``gt``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = dict.fromkeys(_MAP_KEYS, 0.0)
    if not results:
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {k: v for k, v in gt.items() if not k.startswith("_")}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        for iou_type, key in (("bbox", "box"), ("segm", "mask")):
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[f"{key}_mAP"] = float(ev.stats[0])
            out[f"{key}_mAP50"] = float(ev.stats[1])
    return out


def _decode(rles: list[dict], shape: tuple[int, int]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, *shape), bool)
    return np.stack([mask_utils.decode(r).astype(bool) for r in rles])


def _image_keys(images: list[dict]) -> list[str]:
    names = [str(im.get("file_name") or "") for im in images]
    if all(names) and len(set(names)) == len(names):
        return names
    return [str(im["id"]) for im in images]


def detection_metrics(
    gt: dict,
    results: list[dict],
    results_at_threshold: list[dict] | None = None,
    min_score: float | None = None,
    max_dist: float = ID_MAX_DIST_MM,
) -> dict[str, Any]:
    """The metrics of the module doc from COCO results against a ground-truth dict.

    ``gt``: :func:`ground_truth` / :func:`split_ground_truth`. ``results``: the raw
    detections (COCO results, RLE masks, category ids 1..17) for ``box_mAP`` and
    ``mask_mAP``. ``results_at_threshold``: the predictions at the operating threshold
    (for the ``*_at_threshold`` mAPs, identification, localisation and Dice); without
    it, the entries of ``results`` with ``score >= min_score`` (all when None).
    ``max_dist``: identification distance, mm. Image ids of the results are those of
    ``gt``. Keys: ``id_rate``, ``id_rate_per_image``, ``id_rate_pooled``,
    ``localisation_mm`` (None when nothing is identified), ``mean_dice``,
    ``dice_per_class``, ``box_mAP``, ``box_mAP50``, ``mask_mAP``, ``mask_mAP50``,
    ``box_mAP_at_threshold``, ``mask_mAP_at_threshold`` (and ``*50``, when a threshold
    applies), counts, ``neighbour_confusions`` and ``per_image``.
    """
    at = results_at_threshold
    if at is None:
        at = [r for r in results if min_score is None or r["score"] >= min_score]
    metrics: dict[str, Any] = dict(coco_map(gt, results))
    if results_at_threshold is not None or min_score is not None:
        for k, v in coco_map(gt, at).items():
            metrics[f"{k}_at_threshold"] = v
    gt_by_img: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        gt_by_img[a["image_id"]].append(a)
    pr_by_img: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for r in at:
        pr_by_img[r["image_id"]].append(r)

    dices: dict[int, list[float]] = {c: [] for c in PAPER.ids}
    confusions: dict[str, int] = {}
    per_image, rates, dists = [], {}, []
    level_conf: dict[str, float] = {}
    n_true = n_id = n_pred = 0
    for key, im in zip(_image_keys(gt["images"]), gt["images"], strict=True):
        shape = (int(im["height"]), int(im["width"]))
        spacing = image_spacing(im)
        g, pr = gt_by_img[im["id"]], pr_by_img[im["id"]]
        g_cls = np.array([a["category_id"] for a in g], int)
        g_masks = _decode([a["segmentation"] for a in g], shape)
        sel = one_per_label([r["category_id"] for r in pr], [r["score"] for r in pr])
        pr = [pr[j] for j in sel]
        p_cls = np.array([r["category_id"] for r in pr], int)
        p_masks = _decode([r["segmentation"] for r in pr], shape)
        confs = [r["level_confidence"] for r in pr if r.get("level_confidence") is not None]
        ident = identification(
            g_cls, centroids(g_masks), p_cls, centroids(p_masks),
            max_dist=max_dist, spacing=spacing,
        )  # fmt: skip
        d = np.array(
            [
                dice(m, p_masks[p_cls == c][0]) if (p_cls == c).any() else 0.0
                for c, m in zip(g_cls, g_masks, strict=True)
            ]
        )
        for c, v in zip(g_cls, d, strict=True):
            dices.setdefault(int(c), []).append(float(v))
        for t, p in ident.confusions:
            name = f"{class_name(t)}->{class_name(p)}"
            confusions[name] = confusions.get(name, 0) + 1
        loc = ident.localisation_mm
        dists += loc.tolist()
        rates[key] = ident.rate
        n_true += len(g_cls)
        n_id += int(ident.identified.sum())
        n_pred += len(pr)
        per_image.append(
            {
                "image": key,
                "image_id": im["id"],
                "n_true": len(g_cls),
                "n_pred": len(pr),
                "identified": int(ident.identified.sum()),
                "id_rate": ident.rate,
                "localisation_mm": float(loc.mean()) if loc.size else None,
                "mean_dice": float(d.mean()) if len(d) else None,
                "spacing_mm": list(spacing),
            }
        )
        if confs:  # one naming per image: its entries share the confidence
            level_conf[key] = float(max(confs))
            per_image[-1]["level_confidence"] = level_conf[key]
    defined = [r for r in rates.values() if r is not None]
    all_d = [v for vs in dices.values() for v in vs]
    dices = {c: dices[c] for c in sorted(dices, key=EXTENDED.rank)}  # superior first
    metrics.update(
        {
            "id_rate": float(np.mean(defined)) if defined else 0.0,
            "id_rate_per_image": rates,
            "id_rate_pooled": n_id / n_true if n_true else 0.0,
            "localisation_mm": float(np.mean(dists)) if dists else None,
            "mean_dice": float(np.mean(all_d)) if all_d else 0.0,
            "dice_per_class": {
                class_name(c): (float(np.mean(v)) if v else None) for c, v in dices.items()
            },
            "id_max_dist_mm": float(max_dist),
            "min_score": min_score,
            "n_images": len(gt["images"]),
            "n_true": n_true,
            "n_pred": n_pred,
            "n_identified": n_id,
            "neighbour_confusions": dict(sorted(confusions.items())),
            "n_neighbour_confusions": int(sum(confusions.values())),
            "per_image": per_image,
            "_dice_values": {class_name(c): v for c, v in dices.items()},
        }
    )
    if level_conf:
        metrics.update(level_calibration(rates, level_conf))
    return metrics


def level_calibration(
    rates: dict[str, float | None], confidence: dict[str, float], cutoff: float = CERTAIN
) -> dict[str, Any]:
    """Whether a level confidence is honest: of the images that show vertebrae
    (``rates``: identification rate per image, None for none), the share called certain
    (``confidence`` >= ``cutoff``; an image without a confidence, e.g. with no
    prediction, is not certain) and the mean identification rate of those and of the rest.
    """
    shown = {k: r for k, r in rates.items() if r is not None}
    sure = [r for k, r in shown.items() if confidence.get(k, 0.0) >= cutoff]
    rest = [r for k, r in shown.items() if confidence.get(k, 0.0) < cutoff]
    return {
        "level_certain_cutoff": float(cutoff),
        "level_certain_share": len(sure) / len(shown) if shown else None,
        "level_certain_id_rate": float(np.mean(sure)) if sure else None,
        "level_uncertain_id_rate": float(np.mean(rest)) if rest else None,
    }


# ------------------------------------------------------------------- our model
def model_results(
    model,
    images: Sequence[np.ndarray],
    min_score: float,
    hu_max: float = 1500.0,
    box_iou: float | None = 0.5,
    order: bool = True,
    ids: Sequence[int] | None = None,
    device=None,
    progress: ProgressCallback | None = None,
    predictor=None,
) -> tuple[list[dict], list[dict]]:
    """(raw detections, predictions at ``min_score``) of a Mask R-CNN on MIPs, as COCO
    results. ``images``: 2D windowed-HU MIPs; ``ids``: their image ids (default 1..N).
    ``predictor`` (a :class:`~napari_vertebra.model.predict.Predictor` of ``model``)
    supplies the class set, the level decoder's settings and the tiling of MIPs too tall
    for a fixed-scale model; without it they come from the model's class count.

    Raw: every detection of ``model(images)`` in eval mode (masks > 0.5, the detector's
    class and class probability). At threshold: :func:`~napari_vertebra.model.predict.
    postprocess` of the same detections (class probability >= ``min_score``, duplicates
    removed, anatomical order when ``order``), exactly what :class:`Predictor` returns.
    """
    import torch

    from .data import image_to_tensor
    from .predict import full_detections, postprocess
    from .render import coco_results

    ids = list(range(1, len(images) + 1)) if ids is None else list(ids)
    if device is None:
        device = next(model.parameters()).device
    raw: list[dict] = []
    kept: list[dict] = []
    for k, (im, img_id) in enumerate(zip(images, ids, strict=True)):
        report(progress, k / max(1, len(images)), f"predicting image {k + 1}/{len(images)}")
        a = np.asarray(im, np.float32)
        tall = predictor is not None and predictor.tile_rows and a.shape[0] > predictor.tile_rows
        if tall:  # tiles: the raw results are the de-duplicated detections with masks
            det = predictor.detect(a, 0.0)
            keep = det["keep"].numpy()
            raw += coco_results(
                img_id,
                (det["masks"][:, 0] > 0.5).numpy(),
                det["boxes"].numpy()[keep],
                det["labels"].numpy()[keep],
                det["scores"].numpy()[keep],
            )
        else:
            t = image_to_tensor(a, hu_max).to(device)
            det = {key: v.detach().cpu() for key, v in full_detections(model, [t])[0].items()}
            raw += coco_results(
                img_id,
                (det["masks"][:, 0] > 0.5).numpy(),
                det["boxes"].numpy(),
                det["labels"].numpy(),
                det["scores"].numpy(),
            )
        if predictor is not None:
            pred = postprocess(
                det,
                a.shape,
                min_score,
                order,
                box_iou,
                class_set=predictor.class_set,
                pixel_mm=predictor.pixel_mm,
                evidence_weight=predictor.config.level_evidence_weight,
                class_frequencies=predictor.class_frequencies,
            )
        else:
            pred = postprocess(det, a.shape, min_score, order, box_iou)
        entries = coco_results(img_id, pred.masks, pred.boxes, pred.classes, pred.scores)
        if pred.level_confidence is not None:
            for e in entries:
                e["level_confidence"] = pred.level_confidence
        kept += entries
        del det  # (and the image tensor with the next one)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    report(progress, 1.0, "predicted")
    return raw, kept


def named_results(
    model,
    images: Sequence[np.ndarray],
    cfg,
    min_score: float,
    box_iou: float | None = 0.5,
    order: bool = True,
    ids: Sequence[int] | None = None,
    device=None,
    progress: ProgressCallback | None = None,
    class_counts: Sequence[int] | None = None,
) -> tuple[list[dict], list[dict]]:
    """:func:`model_results` with the levels named as ``predict`` names them: a
    :class:`~napari_vertebra.model.predict.Predictor` of ``model`` with the training
    config ``cfg`` (class set, fixed-scale tiling, level decoder settings) and
    ``class_counts`` (the training vertebrae per class: the decoder's class prior)."""
    from .predict import Predictor

    if device is None:
        device = next(model.parameters()).device
    predictor = Predictor(
        model, device=device, min_score=min_score, order=order, config=cfg, box_iou=box_iou
    )
    predictor.set_class_counts(class_counts)
    return model_results(
        model, images, min_score, cfg.hu_max, box_iou, order, ids=ids, device=device,
        progress=progress, predictor=predictor,
    )  # fmt: skip


def evaluate_model(
    model,
    dataset,
    min_score: float = 0.9,
    box_iou: float | None = 0.5,
    order: bool = True,
    max_dist: float = ID_MAX_DIST_MM,
    device=None,
    progress: ProgressCallback | None = None,
    class_counts: Sequence[int] | None = None,
) -> dict[str, Any]:
    """:func:`detection_metrics` of a model (not a checkpoint) on a
    :class:`~napari_vertebra.model.data.VertebraDataset` (no augmentation; image ids
    1..N; spacing from each image's ``meta``): ``mask_mAP``/``box_mAP`` of the raw
    detections, ``*_at_threshold``, ``id_rate`` ... at ``min_score`` (the class
    probability), levels named with the dataset's config and ``class_counts`` (the
    training vertebrae per class, the level decoder's class prior). Training validates
    with :func:`napari_vertebra.model.engine.evaluate` (ranks, the same naming)."""
    raw, kept = named_results(
        model,
        [im.image for im in dataset.images],
        dataset.cfg,
        min_score,
        box_iou,
        order,
        device=device,
        progress=progress,
        class_counts=class_counts,
    )
    return detection_metrics(ground_truth(dataset.images), raw, kept, min_score, max_dist)


def evaluate_predictor(
    predictor,
    split_dir: str | os.PathLike,
    max_dist: float = ID_MAX_DIST_MM,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """:func:`detection_metrics` of a :class:`~napari_vertebra.model.predict.Predictor`
    on a COCO split folder (its image ids and spacing), at the predictor's ``min_score``,
    ``box_iou`` and ``order``; ``max_dist`` in mm."""
    images, gt = _read_split(split_dir, load_images=True)
    raw, kept = model_results(
        predictor.model,
        [im.image for im in images],
        predictor.min_score,
        predictor.hu_max,
        predictor.box_iou,
        predictor.order,
        ids=[im["id"] for im in gt["images"]],
        device=predictor.device,
        progress=progress,
        predictor=predictor,
    )
    report(progress, 1.0, "COCO mAP")
    return detection_metrics(gt, raw, kept, predictor.min_score, max_dist)


# -------------------------------------------------------------------- reporting
def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _level_lines(metrics: dict[str, Any]) -> list[str]:
    share = metrics.get("level_certain_share")
    if share is None:
        return []
    cut = metrics.get("level_certain_cutoff", CERTAIN)
    sure, rest = metrics.get("level_certain_id_rate"), metrics.get("level_uncertain_id_rate")
    lines = [
        f"level confidence: {share:.0%} of images called certain (>= {cut:g}), identified "
        f"at {_fmt(sure)}; the rest at {_fmt(rest)}"
    ]
    if sure is not None and sure < cut:
        lines.append(
            f"  warning: the images called certain are identified at {sure:.2f}, below "
            f"{cut:g}: on these images the level confidence overstates how sure the naming "
            "is (see docs/levels.md)"
        )
    return lines


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text summary table of :func:`detection_metrics`'s metrics."""
    lines = [
        f"images {metrics['n_images']}  true vertebrae {metrics['n_true']}  "
        f"predicted {metrics['n_pred']}",
        f"raw detections:  box mAP {metrics['box_mAP']:.3f}  mask mAP {metrics['mask_mAP']:.3f}"
        f"  mask mAP50 {metrics['mask_mAP50']:.3f}",
    ]
    if "mask_mAP_at_threshold" in metrics:
        lines.append(
            f"at score >= {_fmt(metrics.get('min_score'), '.2f')}:  box mAP "
            f"{metrics['box_mAP_at_threshold']:.3f}  mask mAP "
            f"{metrics['mask_mAP_at_threshold']:.3f}"
        )
    lines += [
        f"identification rate {metrics['id_rate']:.3f} (mean over images; pooled "
        f"{metrics['id_rate_pooled']:.3f})  localisation {_fmt(metrics['localisation_mm'], '.1f')}"
        f" mm  mean Dice {metrics['mean_dice']:.3f}  neighbour confusions "
        f"{metrics['n_neighbour_confusions']}",
        *_level_lines(metrics),
        "",
        f"{'vertebra':<9}{'n':>4}{'Dice':>8}",
    ]
    for name, v in metrics["dice_per_class"].items():
        n = len(metrics.get("_dice_values", {}).get(name, []))
        lines.append(f"{name:<9}{n:>4}{('   -' if v is None else f'{v:8.3f}'):>8}")
    return "\n".join(lines)


def _dice_png(metrics: dict[str, Any]) -> bytes:
    """Box plot of Dice per vertebra class (matplotlib, Agg) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    vals = metrics["_dice_values"]
    names = list(vals)
    fig, ax = plt.subplots(figsize=(9, 3.5), dpi=100)
    data = [vals.get(n) or [np.nan] for n in names]
    ax.boxplot(data, tick_labels=names, showfliers=True)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title(
        f"Dice per vertebra (mean {metrics['mean_dice']:.3f}, id rate {metrics['id_rate']:.3f})"
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def plot_dice(metrics: dict[str, Any], path: str | os.PathLike) -> Path:
    """Box plot of Dice per vertebra class, written to ``path`` (PNG)."""
    p = Path(path)
    p.write_bytes(_dice_png(metrics))
    return p


def _write(metrics: dict[str, Any], out_dir: str | os.PathLike, **extra: Any) -> None:
    """OUT/metrics.json (public keys plus ``extra``) and OUT/dice_per_class.png, together."""
    from napari_vertebra.annotation._atomic import AtomicBatch

    out = Path(out_dir)
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    public.update(extra)
    text = json.dumps(public, indent=1)
    png = _dice_png(metrics)
    with AtomicBatch() as batch:
        batch.add(out / "metrics.json", text.encode("utf-8"))
        batch.add(out / "dice_per_class.png", png)


def run_evaluation(
    checkpoint: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    min_score: float | None = None,
    max_dist: float = ID_MAX_DIST_MM,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes metrics.json and dice_per_class.png."""
    from .predict import Predictor

    predictor = Predictor(checkpoint, device=device, min_score=min_score)
    metrics = evaluate_predictor(predictor, split_dir, max_dist, progress)
    _write(metrics, out_dir, checkpoint=str(checkpoint), split=str(split_dir))
    return metrics


def run_results_evaluation(
    predictions: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    min_score: float | None = None,
    max_dist: float = ID_MAX_DIST_MM,
) -> dict[str, Any]:
    """Evaluate a COCO results file of any tool against a split (same metrics as
    :func:`run_evaluation`); writes OUT/metrics.json and OUT/dice_per_class.png.

    ``box_mAP``/``mask_mAP`` rank every entry of the file; identification, localisation
    and Dice use the entries with ``score >= min_score`` (all when None), one per label.
    """
    gt = split_ground_truth(split_dir)
    warnings: list[str] = []
    results = read_results(predictions, gt, warnings)
    metrics = detection_metrics(gt, results, None, min_score, max_dist)
    metrics["warnings"] = warnings
    _write(metrics, out_dir, predictions=str(predictions), split=str(split_dir))
    return metrics
