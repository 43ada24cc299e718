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
import torch.nn.functional as F

from napari_vertebra.annotation.polygons import mask_to_polygons
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import ClassSet, class_name, class_set_of_size, get_class_set

from .anatomy import MaskSuppressor, box_suppression, mask_overlap_suppression, order_classes
from .build import model_from_checkpoint
from .config import TrainConfig, as_config
from .data import image_to_tensor
from .device import resolve_device
from .levels import CERTAIN, LevelDecoding, decode_levels
from .levels import class_frequencies as _training_shares
from .scale import TILE_OVERLAP_MM, row_tiles

__all__ = [
    "DEDUP_BOX_IOU",
    "TEST_SETTINGS",
    "Prediction",
    "Predictor",
    "apply_test_settings",
    "detection_scores",
    "full_detections",
    "merge_tiles",
    "postprocess",
    "predict",
    "raw_detections",
    "vertebra_scores",
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
        # how far a "certain" naming of this model is to be trusted: its validation
        sure = self.meta.get("validation_certain_id_rate")
        if sure is not None and self.levels.confidence >= CERTAIN:
            only = "only " if sure < CERTAIN else ""
            text += (
                f" (on this model's validation images, namings called certain were "
                f"identified at {only}{sure:.2f})"
            )
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


def _box_stage(model, images: list[torch.Tensor]):
    """transform -> backbone -> RPN -> box head, as torchvision's eval forward, without
    the mask head. Returns (transformed batch, features, original sizes, detections in
    the transformed frame, with ``class_probs``)."""
    model.eval()
    original = [tuple(im.shape[-2:]) for im in images]
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    rh = model.roi_heads
    x = rh.box_head(rh.box_roi_pool(features, proposals, batch.image_sizes))
    class_logits, box_regression = rh.box_predictor(x)
    boxes, scores, labels = rh.postprocess_detections(
        class_logits, box_regression, proposals, batch.image_sizes
    )
    dets = [
        {"boxes": b, "labels": lab, "scores": sc}
        for b, sc, lab in zip(boxes, scores, labels, strict=True)
    ]
    _add_class_probs(model, features, batch.image_sizes, dets)
    return batch, features, original, dets


def _add_class_probs(model, features, image_sizes, dets) -> None:
    """``class_probs`` (N, 18): the box head run once more on the final boxes."""
    rh = model.roi_heads
    boxes = [d["boxes"] for d in dets]
    if sum(len(b) for b in boxes):
        x = rh.box_head(rh.box_roi_pool(features, boxes, image_sizes))
        logits, _ = rh.box_predictor(x)
        probs = F.softmax(logits, -1).split([len(b) for b in boxes])
    else:
        probs = [b.new_zeros((0, logits_dim(model))) for b in boxes]
    for d, p in zip(dets, probs, strict=True):
        d["class_probs"] = p


def _mask_probs(model, features, image_sizes, i, boxes, labels, original) -> torch.Tensor:
    """(n, 1, H, W) mask probabilities at the original size of ``boxes`` (transformed
    frame) of image ``i``: the mask head part of torchvision's eval forward."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    rh = model.roi_heads
    per_image = [boxes if k == i else boxes.new_zeros((0, 4)) for k in range(len(image_sizes))]
    x = rh.mask_predictor(rh.mask_head(rh.mask_roi_pool(features, per_image, image_sizes)))
    probs = maskrcnn_inference(x, [labels])[0]
    out = model.transform.postprocess(
        [{"boxes": boxes, "masks": probs}], [image_sizes[i]], [original]
    )
    return out[0]["masks"]


def detection_scores(det: dict[str, torch.Tensor]) -> np.ndarray:
    """(N,) confidence of detections: the probability of each detection's class
    (torchvision's ``scores``, softmax of the box head on the proposal). ``min_score``
    applies to this number (matterport's DETECTION_MIN_CONFIDENCE)."""
    return det["scores"].detach().cpu().numpy()


def vertebra_scores(det: dict[str, torch.Tensor]) -> np.ndarray:
    """(N,) probability that each detection is some vertebra, 1 - p(background) of the
    box head on the final box (NaN without ``class_probs``). For review only: an
    untrained model gives about 17/18 everywhere, so it never filters detections."""
    if "class_probs" in det and len(det["class_probs"]) == len(det["scores"]):
        return 1.0 - det["class_probs"][:, 0].detach().cpu().numpy()
    return np.full(len(det["scores"]), np.nan)


#: Masks computed per round beyond those still needed (some turn out duplicates).
_MASK_SLACK = 2
#: Default class-agnostic box IoU above which a lower-scored detection is a duplicate.
DEDUP_BOX_IOU = 0.5


def _iou_tag(box_iou: float | None) -> float:
    return float("nan") if box_iou is None else float(box_iou)


def _candidates(scores: np.ndarray, boxes: np.ndarray, min_score: float, box_iou) -> np.ndarray:
    """Indices with score >= ``min_score``, by decreasing score, after box suppression.

    ``scores`` are class probabilities: of the copies of one vertebra under several
    classes (Mask R-CNN boxes each ROI once per class), the most probable class's comes
    first and is kept, with its class-specific box and mask."""
    cand = np.nonzero(scores >= min_score)[0]
    order = cand[np.argsort(-scores[cand].astype(float), kind="stable")]
    return order[box_suppression(boxes[order], box_iou)]


@torch.inference_mode()
def raw_detections(
    model,
    images: list[torch.Tensor],
    min_score: float = 0.0,
    box_iou: float | None = DEDUP_BOX_IOU,
) -> list[dict[str, torch.Tensor]]:
    """Box detections of Mask R-CNN, plus masks of those :func:`postprocess` can keep.

    ``boxes``, ``labels``, ``scores`` (N, up to ``box_detections_per_img``) are those of
    ``model(images)`` in eval mode (``scores``: the probability of the detection's class);
    ``class_probs`` (N, 18) come from the box head run once more on the final boxes. The
    mask head runs only on the detections whose class probability passes ``min_score``
    and the duplicate suppression (class-agnostic box
    IoU above ``box_iou``, then mask overlap), at most one per class, found in order of decreasing
    score a few at a time (the others cannot be in the output of :func:`postprocess` at
    any threshold >= ``min_score``). ``keep`` (K,) indexes them (by decreasing score),
    ``masks`` (K, 1, H, W) holds their probabilities at the original size,
    ``mask_min_score`` and ``box_iou`` the threshold and IoU they were computed for,
    ``mask_rois`` how many boxes the mask head ran on.
    """
    batch, features, original, dets = _box_stage(model, images)
    cap = logits_dim(model) - 1  # at most one instance per class
    out = []
    for i, d in enumerate(dets):
        scores = detection_scores(d)
        boxes = model.transform.postprocess(
            [{"boxes": d["boxes"]}], [batch.image_sizes[i]], [original[i]]
        )[0]["boxes"]
        order = _candidates(scores, boxes.cpu().numpy(), min_score, box_iou)
        sup = MaskSuppressor()
        keep: list[int] = []
        masks: list[torch.Tensor] = []
        pos = 0
        while pos < len(order) and len(keep) < cap:
            # as many as still needed, times the share of duplicates so far, plus slack
            per_kept = pos / len(keep) if keep else 1.0
            n = int(np.ceil((cap - len(keep)) * per_kept)) + _MASK_SLACK
            idx = order[pos : pos + n]
            pos += len(idx)
            sel = torch.as_tensor(idx, device=d["boxes"].device)
            probs = _mask_probs(
                model,
                features,
                batch.image_sizes,
                i,
                d["boxes"][sel],
                d["labels"][sel],
                original[i],
            )
            for k, m in enumerate((probs[:, 0] > 0.5).cpu().numpy()):
                if len(keep) < cap and sup.offer(m):
                    keep.append(int(idx[k]))
                    masks.append(probs[k])
        out.append(
            {
                "boxes": boxes,
                "labels": d["labels"],
                "scores": d["scores"],
                "class_probs": d["class_probs"],
                "masks": (torch.stack(masks) if masks else boxes.new_zeros((0, 1, *original[i]))),
                "keep": torch.as_tensor(keep, dtype=torch.int64),
                "mask_min_score": torch.tensor(float(min_score), dtype=torch.float64),
                "box_iou": torch.tensor(_iou_tag(box_iou), dtype=torch.float64),
                "mask_rois": torch.tensor(pos),
            }
        )
    return out


@torch.inference_mode()
def full_detections(model, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """torchvision's eval forward (the mask head on every detection) plus ``class_probs``.

    The reference that :func:`raw_detections` agrees with after :func:`postprocess`
    (which takes either).
    """
    model.eval()
    original = [tuple(im.shape[-2:]) for im in images]
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    proposals, _ = model.rpn(batch, features)
    dets, _ = model.roi_heads(features, proposals, batch.image_sizes)
    _add_class_probs(model, features, batch.image_sizes, dets)
    return model.transform.postprocess(dets, batch.image_sizes, original)


def logits_dim(model) -> int:
    return model.roi_heads.box_predictor.cls_score.out_features


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
        #: mm per MIP pixel for the level decoder's size prior: our MIPs are 1 mm; only a
        #: model that sees a fixed physical scale (``pixels_per_mm``) uses the prior
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
        """Most MIP rows the model sees at once (fixed scale), None without a fixed scale."""
        ppm = self.config.pixels_per_mm
        return None if ppm is None else int(self.config.max_size / ppm)

    def predict(self, image: np.ndarray, min_score: float | None = None) -> Prediction:
        """Vertebrae on one 2D MIP (windowed HU, (rows, cols))."""
        return self.predict_batch([image], min_score)[0]

    def predict_batch(
        self, images: list[np.ndarray], min_score: float | None = None
    ) -> list[Prediction]:
        """:meth:`predict` on several MIPs at once (a MIP taller than :attr:`tile_rows`
        is predicted in overlapping tiles)."""
        arrays = [_check_image(im) for im in images]
        ms = self.min_score if min_score is None else float(min_score)
        if self.tile_rows is not None and any(a.shape[0] > self.tile_rows for a in arrays):
            dets = [self.detect(a, ms) for a in arrays]
        else:
            tensors = [image_to_tensor(a, self.hu_max).to(self.device) for a in arrays]
            dets = raw_detections(self.model, tensors, ms, self.box_iou)
        return [self.finish(d, a.shape, ms) for d, a in zip(dets, arrays, strict=True)]

    def detect(self, image: np.ndarray, min_score: float = 0.0) -> dict[str, torch.Tensor]:
        """:func:`raw_detections` of one MIP (tiled when taller than :attr:`tile_rows`),
        for :meth:`finish` at any threshold >= ``min_score`` (the Predict widget's
        slider)."""
        a = _check_image(image)
        limit = self.tile_rows
        if limit is None or a.shape[0] <= limit:
            t = image_to_tensor(a, self.hu_max).to(self.device)
            return raw_detections(self.model, [t], min_score, self.box_iou)[0]
        overlap = TILE_OVERLAP_MM / (self.pixel_mm or 1.0)
        tiles = row_tiles(a.shape[0], limit, overlap)
        parts = []
        for r0, r1 in tiles:
            t = image_to_tensor(a[r0:r1], self.hu_max).to(self.device)
            parts.append((r0, r1, raw_detections(self.model, [t], min_score, self.box_iou)[0]))
        return merge_tiles(parts, a.shape, min_score, self.box_iou, logits_dim(self.model) - 1)

    def finish(
        self, det: dict[str, torch.Tensor], shape: tuple[int, int], min_score: float | None = None
    ) -> Prediction:
        """:func:`postprocess` of :meth:`detect`'s output with this predictor's settings."""
        ms = self.min_score if min_score is None else float(min_score)
        pred = postprocess(
            det,
            shape,
            ms,
            self.order,
            self.box_iou,
            class_set=self.class_set,
            pixel_mm=self.pixel_mm,
            evidence_weight=self.config.level_evidence_weight,
            class_frequencies=self.class_frequencies,
        )
        sure = self.validation.get("val_level_certain_id_rate")
        if pred.levels is not None and sure is not None:
            pred.meta["validation_certain_id_rate"] = sure
        return pred

    __call__ = predict


def merge_tiles(
    parts: list[tuple[int, int, dict[str, torch.Tensor]]],
    shape: tuple[int, int],
    min_score: float,
    box_iou: float | None,
    cap: int,
) -> dict[str, torch.Tensor]:
    """One :func:`raw_detections` dict for a tall MIP from those of its row tiles.

    ``parts`` are (first row, end row, detections of that tile). An instance touching a
    tile's cut edge (not the image's) is dropped: the overlap is wider than any vertebra,
    so the neighbouring tile holds it whole. The rest, by decreasing score, go through the
    box and mask duplicate suppression again, at most ``cap``.
    """
    h, w = shape
    boxes, labels, scores, probs, masks, kept = [], [], [], [], [], []
    offset, rois = 0, 0
    edge = 2.0  # px
    for r0, r1, d in parts:
        b = d["boxes"].detach().cpu().clone()
        b[:, 1] += r0
        b[:, 3] += r0
        n = len(b)
        keep = d["keep"].cpu().numpy().astype(int)
        for k, i in enumerate(keep):
            y0, y1 = float(b[i, 1]), float(b[i, 3])
            if (r0 > 0 and y0 <= r0 + edge) or (r1 < h and y1 >= r1 - edge):
                continue
            full = torch.zeros((1, h, w), dtype=d["masks"].dtype)
            full[:, r0:r1] = d["masks"][k].cpu()
            kept.append(offset + int(i))
            masks.append(full)
        boxes.append(b)
        labels.append(d["labels"].cpu())
        scores.append(d["scores"].cpu())
        probs.append(d["class_probs"].cpu())
        rois += int(d["mask_rois"])
        offset += n
    all_boxes = torch.cat(boxes) if boxes else torch.zeros((0, 4))
    all_scores = torch.cat(scores) if scores else torch.zeros(0)
    order = sorted(range(len(kept)), key=lambda j: -float(all_scores[kept[j]]))
    cand = np.array([kept[j] for j in order], dtype=int)
    sel = box_suppression(all_boxes.numpy()[cand], box_iou) if len(cand) else cand
    sup = MaskSuppressor()
    final, final_masks = [], []
    for j in sel:
        m = masks[order[j]]
        if len(final) < cap and sup.offer((m[0] > 0.5).numpy()):
            final.append(int(cand[j]))
            final_masks.append(m)
    return {
        "boxes": all_boxes,
        "labels": torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64),
        "scores": all_scores,
        "class_probs": torch.cat(probs) if probs else torch.zeros((0, cap + 1)),
        "masks": torch.stack(final_masks) if final_masks else torch.zeros((0, 1, h, w)),
        "keep": torch.as_tensor(final, dtype=torch.int64),
        "mask_min_score": torch.tensor(float(min_score), dtype=torch.float64),
        "box_iou": torch.tensor(_iou_tag(box_iou), dtype=torch.float64),
        "mask_rois": torch.tensor(rois),
    }


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

    The score of a detection is the probability of its class (:func:`detection_scores`);
    ``min_score`` applies to it, never to the vertebra probability 1 - p(background)
    (kept as ``vertebra_scores``). The anatomical order may then move a detection to a
    neighbouring class; its score stays the probability that let it through. The final
    box's class probabilities (``class_probs``) drive that order. Duplicates: by decreasing
    score, a detection whose box has IoU above ``box_iou`` (None: no box step; "auto":
    the one ``det`` was computed with, else :data:`DEDUP_BOX_IOU`) with a kept one is
    dropped, then one whose mask overlaps a kept mask by more than half of the smaller.
    ``det`` comes from :func:`raw_detections` (masks of the survivors only; ``min_score``
    must be at least, and ``box_iou`` the same as, the ones it was given) or
    :func:`full_detections` (masks of every detection).

    Levels (``order=True``): :func:`~napari_vertebra.model.levels.decode_levels` names the
    instances jointly from their class probabilities (consecutive top to bottom, spine
    variants of ``class_set``; default: the set whose size matches ``class_probs``), with
    the size prior on centroid spacing when ``pixel_mm`` (mm per image pixel) is given,
    ``evidence_weight`` on the class evidence and ``class_frequencies`` (the training
    share of each class, divided out); ``Prediction.levels`` holds the decoding and its
    level confidence.
    """
    scores = detection_scores(det)
    vscores = vertebra_scores(det)
    if "keep" in det:  # from raw_detections: masks of the survivors only
        floor = float(det["mask_min_score"])
        if min_score < floor:
            raise ValueError(
                f"these detections have masks for scores >= {floor} only, not {min_score}"
            )
        given = float(det["box_iou"])
        if box_iou != "auto" and not np.array_equal(given, _iou_tag(box_iou), equal_nan=True):
            raise ValueError(
                f"these detections were de-duplicated at box IoU {given}, not {box_iou}"
            )
        idx = det["keep"].cpu().numpy().astype(int)
        ok = scores[idx] >= min_score  # a prefix: keep runs by decreasing score
        sel = idx[ok]
        # free of duplicates already, at most 17, by decreasing score
        masks = (det["masks"][:, 0] > 0.5).cpu().numpy()[ok]
        boxes = det["boxes"].cpu().numpy()[sel]
        labels = det["labels"].cpu().numpy()[sel]
        probs = det["class_probs"].cpu().numpy()[sel][:, 1:]
        scores, vscores = scores[sel], vscores[sel]
    else:  # masks of every detection (full_detections)
        if box_iou == "auto":
            box_iou = DEDUP_BOX_IOU
        keep = _candidates(scores, det["boxes"].cpu().numpy(), min_score, box_iou)
        masks = (det["masks"][:, 0] > 0.5).cpu().numpy()[keep]
        boxes = det["boxes"].cpu().numpy()[keep]
        labels = det["labels"].cpu().numpy()[keep]
        probs = det["class_probs"].cpu().numpy()[keep][:, 1:]
        scores, vscores = scores[keep], vscores[keep]
        sel = mask_overlap_suppression(masks, scores)[: probs.shape[1]]
        masks, boxes, labels, probs, scores, vscores = (
            a[sel] for a in (masks, boxes, labels, probs, scores, vscores)
        )
    rows = np.array([np.nonzero(m)[0].mean() for m in masks]) if len(masks) else np.zeros(0)
    n_cls = probs.shape[1]
    cs = get_class_set(class_set) if class_set is not None else class_set_of_size(n_cls)
    decoding = None
    meta: dict[str, Any] = {}
    if order and len(masks):
        top_first = np.argsort(rows, kind="stable")
        cen = None
        if pixel_mm is not None:
            cols = np.array([np.nonzero(m)[1].mean() for m in masks])
            cen = np.stack([rows, cols], 1)[top_first] * float(pixel_mm)
        try:
            d = decode_levels(
                probs[top_first],
                cs,
                cen,
                evidence_weight=evidence_weight,
                class_frequencies=class_frequencies,
            )
        except ValueError as e:  # e.g. two instances at one centroid: no joint naming
            classes = order_classes(probs, rows) if n_cls == 17 else probs.argmax(1) + 1
            meta["levels_error"] = str(e)  # said by level_summary, never a silent 0
        else:
            classes = np.empty(len(masks), int)
            classes[top_first] = d.class_ids
            decoding = d
            named = classes > 0  # a detection outside the class set (e.g. C6) is dropped
            if not named.all():
                masks, boxes, labels, probs, scores, vscores, rows, classes = (
                    a[named] for a in (masks, boxes, labels, probs, scores, vscores, rows, classes)
                )
                # the decoding's levels run top to bottom, as the kept instances will
                decoding = replace(
                    d,
                    levels=tuple(lv for lv in d.levels if lv),
                    class_ids=d.class_ids[d.class_ids > 0],
                )
    else:  # the most probable class of each instance
        classes = probs.argmax(1) + 1 if len(masks) else labels.copy()
    top = np.argsort(rows, kind="stable")
    return Prediction(
        masks=masks[top].reshape(-1, *shape),
        boxes=boxes[top].reshape(-1, 4),
        classes=classes[top].astype(int),
        scores=scores[top],
        raw_classes=labels[top].astype(int),
        class_probs=probs[top].reshape(-1, n_cls),
        shape=tuple(shape),
        vertebra_scores=vscores[top],
        levels=decoding if decoding is not None or not order or meta else _no_levels(cs),
        meta=meta,
    )


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
