"""Per-vertebra metrics (pure numpy, no torch): Dice, identification, neighbour confusions.

Dice of two masks is :func:`napari_vertebra.annotation.polygons.dice`.

Inputs per image: ground-truth class ids (N,) with masks (N, H, W) and predicted class ids
(M,) with masks (M, H, W). Centroids are (row, col) px; distances are in mm, from the
image's pixel spacing (row mm, col mm): 1 mm on the preprocessed MIP.

Identification follows VerSe (Sekuboyina et al. 2021, after Glocker et al. 2013): a true
vertebra *i* is identified when the prediction carrying its label lies within 20 mm of
its centroid **and** *i* is the true vertebra closest to that prediction. Predictions of
other labels never count for or against *i* (a copy under a level the scan does not
show cannot steal it). With several predictions of one label, the highest-scored one
stands for the label (VerSe submissions have one centroid per label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_vertebra.annotation.polygons import dice

__all__ = [
    "Identification",
    "centroids",
    "dice_per_vertebra",
    "identification",
    "identify",
    "one_per_label",
]


def centroids(masks: np.ndarray) -> np.ndarray:
    """(N, 2) (row, col) centroids of (N, H, W) masks (NaN for an empty mask)."""
    out = np.full((len(masks), 2), np.nan)
    for i, m in enumerate(masks):
        r, c = np.nonzero(m)
        if r.size:
            out[i] = r.mean(), c.mean()
    return out


def dice_per_vertebra(
    gt_classes: np.ndarray, gt_masks: np.ndarray, pred_classes: np.ndarray, pred_masks: np.ndarray
) -> np.ndarray:
    """Dice of each true vertebra with the prediction(s) of its class (0 when missing)."""
    out = np.zeros(len(gt_classes))
    pc = np.asarray(pred_classes)
    for i, (c, m) in enumerate(zip(gt_classes, gt_masks, strict=True)):
        sel = pc == c
        pred = np.any(pred_masks[sel], axis=0) if sel.any() else np.zeros_like(m, bool)
        out[i] = dice(m, pred)
    return out


def one_per_label(classes: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """Indices of the highest-scored prediction of each label (the first one when
    ``scores`` is None or tied), in input order."""
    cls = np.asarray(classes).reshape(-1)
    if cls.size == 0:
        return np.zeros(0, dtype=int)
    sc = np.zeros(len(cls)) if scores is None else np.asarray(scores, float).reshape(-1)
    order = np.lexsort((np.arange(len(cls)), -sc))  # by decreasing score, then index
    _, first = np.unique(cls[order], return_index=True)
    return np.sort(order[first])


@dataclass
class Identification:
    """VerSe identification of the true vertebrae of one image.

    ``identified`` (N,) bool; ``distance_mm`` (N,) distance from each true centroid to
    the prediction with its label (NaN when there is none); ``confusions`` [(true class,
    predicted class)] for predictions within ``max_dist`` of their closest true vertebra
    whose label is that vertebra's class +- 1.
    """

    identified: np.ndarray
    distance_mm: np.ndarray
    confusions: list[tuple[int, int]] = field(default_factory=list)

    @property
    def rate(self) -> float | None:
        """Identified fraction of the true vertebrae (None without any)."""
        return float(self.identified.mean()) if len(self.identified) else None

    @property
    def localisation_mm(self) -> np.ndarray:
        """Distances (mm) of the identified vertebrae to their predictions."""
        return self.distance_mm[self.identified]


def identification(
    gt_classes: np.ndarray,
    gt_centroids: np.ndarray,
    pred_classes: np.ndarray,
    pred_centroids: np.ndarray,
    pred_scores: np.ndarray | None = None,
    max_dist: float = 20.0,
    spacing: Sequence[float] = (1.0, 1.0),
) -> Identification:
    """VerSe identification (module doc) of N true vertebrae by M predictions.

    Centroids are (row, col) px (NaN for an empty mask: never identified);
    ``spacing`` (row mm, col mm) turns them into mm; ``max_dist`` is in mm.
    """
    gt_cls = np.asarray(gt_classes).reshape(-1).astype(int)
    g = np.asarray(gt_centroids, float).reshape(-1, 2) * np.asarray(spacing, float)
    p_cls = np.asarray(pred_classes).reshape(-1).astype(int)
    p = np.asarray(pred_centroids, float).reshape(-1, 2) * np.asarray(spacing, float)
    if len(g) != len(gt_cls) or len(p) != len(p_cls):
        raise ValueError("classes and centroids must have the same length")
    ok = np.zeros(len(gt_cls), bool)
    dist = np.full(len(gt_cls), np.nan)
    confusions: list[tuple[int, int]] = []
    if len(gt_cls) == 0 or len(p_cls) == 0:
        return Identification(ok, dist, confusions)
    sel = one_per_label(p_cls, pred_scores)
    p_cls, p = p_cls[sel], p[sel]
    # (M, N) prediction-to-truth distances, mm; NaN (empty masks) -> inf
    d = np.hypot(*(p[:, None, :] - g[None, :, :]).transpose(2, 0, 1))
    d = np.where(np.isnan(d), np.inf, d)
    closest = np.argmin(d, axis=1)  # the true vertebra closest to each prediction
    by_label = {int(c): j for j, c in enumerate(p_cls)}
    for i, c in enumerate(gt_cls):
        j = by_label.get(int(c))
        if j is None or not np.isfinite(d[j, i]):
            continue
        dist[i] = d[j, i]
        ok[i] = bool(d[j, i] <= max_dist and d[j, closest[j]] >= d[j, i])
    for j, c in enumerate(p_cls):
        k = int(closest[j])
        if d[j, k] <= max_dist and abs(int(c) - int(gt_cls[k])) == 1:
            confusions.append((int(gt_cls[k]), int(c)))
    return Identification(ok, dist, confusions)


def identify(
    gt_classes: np.ndarray,
    gt_centroids: np.ndarray,
    pred_classes: np.ndarray,
    pred_centroids: np.ndarray,
    max_dist: float = 20.0,
    spacing: Sequence[float] = (1.0, 1.0),
    pred_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(identified (N,) bool, neighbour confusions) of :func:`identification`."""
    r = identification(
        gt_classes, gt_centroids, pred_classes, pred_centroids, pred_scores, max_dist, spacing
    )
    return r.identified, r.confusions
