"""Per-vertebra metrics (pure numpy, no torch): Dice, identification, neighbour confusions.

Inputs per image: ground-truth class ids (N,) with masks (N, H, W) and predicted class ids
(M,) with masks (M, H, W). Distances are in px (1 px = 1 mm on the preprocessed MIP).
"""

from __future__ import annotations

import numpy as np

__all__ = ["centroids", "dice", "dice_per_vertebra", "identify"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


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


def identify(
    gt_classes: np.ndarray,
    gt_centroids: np.ndarray,
    pred_classes: np.ndarray,
    pred_centroids: np.ndarray,
    max_dist: float = 20.0,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Which true vertebrae are identified, and neighbour confusions.

    A true vertebra is identified when the prediction closest to its centroid is within
    ``max_dist`` px and has its class. Returns (identified (N,) bool, [(true class,
    predicted class)] for closest predictions within ``max_dist`` whose class is the true
    class +- 1).
    """
    gt_classes = np.asarray(gt_classes)
    ok = np.zeros(len(gt_classes), bool)
    confusions: list[tuple[int, int]] = []
    pcen = np.asarray(pred_centroids, float).reshape(-1, 2)
    if len(pcen) == 0:
        return ok, confusions
    for i, (c, g) in enumerate(zip(gt_classes, np.asarray(gt_centroids, float), strict=True)):
        d = np.hypot(*(pcen - g).T)
        d = np.where(np.isnan(d), np.inf, d)
        j = int(np.argmin(d))
        if d[j] > max_dist:
            continue
        pcls = int(pred_classes[j])
        if pcls == int(c):
            ok[i] = True
        elif abs(pcls - int(c)) == 1:
            confusions.append((int(c), pcls))
    return ok, confusions
