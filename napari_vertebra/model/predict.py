"""Prediction: vertebra masks, boxes, classes and scores on sagittal MIPs.

:class:`Predictor` loads one of our checkpoints once and predicts on 2D windowed-HU
MIPs (row 0 superior, col 0 anterior). Detections whose class probability is below
``min_score`` are dropped, overlapping duplicates suppressed (class-agnostic: by box IoU,
then by mask overlap), and the classes made anatomically consistent with
:func:`napari_vertebra.model.anatomy.order_classes` (T1..L5 from top to bottom, no
repeats or inversions) using each detection's class probabilities.

Confidence. A detection's ``score`` is the probability of its class, softmax of the box
head on its proposal at the detector's class (torchvision's detection score; the number
matterport's DETECTION_MIN_CONFIDENCE, the paper's 0.9, applies to). ``min_score`` and the
Predict widget's slider filter on it. An untrained classifier spreads its probability
over the 18 classes (about 1/18 each), so it predicts nothing at 0.9. The probability
that a box is *some* vertebra, 1 - p(background) of the box head on the final box, is
kept as ``vertebra_scores`` for review only (it is near 1 for an untrained model too);
it never lets a detection through.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from napari_vertebra.annotation.polygons import mask_to_polygons
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import ClassSet, class_name, class_set_of_size, get_class_set

from .anatomy import mask_overlap_suppression, order_classes
from .build import model_from_checkpoint
from .calibration import CERTAIN
from .config import TrainConfig, as_config
from .data import image_to_tensor
from .detect import (
    DEDUP_BOX_IOU,
    candidates,
    detection_scores,
    iou_tag,
    logits_dim,
    raw_detections,
    vertebra_scores,
)
from .device import resolve_device
from .levels import LevelDecoding, decode_levels
from .levels import class_frequencies as _training_shares
from .scale import TILE_OVERLAP_MM, input_spacing, merge_tiles, row_tiles, spacing_pair

__all__ = [
    "TEST_SETTINGS",
    "Prediction",
    "Predictor",
    "apply_test_settings",
    "postprocess",
    "predict",
]


@dataclass
class Prediction:
    """Vertebrae found on one image, sorted top to bottom.

    ``masks`` (N, H, W) bool; ``boxes`` (N, 4) (x0, y0, x1, y1) px; ``classes`` (N,)
    class ids (1..17 T1..L5; the extended set adds 18 C7, 19 T13, 20 L6, 21 S1) after the
    level decoding; ``raw_classes`` the detector's own; ``scores`` (N,) confidence: the
    probability of the detector's class (``raw_classes``), the number ``min_score``
    filters on; ``class_probs`` (N, K) probabilities of the class set's K classes on the
    final box (column j = class id j + 1); ``vertebra_scores`` (N,) 1 - p(background) on
    the final box (is it a vertebra at all; for review, never a filter). ``levels`` is
    the joint level decoding of the image (:class:`~napari_vertebra.model.levels.
    LevelDecoding`: the level confidence and the shifted alternatives), None when the
    levels were not decoded (``order=False``).
    """

    masks: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    raw_classes: np.ndarray
    class_probs: np.ndarray
    shape: tuple[int, int] = (0, 0)
    meta: dict[str, Any] = field(default_factory=dict)
    vertebra_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    levels: LevelDecoding | None = None

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Vertebra names of the instances (e.g. ``["T11", "T12", "L1"]``)."""
        return [class_name(c) for c in self.classes]

    @property
    def level_confidence(self) -> float | None:
        """The naming's level confidence; None when the levels were not decoded or
        nothing was found."""
        return float(self.levels.confidence) if self.levels is not None and len(self) else None

    @property
    def level_summary(self) -> str:
        """``"T9..L2, level confidence 0.72; one level up: 0.21"`` ("" when not decoded)."""
        if self.levels is None and self.meta.get("levels_error"):
            return f"levels not decoded jointly ({self.meta['levels_error']})"
        if self.levels is None:
            return ""
        text = self.levels.summary()
        if self.levels.confidence < CERTAIN:
            return text
        # how far a "certain" naming of this model is to be trusted: its validation
        where = self.meta.get("validation_on") or "this model's validation images"
        sure, ids = self.meta.get("validation_certain_id_rate"), self.meta.get("validation_id")
        if sure is not None:
            only = "only " if sure < CERTAIN else ""
            text += f" (on {where}, namings called certain were identified at {only}{sure:.2f})"
        elif ids is not None:
            text += f" (on {where}, no naming was called certain; identification {ids:.2f})"
        return text

    def centroids(self) -> np.ndarray:
        """(N, 2) (row, col) mask centroids, px."""
        out = np.zeros((len(self), 2))
        for i, m in enumerate(self.masks):
            r, c = np.nonzero(m)
            if r.size:
                out[i] = r.mean(), c.mean()
        return out

    def label_image(self) -> np.ndarray:
        """uint8 class image (0 background, class ids); higher scores paint last."""
        out = np.zeros(self.shape, np.uint8)
        for i in np.argsort(self.scores, kind="stable"):
            out[self.masks[i]] = self.classes[i]
        return out

    def annotations(self) -> list[VertebraAnnotation]:
        """:class:`VertebraAnnotation` outlines ((row, col) polygons) with scores."""
        out = []
        for m, c, s in zip(self.masks, self.classes, self.scores, strict=True):
            polys = mask_to_polygons(m)
            if polys:
                out.append(VertebraAnnotation(int(c), polys, score=float(s)))
        return out


def _check_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        raise ValueError(
            f"expected a 2D grayscale MIP (rows, cols); got an RGB(A) image of shape {a.shape}"
        )
    if a.ndim != 2:
        raise ValueError(
            f"expected a 2D grayscale MIP (rows, cols); got an array of shape {a.shape} "
            "(give a CT volume to the pipeline first, or one MIP)"
        )
    if a.shape[0] < 16 or a.shape[1] < 16:
        raise ValueError(f"MIP of shape {a.shape} is too small (at least 16 x 16 px)")
    if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
        raise ValueError("MIP must hold finite numbers (windowed HU)")
    return a


#: Inference settings that :class:`Predictor` can override on a trained model.
TEST_SETTINGS = (
    "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_test",
    "box_detections_per_img",
    "box_score_thresh",
)


def apply_test_settings(model, settings: dict[str, Any]) -> None:
    """Set the RPN/ROI inference numbers of a built Mask R-CNN (keys of TEST_SETTINGS)."""
    unknown = set(settings) - set(TEST_SETTINGS)
    if unknown:
        raise ValueError(f"unknown inference settings {sorted(unknown)}")
    if "rpn_pre_nms_top_n_test" in settings:
        model.rpn._pre_nms_top_n["testing"] = int(settings["rpn_pre_nms_top_n_test"])
    if "rpn_post_nms_top_n_test" in settings:
        model.rpn._post_nms_top_n["testing"] = int(settings["rpn_post_nms_top_n_test"])
    if "box_detections_per_img" in settings:
        model.roi_heads.detections_per_img = int(settings["box_detections_per_img"])
    if "box_score_thresh" in settings:
        model.roi_heads.score_thresh = float(settings["box_score_thresh"])


class Predictor:
    """Loads a checkpoint once and predicts vertebrae on MIPs.

    ``checkpoint`` is a path to one of our checkpoints (or an already built model with
    ``config``); ``min_score`` (on the class probability) defaults to the config's (the
    paper's 0.9); ``order`` applies the anatomical ordering; ``settings`` overrides
    inference numbers of the checkpoint's config (see :data:`TEST_SETTINGS`). ``box_iou``
    is the class-agnostic box IoU above which a lower-scored detection is a duplicate
    (default: the config's ``dedup_box_iou``; None: mask overlap only).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | torch.nn.Module,
        device: str = "cpu",
        min_score: float | None = None,
        order: bool = True,
        config: TrainConfig | dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        box_iou: float | Literal["config"] | None = "config",
    ):
        self.device = resolve_device(device)
        counts = None
        #: the checkpoint's validation figures (``val_*`` numbers; {} for a bare model):
        #: ``val_level_certain_id_rate`` tells how far a "certain" naming can be trusted
        self.validation: dict[str, float] = {}
        #: what those figures were measured on ("" for the val split; the starter model:
        #: a scan it never saw)
        self.validation_on = ""
        if isinstance(checkpoint, torch.nn.Module):
            self.model = checkpoint
            self.config = as_config(config)
        else:
            self.model, ckpt = model_from_checkpoint(checkpoint, "cpu")
            self.config = as_config(ckpt["config"])
            counts = ckpt.get("class_counts")
            metrics = ckpt.get("metrics")
            if isinstance(metrics, dict):
                self.validation = {
                    k: float(v)
                    for k, v in metrics.items()
                    if k.startswith("val_")
                    and isinstance(v, (int, float))
                    and not isinstance(v, bool)
                    and np.isfinite(v)
                }
                self.validation_on = str(ckpt.get("validation_on") or "")
        if settings:
            apply_test_settings(self.model, settings)
            self.config = self.config.replace(**settings)
        self.model.to(self.device).eval()
        self.hu_max = self.config.hu_max
        self.min_score = self.config.min_score if min_score is None else float(min_score)
        self.order = order
        if box_iou == "config":
            box_iou = self.config.dedup_box_iou
        self.box_iou = None if box_iou is None else float(box_iou)
        self.class_set = get_class_set(self.config.class_set)
        if logits_dim(self.model) != self.class_set.num_classes:
            raise ValueError(
                f"the model has {logits_dim(self.model)} classes but its config's class set "
                f"{self.class_set.name!r} has {self.class_set.num_classes}"
            )
        #: mm per pixel of a 1 mm MIP for the level decoder's size prior (each MIP's
        #: spacing scales it); only a model that sees a fixed physical scale
        #: (``pixels_per_mm``) uses the prior: None for the others
        self.pixel_mm = 1.0 if self.config.pixels_per_mm is not None else None
        #: annotated vertebrae per class in the training set (from the checkpoint; None
        #: for older checkpoints): the level decoder's class prior (``level_class_prior``)
        self.class_counts: np.ndarray | None = None
        self.set_class_counts(counts)

    def set_class_counts(self, counts: Sequence[float] | np.ndarray | None) -> None:
        """Set :attr:`class_counts` (None, or one count per class of the class set; other
        lengths are not this model's classes: decoded without a class prior)."""
        c = None if counts is None else np.asarray(counts, dtype=float).reshape(-1)
        self.class_counts = c if c is not None and len(c) == len(self.class_set.ids) else None

    @property
    def class_frequencies(self) -> np.ndarray | None:
        """Training share of each class the level decoder divides out, or None (config
        ``level_class_prior`` off, or no counts in the checkpoint)."""
        if self.class_counts is None or not self.config.level_class_prior:
            return None
        return _training_shares(self.class_counts)

    @property
    def tile_rows(self) -> int | None:
        """Most rows of a 1 mm MIP the model sees at once (fixed scale), None without a
        fixed scale."""
        return self.tile_rows_at(1.0)

    def tile_rows_at(self, spacing: float | Sequence[float] | None) -> int | None:
        """Most rows of a MIP of ``spacing`` mm per pixel (None: 1 mm) the model sees at
        once, None without a fixed scale."""
        ppm = self.config.pixels_per_mm
        return (
            None if ppm is None else int(self.config.max_size / (ppm * spacing_pair(spacing)[0]))
        )

    def predict(
        self,
        image: np.ndarray,
        min_score: float | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> Prediction:
        """Vertebrae on one 2D MIP (windowed HU, (rows, cols)) of ``spacing`` mm per
        pixel (a number or (row, col); None: 1 mm, the pipeline's grid). A model at a
        fixed scale sees the MIP at its pixels per mm; the others ignore the spacing."""
        return self.predict_batch([image], min_score, spacing)[0]

    def predict_batch(
        self,
        images: list[np.ndarray],
        min_score: float | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> list[Prediction]:
        """:meth:`predict` on several MIPs of the same ``spacing`` at once (a MIP taller
        than :meth:`tile_rows_at` is predicted in overlapping tiles)."""
        arrays = [_check_image(im) for im in images]
        ms = self.min_score if min_score is None else float(min_score)
        limit = self.tile_rows_at(spacing)
        if limit is not None and any(a.shape[0] > limit for a in arrays):
            dets = [self.detect(a, ms, spacing) for a in arrays]
        else:
            tensors = [image_to_tensor(a, self.hu_max).to(self.device) for a in arrays]
            with input_spacing(self.model, spacing):
                dets = raw_detections(self.model, tensors, ms, self.box_iou)
        return [self.finish(d, a.shape, ms, spacing) for d, a in zip(dets, arrays, strict=True)]

    def detect(
        self,
        image: np.ndarray,
        min_score: float = 0.0,
        spacing: float | Sequence[float] | None = None,
    ) -> dict[str, torch.Tensor]:
        """:func:`~napari_vertebra.model.detect.raw_detections` of one MIP of ``spacing``
        mm per pixel (tiled when taller than :meth:`tile_rows_at`), for :meth:`finish` at
        any threshold >= ``min_score`` (the Predict widget's slider)."""
        a = _check_image(image)
        limit = self.tile_rows_at(spacing)
        with input_spacing(self.model, spacing):
            if limit is None or a.shape[0] <= limit:
                t = image_to_tensor(a, self.hu_max).to(self.device)
                return raw_detections(self.model, [t], min_score, self.box_iou)[0]
            overlap = TILE_OVERLAP_MM / spacing_pair(spacing)[0]
            parts = []
            for r0, r1 in row_tiles(a.shape[0], limit, overlap):
                t = image_to_tensor(a[r0:r1], self.hu_max).to(self.device)
                det = raw_detections(self.model, [t], min_score, self.box_iou)[0]
                parts.append((r0, r1, det))
        return merge_tiles(parts, a.shape, min_score, self.box_iou, logits_dim(self.model) - 1)

    def decoder_settings(self, spacing: float | Sequence[float] | None = None) -> dict[str, Any]:
        """The level decoder's keywords of :func:`postprocess` for this model: its class
        set, the MIP's mm per pixel (of ``spacing``: its rows', along the column; None
        without a fixed scale), the evidence weight, the training class shares."""
        pixel_mm = None if self.pixel_mm is None else spacing_pair(spacing)[0]
        return {
            "class_set": self.class_set,
            "pixel_mm": pixel_mm,
            "evidence_weight": self.config.level_evidence_weight,
            "class_frequencies": self.class_frequencies,
        }

    def finish(
        self,
        det: dict[str, torch.Tensor],
        shape: tuple[int, int],
        min_score: float | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> Prediction:
        """:func:`postprocess` of :meth:`detect`'s output (of a MIP of ``spacing``) with
        this predictor's settings."""
        ms = self.min_score if min_score is None else float(min_score)
        settings = self.decoder_settings(spacing)
        pred = postprocess(det, shape, ms, self.order, self.box_iou, **settings)
        if pred.levels is not None:
            for key, name in (("val_level_certain_id_rate", "validation_certain_id_rate"),
                              ("val_id_rate", "validation_id")):  # fmt: skip
                if key in self.validation:
                    pred.meta[name] = self.validation[key]
            if self.validation_on:
                pred.meta["validation_on"] = self.validation_on
        return pred

    __call__ = predict


def postprocess(
    det: dict[str, torch.Tensor],
    shape: tuple[int, int],
    min_score: float,
    order: bool = True,
    box_iou: float | Literal["auto"] | None = "auto",
    class_set: str | ClassSet | None = None,
    pixel_mm: float | None = None,
    evidence_weight: float = 1.0,
    class_frequencies: np.ndarray | None = None,
) -> Prediction:
    """Score filter, duplicate suppression, one instance per class at most, level decoding.

    The score of a detection is the probability of its class (:func:`~napari_vertebra.
    model.detect.detection_scores`); ``min_score`` applies to it, never to the vertebra
    probability 1 - p(background) (kept as ``vertebra_scores``). The anatomical order may
    then move a detection to a neighbouring class; its score stays the probability that
    let it through. The final box's class probabilities (``class_probs``) drive that
    order. Duplicates: by decreasing score, a detection whose box has IoU above
    ``box_iou`` (None: no box step; "auto": the one ``det`` was computed with, else
    :data:`~napari_vertebra.model.detect.DEDUP_BOX_IOU`) with a kept one is dropped, then
    one whose mask overlaps a kept mask by more than half of the smaller. ``det`` comes
    from :func:`~napari_vertebra.model.detect.raw_detections` (masks of the survivors
    only; ``min_score`` must be at least, and ``box_iou`` the same as, the ones it was
    given) or :func:`~napari_vertebra.model.detect.full_detections` (masks of every
    detection).

    Levels (``order=True``): :func:`~napari_vertebra.model.levels.decode_levels` names the
    instances jointly from their class probabilities (spine variants of ``class_set``;
    default: the set whose size matches ``class_probs``), with the size prior when
    ``pixel_mm`` (mm per image pixel) is given, ``evidence_weight`` and
    ``class_frequencies`` (the training share of each class, divided out);
    ``Prediction.levels`` holds the decoding and its level confidence.
    """
    inst = _survivors(det, min_score, box_iou)
    masks, labels, probs = inst["masks"], inst["labels"], inst["probs"]
    inst["rows"] = (
        np.array([np.nonzero(m)[0].mean() for m in masks]) if len(masks) else np.zeros(0)
    )
    n_cls = probs.shape[1]
    cs = get_class_set(class_set) if class_set is not None else class_set_of_size(n_cls)
    decoding, meta = None, {}
    if order and len(masks):
        inst, decoding, meta = _name_levels(inst, cs, pixel_mm, evidence_weight, class_frequencies)
    else:  # the most probable class of each instance
        inst["classes"] = probs.argmax(1) + 1 if len(masks) else labels.copy()
    top = np.argsort(inst["rows"], kind="stable")
    return Prediction(
        masks=inst["masks"][top].reshape(-1, *shape),
        boxes=inst["boxes"][top].reshape(-1, 4),
        classes=inst["classes"][top].astype(int),
        scores=inst["scores"][top],
        raw_classes=inst["labels"][top].astype(int),
        class_probs=inst["probs"][top].reshape(-1, n_cls),
        shape=tuple(shape),
        vertebra_scores=inst["vscores"][top],
        levels=decoding if decoding is not None or not order or meta else _no_levels(cs),
        meta=meta,
    )


def _survivors(
    det: dict[str, torch.Tensor], min_score: float, box_iou: float | Literal["auto"] | None
) -> dict[str, np.ndarray]:
    """The detections of ``det`` that pass ``min_score`` and the duplicate suppression
    (at most one per class, by decreasing score): ``masks``, ``boxes``, ``labels``,
    ``probs`` (the class set's probabilities, background left out), ``scores``,
    ``vscores`` (:func:`~napari_vertebra.model.detect.vertebra_scores`)."""
    scores = detection_scores(det)
    vscores = vertebra_scores(det)
    if "keep" in det:  # from raw_detections: masks of the survivors only
        floor = float(det["mask_min_score"])
        if min_score < floor:
            raise ValueError(
                f"these detections have masks for scores >= {floor} only, not {min_score}"
            )
        given = float(det["box_iou"])
        if box_iou != "auto" and not np.array_equal(given, iou_tag(box_iou), equal_nan=True):
            raise ValueError(
                f"these detections were de-duplicated at box IoU {given}, not {box_iou}"
            )
        idx = det["keep"].cpu().numpy().astype(int)
        ok = scores[idx] >= min_score  # a prefix: keep runs by decreasing score
        sel = idx[ok]
        # free of duplicates already, at most 17, by decreasing score
        masks = (det["masks"][:, 0] > 0.5).cpu().numpy()[ok]
        return _instances(det, sel, masks, scores, vscores)
    if box_iou == "auto":  # masks of every detection (full_detections)
        box_iou = DEDUP_BOX_IOU
    keep = candidates(scores, det["boxes"].cpu().numpy(), min_score, box_iou)
    masks = (det["masks"][:, 0] > 0.5).cpu().numpy()[keep]
    inst = _instances(det, keep, masks, scores, vscores)
    sel = mask_overlap_suppression(masks, inst["scores"])[: inst["probs"].shape[1]]
    return {k: v[sel] for k, v in inst.items()}


def _instances(det, sel: np.ndarray, masks: np.ndarray, scores, vscores) -> dict[str, np.ndarray]:
    return {
        "masks": masks,
        "boxes": det["boxes"].cpu().numpy()[sel],
        "labels": det["labels"].cpu().numpy()[sel],
        "probs": det["class_probs"].cpu().numpy()[sel][:, 1:],
        "scores": scores[sel],
        "vscores": vscores[sel],
    }


def _name_levels(
    inst: dict[str, np.ndarray],
    cs: ClassSet,
    pixel_mm: float | None,
    evidence_weight: float,
    class_frequencies: np.ndarray | None,
) -> tuple[dict[str, np.ndarray], LevelDecoding | None, dict[str, Any]]:
    """(the instances with ``classes``, the level decoding, meta) of :func:`postprocess`:
    :func:`~napari_vertebra.model.levels.decode_levels` of the instances top to bottom;
    an instance outside the class set (e.g. C6) is dropped. When no joint naming exists
    (two instances at one centroid), the anatomical order of the class probabilities
    names them, and ``meta["levels_error"]`` says why (never a silent 0)."""
    masks, probs, rows = inst["masks"], inst["probs"], inst["rows"]
    top_first = np.argsort(rows, kind="stable")
    cen = None
    if pixel_mm is not None:
        cols = np.array([np.nonzero(m)[1].mean() for m in masks])
        cen = np.stack([rows, cols], 1)[top_first] * float(pixel_mm)
    v = inst["vscores"][top_first]
    try:
        d = decode_levels(
            probs[top_first], cs, cen, evidence_weight=evidence_weight,
            class_frequencies=class_frequencies,
            vertebra_probs=None if np.isnan(v).any() else np.clip(v, 0.0, 1.0),
        )  # fmt: skip
    except ValueError as e:  # e.g. two instances at one centroid: no joint naming
        n_cls = probs.shape[1]
        classes = order_classes(probs, rows) if n_cls == 17 else probs.argmax(1) + 1
        return {**inst, "classes": classes}, None, {"levels_error": str(e)}
    classes = np.empty(len(masks), int)
    classes[top_first] = d.class_ids
    inst = {**inst, "classes": classes}
    named = classes > 0  # a detection outside the class set (e.g. C6) is dropped
    if named.all():
        return inst, d, {}
    # the decoding's levels run top to bottom, as the kept instances will
    d = replace(
        d, levels=tuple(lv for lv in d.levels if lv), class_ids=d.class_ids[d.class_ids > 0]
    )
    return {k: v[named] for k, v in inst.items()}, d, {}


def _no_levels(cs: ClassSet) -> LevelDecoding:
    return decode_levels(np.zeros((0, len(cs.ids))), cs)


def predict(model_or_predictor, image: np.ndarray, **kw) -> list[VertebraAnnotation]:
    """Vertebra annotations on one MIP, from a :class:`Predictor` or a checkpoint path."""
    p = (
        model_or_predictor
        if isinstance(model_or_predictor, Predictor)
        else Predictor(model_or_predictor, **kw)
    )
    return p.predict(image).annotations()
