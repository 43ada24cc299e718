"""One-click vertebra outlines from a loaded model: the detection under the click.

Clicking inside a vertebra asks the model for *every* detection it has on the MIP, with
its mask, whatever its score (so a vertebra the threshold or the duplicate suppression
hid can still be picked), and returns the highest-scoring one whose mask contains the
click, as a polygon with its class and score. The detections of a MIP are computed once
and reused for the next clicks on the same image (:class:`ModelOutliner`), so only the
first click pays for the forward pass (about 1 s on a CPU for the smoke model).

``class_id`` is the detector's own class of that detection (its ``labels``, 1..K of the
model's class set); ``ordered_class_id`` the class Predict's anatomical ordering of all
the MIP's detections gives the same vertebra (usually the better guess: a single
detection's class is often a neighbour's). ``score`` is the detection's class
probability (the number ``min_score`` filters).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ModelOutline", "ModelOutliner", "candidates", "detection_under", "model_outline_at"]


@dataclass
class ModelOutline:
    """A detection under a click: ``polygon`` (N, 2) (row, col) px, ``class_id`` (the
    model's class, 1..K), ``score`` (its class probability, 0..1), ``mask`` (H, W) and
    ``ordered_class_id``: the class that Predict's anatomical ordering of all detections
    (at min_score 0) gives the same vertebra (mask IoU >= 0.5), None when no instance of
    that ordering matches."""

    polygon: np.ndarray
    class_id: int
    score: float
    mask: np.ndarray
    ordered_class_id: int | None = None


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def candidates(det: dict[str, Any]) -> dict[str, np.ndarray]:
    """The detections of one image that have a mask, as numpy: ``masks`` (K, H, W) bool
    (probability > 0.5), ``labels`` (K,) and ``scores`` (K,).

    ``det`` is :func:`~napari_vertebra.model.detect.full_detections`' dict (a mask for
    every detection) or :func:`~napari_vertebra.model.detect.raw_detections`' (masks of
    the detections ``keep`` indexes only)."""
    masks = _as_numpy(det["masks"])
    if masks.ndim == 4:
        masks = masks[:, 0]
    labels = _as_numpy(det["labels"]).astype(int)
    scores = _as_numpy(det["scores"]).astype(float)
    if "keep" in det:
        keep = _as_numpy(det["keep"]).astype(int)
        labels, scores = labels[keep], scores[keep]
    return {"masks": masks > 0.5, "labels": labels, "scores": scores}


def detection_under(cand: dict[str, np.ndarray], point_rc) -> int | None:
    """Index (into :func:`candidates`' arrays) of the highest-scoring detection whose mask
    holds the pixel at ``point_rc`` ((row, col) px); None when no mask does."""
    masks = cand["masks"]
    if masks.ndim != 3 or not len(masks):
        return None
    h, w = masks.shape[-2:]
    r, c = (round(float(v)) for v in point_rc)
    if not (0 <= r < h and 0 <= c < w):
        return None
    hit = np.flatnonzero(masks[:, r, c])
    if not hit.size:
        return None
    return int(hit[int(np.argmax(cand["scores"][hit]))])


def _detections(predictor, mip: np.ndarray, spacing: Any = None) -> dict[str, Any]:
    """:func:`candidates` of ``predictor`` on one MIP of ``spacing`` mm per pixel (None:
    1 mm): every detection with its mask (:func:`full_detections`, about 1 s on a CPU for
    the smoke model), or, for a MIP taller than the predictor's fixed-scale tile,
    :meth:`Predictor.detect` at min_score 0 (masks of the duplicate-free detections
    only)."""
    a = np.asarray(mip)
    tile_at = getattr(predictor, "tile_rows_at", None)
    tile = tile_at(spacing) if tile_at is not None else None
    if tile is not None and a.shape[0] > tile and hasattr(predictor, "detect"):
        det = predictor.detect(a, 0.0, spacing)
    else:
        from .data import image_to_tensor
        from .detect import full_detections
        from .scale import input_spacing

        t = image_to_tensor(a, predictor.hu_max).to(predictor.device)
        with input_spacing(predictor.model, spacing):
            det = full_detections(predictor.model, [t])[0]
    return {**candidates(det), **_ordered(predictor, det, a.shape, spacing)}


def _ordered(
    predictor, det: dict[str, Any], shape: tuple[int, int], spacing: Any = None
) -> dict[str, Any]:
    """``ordered_masks`` (N, H, W) and ``ordered_classes`` (N,) of Predict's result on the
    same detections at min_score 0 (:meth:`Predictor.finish`: duplicates suppressed,
    classes in anatomical order); empty without :meth:`Predictor.finish`, and only
    ``ordered_error`` (the message) when it fails: the detector's own class still serves."""
    finish = getattr(predictor, "finish", None)
    if finish is None:
        return {}
    try:
        pred = finish(det, shape, 0.0, spacing)
    except (ValueError, RuntimeError, KeyError) as e:
        return {"ordered_error": str(e)}
    return {
        "ordered_masks": np.asarray(pred.masks, bool).reshape(-1, *shape),
        "ordered_classes": np.asarray(pred.classes, int),
    }


def _ordered_class(cand: dict[str, Any], mask: np.ndarray) -> int | None:
    """The ordered class of the instance that best matches ``mask`` (IoU >= 0.5)."""
    masks = cand.get("ordered_masks")
    if masks is None or not len(masks):
        return None
    inter = (masks & mask).sum(axis=(1, 2))
    union = (masks | mask).sum(axis=(1, 2))
    iou = inter / np.maximum(union, 1)
    j = int(np.argmax(iou))
    return int(cand["ordered_classes"][j]) if iou[j] >= 0.5 else None


def model_outline_at(
    predictor,
    mip: np.ndarray,
    point_rc,
    detections: dict[str, Any] | None = None,
    tolerance_px: float = 1.0,
    spacing: Any = None,
) -> ModelOutline | None:
    """The outline of the model's highest-scoring detection under a click, or None.

    ``predictor``: a loaded :class:`~napari_vertebra.model.predict.Predictor`; ``mip``:
    2D windowed HU (rows, cols); ``point_rc``: the click (row, col) px; ``detections``:
    this MIP's :func:`candidates` when already computed (else computed here, with the
    MIP's ``spacing`` in mm per pixel, None: 1 mm).
    """
    from napari_vertebra.annotation.polygons import mask_to_polygons, rasterize

    cand = _detections(predictor, mip, spacing) if detections is None else detections
    i = detection_under(cand, point_rc)
    if i is None:
        return None
    mask = cand["masks"][i]
    # the part under the click (a fragmented mask gives several); the exact contour when
    # the simplified one leaves the clicked pixel out (a thin mask)
    r, c = (round(float(v)) for v in point_rc)
    poly = None
    for tol in (tolerance_px, 0.0):
        polys = mask_to_polygons(mask, tolerance_px=tol, min_area_px=1)
        poly = next((q for q in polys if rasterize(q, mask.shape)[r, c]), None)
        if poly is not None:
            break
    if poly is None:
        return None
    return ModelOutline(
        poly, int(cand["labels"][i]), float(cand["scores"][i]), mask, _ordered_class(cand, mask)
    )


class ModelOutliner:
    """:func:`model_outline_at` with the detections of the last MIP kept.

    Clicks on the same image (same shape, type and a checksum of its values) reuse its
    detections; another image, or :meth:`clear`, computes them anew.
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self._key: tuple | None = None
        self._det: dict[str, Any] | None = None

    @staticmethod
    def _key_of(mip: np.ndarray, spacing: Any = None) -> tuple:
        a = np.asarray(mip)
        step = max(1, a.size // 4096)
        sp = None if spacing is None else tuple(np.asarray(spacing, float).reshape(-1))
        return (a.shape, str(a.dtype), float(np.asarray(a.ravel()[::step], float).sum()), sp)

    def clear(self) -> None:
        """Forget the cached detections (e.g. after the model changed)."""
        self._key, self._det = None, None

    def detections(self, mip: np.ndarray, spacing: Any = None) -> dict[str, Any]:
        """:func:`candidates` of ``mip`` (of ``spacing`` mm per pixel), every score
        (cached for the last image)."""
        key = self._key_of(mip, spacing)
        if self._det is None or key != self._key:
            self._det = _detections(self.predictor, mip, spacing)
            self._key = key
        return self._det

    def outline_at(self, mip: np.ndarray, point_rc, spacing: Any = None) -> ModelOutline | None:
        """:func:`model_outline_at` on ``mip`` with the cached detections."""
        return model_outline_at(self.predictor, mip, point_rc, self.detections(mip, spacing))
