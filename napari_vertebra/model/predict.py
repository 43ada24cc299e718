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
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from napari_vertebra.annotation.polygons import mask_to_polygons
from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import VERTEBRAE

from .anatomy import MaskSuppressor, box_suppression, mask_overlap_suppression, order_classes
from .build import model_from_checkpoint
from .config import TrainConfig, as_config
from .data import image_to_tensor
from .device import resolve_device

__all__ = [
    "DEDUP_BOX_IOU",
    "TEST_SETTINGS",
    "Prediction",
    "Predictor",
    "apply_test_settings",
    "detection_scores",
    "full_detections",
    "postprocess",
    "predict",
    "raw_detections",
    "vertebra_scores",
]


@dataclass
class Prediction:
    """Vertebrae found on one image, sorted top to bottom.

    ``masks`` (N, H, W) bool; ``boxes`` (N, 4) (x0, y0, x1, y1) px; ``classes`` (N,)
    1..17 after the anatomical ordering; ``raw_classes`` the detector's own; ``scores``
    (N,) confidence: the probability of the detector's class (``raw_classes``), the number
    ``min_score`` filters on; ``class_probs`` (N, 17) probabilities of T1..L5 on the final
    box; ``vertebra_scores`` (N,) 1 - p(background) on the final box (is it a vertebra at
    all; for review, never a filter).
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

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Vertebra names of the instances (e.g. ``["T11", "T12", "L1"]``)."""
        return [VERTEBRAE[c - 1] for c in self.classes]

    def centroids(self) -> np.ndarray:
        """(N, 2) (row, col) mask centroids, px."""
        out = np.zeros((len(self), 2))
        for i, m in enumerate(self.masks):
            r, c = np.nonzero(m)
            if r.size:
                out[i] = r.mean(), c.mean()
        return out

    def label_image(self) -> np.ndarray:
        """uint8 class image (0 background, 1..17); higher scores paint last."""
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
    IoU above ``box_iou``, then mask overlap), at most 17, found in order of decreasing
    score a few at a time (the others cannot be in the output of :func:`postprocess` at
    any threshold >= ``min_score``). ``keep`` (K,) indexes them (by decreasing score),
    ``masks`` (K, 1, H, W) holds their probabilities at the original size,
    ``mask_min_score`` and ``box_iou`` the threshold and IoU they were computed for,
    ``mask_rois`` how many boxes the mask head ran on.
    """
    batch, features, original, dets = _box_stage(model, images)
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
        while pos < len(order) and len(keep) < len(VERTEBRAE):
            # as many as still needed, times the share of duplicates so far, plus slack
            per_kept = pos / len(keep) if keep else 1.0
            n = int(np.ceil((len(VERTEBRAE) - len(keep)) * per_kept)) + _MASK_SLACK
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
                if len(keep) < len(VERTEBRAE) and sup.offer(m):
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
        if isinstance(checkpoint, torch.nn.Module):
            self.model = checkpoint
            self.config = as_config(config)
        else:
            self.model, ckpt = model_from_checkpoint(checkpoint, "cpu")
            self.config = as_config(ckpt["config"])
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

    def predict(self, image: np.ndarray, min_score: float | None = None) -> Prediction:
        """Vertebrae on one 2D MIP (windowed HU, (rows, cols))."""
        return self.predict_batch([image], min_score)[0]

    def predict_batch(
        self, images: list[np.ndarray], min_score: float | None = None
    ) -> list[Prediction]:
        """:meth:`predict` on several MIPs at once."""
        arrays = [_check_image(im) for im in images]
        tensors = [image_to_tensor(a, self.hu_max).to(self.device) for a in arrays]
        ms = self.min_score if min_score is None else float(min_score)
        dets = raw_detections(self.model, tensors, ms, self.box_iou)
        return [
            postprocess(d, a.shape, ms, self.order, self.box_iou)
            for d, a in zip(dets, arrays, strict=True)
        ]

    __call__ = predict


def postprocess(
    det: dict[str, torch.Tensor],
    shape: tuple[int, int],
    min_score: float,
    order: bool = True,
    box_iou: float | Literal["auto"] | None = "auto",
) -> Prediction:
    """Score filter, duplicate suppression, at most 17 instances, anatomical order.

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
        sel = mask_overlap_suppression(masks, scores)[: len(VERTEBRAE)]
        masks, boxes, labels, probs, scores, vscores = (
            a[sel] for a in (masks, boxes, labels, probs, scores, vscores)
        )
    rows = np.array([np.nonzero(m)[0].mean() for m in masks]) if len(masks) else np.zeros(0)
    if order and len(masks):
        classes = order_classes(probs, rows)
    else:  # the most probable class of each instance
        classes = probs.argmax(1) + 1 if len(masks) else labels.copy()
    top = np.argsort(rows, kind="stable")
    return Prediction(
        masks=masks[top].reshape(-1, *shape),
        boxes=boxes[top].reshape(-1, 4),
        classes=classes[top].astype(int),
        scores=scores[top],
        raw_classes=labels[top].astype(int),
        class_probs=probs[top].reshape(-1, len(VERTEBRAE)),
        shape=tuple(shape),
        vertebra_scores=vscores[top],
    )


def predict(model_or_predictor, image: np.ndarray, **kw) -> list[VertebraAnnotation]:
    """Vertebra annotations on one MIP, from a :class:`Predictor` or a checkpoint path."""
    p = (
        model_or_predictor
        if isinstance(model_or_predictor, Predictor)
        else Predictor(model_or_predictor, **kw)
    )
    return p.predict(image).annotations()
