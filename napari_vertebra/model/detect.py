"""The detector's passes: Mask R-CNN's box stage, its class probabilities and masks.

:func:`full_detections` is torchvision's eval forward (the mask head on every detection)
plus ``class_probs``; :func:`raw_detections` runs the mask head only on the detections
that :func:`~napari_vertebra.model.predict.postprocess` can keep (what prediction uses).
A detection's score is the probability of its class (:func:`detection_scores`);
:func:`vertebra_scores` is 1 - p(background), for review only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .anatomy import MaskSuppressor, box_suppression

__all__ = [
    "DEDUP_BOX_IOU",
    "candidates",
    "detection_scores",
    "full_detections",
    "iou_tag",
    "logits_dim",
    "raw_detections",
    "vertebra_scores",
]


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


def iou_tag(box_iou: float | None) -> float:
    """``box_iou`` as the number a detections dict stores (NaN for None)."""
    return float("nan") if box_iou is None else float(box_iou)


def candidates(scores: np.ndarray, boxes: np.ndarray, min_score: float, box_iou) -> np.ndarray:
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
    """Box detections of Mask R-CNN, plus masks of those :func:`~napari_vertebra.model.
    predict.postprocess` can keep.

    ``boxes``, ``labels``, ``scores`` (N, up to ``box_detections_per_img``) are those of
    ``model(images)`` in eval mode (``scores``: the probability of the detection's class);
    ``class_probs`` (N, 18) come from the box head run once more on the final boxes. The
    mask head runs only on the detections whose class probability passes ``min_score``
    and the duplicate suppression (class-agnostic box IoU above ``box_iou``, then mask
    overlap), at most one per class, found in order of decreasing score a few at a time
    (the others cannot be in the output of ``postprocess`` at any threshold >=
    ``min_score``). ``keep`` (K,) indexes them (by decreasing score), ``masks`` (K, 1, H,
    W) holds their probabilities at the original size, ``mask_min_score`` and
    ``box_iou`` the threshold and IoU they were computed for, ``mask_rois`` how many
    boxes the mask head ran on.
    """
    batch, features, original, dets = _box_stage(model, images)
    cap = logits_dim(model) - 1  # at most one instance per class
    out = []
    for i, d in enumerate(dets):
        boxes = model.transform.postprocess(
            [{"boxes": d["boxes"]}], [batch.image_sizes[i]], [original[i]]
        )[0]["boxes"]
        order = candidates(detection_scores(d), boxes.cpu().numpy(), min_score, box_iou)

        def probs_of(idx: np.ndarray, i=i, d=d) -> torch.Tensor:
            sel = torch.as_tensor(idx, device=d["boxes"].device)
            return _mask_probs(
                model, features, batch.image_sizes, i, d["boxes"][sel], d["labels"][sel],
                original[i],
            )  # fmt: skip

        keep, masks, rois = _survivor_masks(order, cap, probs_of)
        out.append(
            {
                "boxes": boxes,
                "labels": d["labels"],
                "scores": d["scores"],
                "class_probs": d["class_probs"],
                "masks": (torch.stack(masks) if masks else boxes.new_zeros((0, 1, *original[i]))),
                "keep": torch.as_tensor(keep, dtype=torch.int64),
                "mask_min_score": torch.tensor(float(min_score), dtype=torch.float64),
                "box_iou": torch.tensor(iou_tag(box_iou), dtype=torch.float64),
                "mask_rois": torch.tensor(rois),
            }
        )
    return out


def _survivor_masks(
    order: np.ndarray, cap: int, mask_probs: Callable[[np.ndarray], torch.Tensor]
) -> tuple[list[int], list[torch.Tensor], int]:
    """(kept indices, their mask probabilities, how many masks were computed): the
    first ``cap`` detections of ``order`` that the mask overlap suppression keeps, their
    masks computed a few at a time (as many as still needed, times the share of
    duplicates so far, plus :data:`_MASK_SLACK`)."""
    sup = MaskSuppressor()
    keep: list[int] = []
    masks: list[torch.Tensor] = []
    pos = 0
    while pos < len(order) and len(keep) < cap:
        per_kept = pos / len(keep) if keep else 1.0
        n = int(np.ceil((cap - len(keep)) * per_kept)) + _MASK_SLACK
        idx = order[pos : pos + n]
        pos += len(idx)
        probs = mask_probs(idx)
        for k, m in enumerate((probs[:, 0] > 0.5).cpu().numpy()):
            if len(keep) < cap and sup.offer(m):
                keep.append(int(idx[k]))
                masks.append(probs[k])
    return keep, masks, pos


@torch.inference_mode()
def full_detections(model, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """torchvision's eval forward (the mask head on every detection) plus ``class_probs``.

    The reference that :func:`raw_detections` agrees with after :func:`~napari_vertebra.
    model.predict.postprocess` (which takes either).
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
    """The number of classes of the box predictor (background included)."""
    return model.roi_heads.box_predictor.cls_score.out_features
