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
  called certain (level confidence >= :data:`~napari_vertebra.model.calibration.CERTAIN`),
  and the identification rate of those images and of the rest (None when no image is
  in the group; absent when the predictions carry no ``level_confidence``: ours do).

Distances use each image's pixel spacing in mm (``spacing`` or ``spacing_mm`` of the COCO
image entry or its ``meta``; 1 mm, the preprocessed MIP's, when absent). Identification,
localisation and Dice use the thresholded predictions (for a results file: its entries
with ``score >= min_score``, all by default), one per label (the highest-scored).

Results files of other tools are read by :mod:`napari_vertebra.model.results`; the
table, plot and files of ``napari-vertebra evaluate`` are :mod:`napari_vertebra.model.
report`'s.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vertebra.core.labels import EXTENDED, PAPER, class_id, class_name, class_set_for
from napari_vertebra.core.progress import ProgressCallback, report

from .calibration import level_calibration
from .metrics import Identification, centroids, dice_per_vertebra, identification, one_per_label
from .render import coco_results, mask_rle

__all__ = [
    "ID_MAX_DIST_MM",
    "coco_map",
    "detection_metrics",
    "evaluate_predictor",
    "ground_truth",
    "image_spacing",
    "known_spacing",
    "model_results",
    "named_results",
    "split_ground_truth",
]

#: Identification distance of VerSe, mm.
ID_MAX_DIST_MM = 20.0
_MAP_KEYS = ("box_mAP", "box_mAP50", "mask_mAP", "mask_mAP50")


# --------------------------------------------------------------------- ground truth
def image_spacing(
    entry: dict[str, Any] | None, default: tuple[float, float] | None = (1.0, 1.0)
) -> tuple[float, float] | None:
    """(row mm, col mm) pixel spacing of a COCO image entry (or an image's ``meta``).

    Looks for ``spacing`` or ``spacing_mm`` (a number or [row, col]) in the entry, then
    in its ``meta``; ``default`` when none is given (1 mm, the preprocessed MIP's, for
    distances; None where the spacing must be known).
    """
    entry = entry or {}
    for where in (entry, entry.get("meta") if isinstance(entry.get("meta"), dict) else {}):
        for key in ("spacing", "spacing_mm"):
            if key not in where or where[key] is None:
                continue
            try:
                v = np.asarray(where[key], dtype=float).reshape(-1)
            except (TypeError, ValueError):
                v = np.zeros(0)
            if v.size == 1:
                v = np.repeat(v, 2)
            if v.size != 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
                raise ValueError(
                    f"image {entry.get('file_name', entry.get('id', '?'))!r}: {key} "
                    f"{where[key]!r} is not a positive pixel spacing (mm, or [row, col] mm)"
                )
            return float(v[0]), float(v[1])
    return default


def known_spacing(entry: dict[str, Any], where: Any) -> tuple[float, float]:
    """:func:`image_spacing` of an image that a model at a fixed scale (config
    ``pixels_per_mm``) trains or predicts on: ValueError naming ``where`` (its file), the
    image and the key to add when the entry does not record it."""
    spacing = image_spacing(entry, default=None)
    if spacing is None:
        raise ValueError(
            f"{where}: image {entry.get('file_name', '?')!r} does not record its pixel "
            "spacing, which a model at a fixed scale (config pixels_per_mm) needs: add "
            '"spacing_mm": MM (mm per pixel; 1 for the MIPs of napari-vertebra preprocess '
            "and labels-to-coco) to the meta of its COCO image entry, or use a config "
            "without pixels_per_mm (smoke, synth-r50)"
        )
    return spacing


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
            rle = mask_rle(m)
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


@dataclass
class _ImageScore:
    """Identification and Dice of one image's true vertebrae (:func:`detection_metrics`)."""

    key: str
    entry: dict[str, Any]
    classes: np.ndarray
    dice: np.ndarray
    ident: Identification
    n_pred: int
    confidence: float | None


def _score_image(
    key: str, im: dict, truth: list[dict], preds: list[dict], max_dist: float
) -> _ImageScore:
    """The predictions of one image (one per label, the highest-scored) against its truth."""
    shape = (int(im["height"]), int(im["width"]))
    spacing = image_spacing(im)
    g_cls = np.array([a["category_id"] for a in truth], int)
    g_masks = _decode([a["segmentation"] for a in truth], shape)
    sel = one_per_label([r["category_id"] for r in preds], [r["score"] for r in preds])
    preds = [preds[j] for j in sel]
    p_cls = np.array([r["category_id"] for r in preds], int)
    p_masks = _decode([r["segmentation"] for r in preds], shape)
    confs = [r["level_confidence"] for r in preds if r.get("level_confidence") is not None]
    ident = identification(
        g_cls, centroids(g_masks), p_cls, centroids(p_masks), max_dist=max_dist, spacing=spacing
    )
    d = dice_per_vertebra(g_cls, g_masks, p_cls, p_masks)
    loc = ident.localisation_mm
    entry = {
        "image": key,
        "image_id": im["id"],
        "n_true": len(g_cls),
        "n_pred": len(preds),
        "identified": int(ident.identified.sum()),
        "id_rate": ident.rate,
        "localisation_mm": float(loc.mean()) if loc.size else None,
        "mean_dice": float(d.mean()) if len(d) else None,
        "spacing_mm": list(spacing),
    }
    conf = float(max(confs)) if confs else None  # one naming per image: one confidence
    if conf is not None:
        entry["level_confidence"] = conf
    return _ImageScore(key, entry, g_cls, d, ident, len(preds), conf)


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
    truth: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        truth[a["image_id"]].append(a)
    preds: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for r in at:
        preds[r["image_id"]].append(r)
    scores = [
        _score_image(key, im, truth[im["id"]], preds[im["id"]], max_dist)
        for key, im in zip(_image_keys(gt["images"]), gt["images"], strict=True)
    ]
    metrics.update(_pooled(scores, max_dist, min_score, len(gt["images"])))
    level_conf = {s.key: s.confidence for s in scores if s.confidence is not None}
    if level_conf:
        metrics.update(level_calibration(metrics["id_rate_per_image"], level_conf))
    return metrics


def _pooled(scores: list[_ImageScore], max_dist, min_score, n_images: int) -> dict[str, Any]:
    """The metrics over every image of :func:`detection_metrics` from each one's."""
    dices: dict[int, list[float]] = {c: [] for c in PAPER.ids}
    confusions: dict[str, int] = {}
    for s in scores:
        for c, v in zip(s.classes, s.dice, strict=True):
            dices.setdefault(int(c), []).append(float(v))
        for t, p in s.ident.confusions:
            name = f"{class_name(t)}->{class_name(p)}"
            confusions[name] = confusions.get(name, 0) + 1
    rates = {s.key: s.ident.rate for s in scores}
    defined = [r for r in rates.values() if r is not None]
    dists = [d for s in scores for d in s.ident.localisation_mm.tolist()]
    all_d = [v for vs in dices.values() for v in vs]
    dices = {c: dices[c] for c in sorted(dices, key=EXTENDED.rank)}  # superior first
    n_true = sum(len(s.classes) for s in scores)
    n_id = sum(int(s.ident.identified.sum()) for s in scores)
    return {
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
        "n_images": n_images,
        "n_true": n_true,
        "n_pred": sum(s.n_pred for s in scores),
        "n_identified": n_id,
        "neighbour_confusions": dict(sorted(confusions.items())),
        "n_neighbour_confusions": int(sum(confusions.values())),
        "per_image": [s.entry for s in scores],
        "_dice_values": {class_name(c): v for c, v in dices.items()},
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
    spacings: Sequence[tuple[float, float] | None] | None = None,
) -> tuple[list[dict], list[dict]]:
    """(raw detections, predictions at ``min_score``) of a Mask R-CNN on MIPs, as COCO
    results. ``images``: 2D windowed-HU MIPs; ``ids``: their image ids (default 1..N);
    ``spacings``: their (row, col) mm per pixel (default 1 mm), which a model at a fixed
    scale sees them by. ``predictor`` (a :class:`~napari_vertebra.model.predict.
    Predictor` of ``model``) supplies the class set, the level decoder's settings and the
    tiling of MIPs too tall for a fixed-scale model; without it they come from the
    model's class count.

    Raw: every detection of ``model(images)`` in eval mode (masks > 0.5, the detector's
    class and class probability). At threshold: :func:`~napari_vertebra.model.predict.
    postprocess` of the same detections (class probability >= ``min_score``, duplicates
    removed, anatomical order when ``order``), exactly what :class:`Predictor` returns.
    """
    import torch

    from .predict import postprocess

    ids = list(range(1, len(images) + 1)) if ids is None else list(ids)
    if device is None:
        device = next(model.parameters()).device
    spacings = [None] * len(images) if spacings is None else list(spacings)
    raw: list[dict] = []
    kept: list[dict] = []
    for k, (im, img_id, sp) in enumerate(zip(images, ids, spacings, strict=True)):
        report(progress, k / max(1, len(images)), f"predicting image {k + 1}/{len(images)}")
        a = np.asarray(im, np.float32)
        det, entries = _raw_results(model, a, img_id, hu_max, device, predictor, sp)
        raw += entries
        decoder = predictor.decoder_settings(sp) if predictor is not None else {}
        pred = postprocess(det, a.shape, min_score, order, box_iou, **decoder)
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


def _raw_results(
    model, a: np.ndarray, img_id: int, hu_max: float, device, predictor, spacing=None
):
    """(detections, their COCO results) of one MIP (of ``spacing`` mm per pixel, None:
    1 mm): torchvision's eval forward (a mask for every detection), or for a MIP taller
    than the predictor's tiles the merged tiles' de-duplicated detections with masks."""
    from .data import image_to_tensor
    from .detect import full_detections
    from .scale import input_spacing

    limit = predictor.tile_rows_at(spacing) if predictor is not None else None
    if limit and a.shape[0] > limit:
        det = predictor.detect(a, 0.0, spacing)
        keep = det["keep"].numpy()
        boxes, labels, scores = (det[k].numpy()[keep] for k in ("boxes", "labels", "scores"))
    else:
        t = image_to_tensor(a, hu_max).to(device)
        with input_spacing(model, spacing):
            found = full_detections(model, [t])[0]
        det = {key: v.detach().cpu() for key, v in found.items()}
        boxes, labels, scores = (det[k].numpy() for k in ("boxes", "labels", "scores"))
    masks = (det["masks"][:, 0] > 0.5).numpy()
    return det, coco_results(img_id, masks, boxes, labels, scores)


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


def evaluate_predictor(
    predictor,
    split_dir: str | os.PathLike,
    max_dist: float = ID_MAX_DIST_MM,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """:func:`detection_metrics` of a :class:`~napari_vertebra.model.predict.Predictor`
    on a COCO split folder (its image ids and spacing), at the predictor's ``min_score``,
    ``box_iou`` and ``order``; ``max_dist`` in mm. A predictor at a fixed scale needs
    every image's spacing recorded (:func:`known_spacing`, else ValueError)."""
    images, gt = _read_split(split_dir, load_images=True)
    spacings = [image_spacing(e) for e in gt["images"]]
    if predictor.tile_rows is not None:  # a fixed scale
        for im in images:
            known_spacing({"file_name": im.file_name, "meta": im.meta}, gt["_source"])
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
        spacings=spacings,
    )
    report(progress, 1.0, "COCO mAP")
    return detection_metrics(gt, raw, kept, predictor.min_score, max_dist)


# -------------------------------------------------------------------- reporting
