"""Anatomical consistency of predicted vertebra classes (pure numpy, no torch).

On a sagittal MIP (row 0 = superior) the vertebrae run T1..L5 from top to bottom. A
detector labels each instance on its own, so it can repeat a class or swap neighbours.
:func:`order_classes` picks, for the instances sorted top to bottom, the strictly
increasing sequence of class ids with the largest summed log-probability (gaps allowed:
missing vertebrae are fine; repeats and inversions are not).
"""

from __future__ import annotations

import numpy as np

from napari_vertebra.core.labels import VERTEBRAE

__all__ = ["MaskSuppressor", "box_suppression", "mask_overlap_suppression", "order_classes"]

_N = len(VERTEBRAE)


def order_classes(class_probs: np.ndarray, rows: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Class ids (1..17) for N instances, increasing from top to bottom.

    ``class_probs`` is (N, 17): probabilities (or any positive scores) of T1..L5 for each
    instance; ``rows`` is (N,): the centroid row (px, 0 = superior) of each instance.
    Returns (N,) int class ids in the input order, chosen by dynamic programming to
    maximise the sum of log-probabilities under the constraint that, sorted by row, the
    ids strictly increase. Raises ValueError when N > 17 (suppress duplicates first).
    """
    p = np.asarray(class_probs, dtype=float)
    r = np.asarray(rows, dtype=float).reshape(-1)
    if p.ndim != 2 or p.shape[1] != _N:
        raise ValueError(f"class_probs must be (N, {_N}); got shape {p.shape}")
    n = p.shape[0]
    if r.shape[0] != n:
        raise ValueError(f"rows has {r.shape[0]} values for {n} instances")
    if n == 0:
        return np.zeros(0, dtype=int)
    if n > _N:
        raise ValueError(f"{n} instances cannot take {_N} distinct ordered classes")
    order = np.argsort(r, kind="stable")
    logp = np.log(np.clip(p[order], eps, None))
    # dp[i, c]: best score of instances 0..i with instance i given class c (0-based)
    dp = np.full((n, _N), -np.inf)
    back = np.zeros((n, _N), dtype=int)
    dp[0] = logp[0]
    for i in range(1, n):
        # best previous class strictly below c: running max of dp[i-1, :c]
        prev_best = np.full(_N, -np.inf)
        prev_arg = np.zeros(_N, dtype=int)
        best, arg = -np.inf, 0
        for c in range(_N):
            prev_best[c], prev_arg[c] = best, arg
            if dp[i - 1, c] > best:
                best, arg = dp[i - 1, c], c
        dp[i] = logp[i] + prev_best
        back[i] = prev_arg
    cls = np.zeros(n, dtype=int)
    cls[n - 1] = int(np.argmax(dp[n - 1]))
    for i in range(n - 1, 0, -1):
        cls[i - 1] = back[i, cls[i]]
    out = np.zeros(n, dtype=int)
    out[order] = cls + 1
    return out


class MaskSuppressor:
    """Incremental form of :func:`mask_overlap_suppression`: offer (H, W) masks in order
    of decreasing score; :meth:`offer` says whether each one is kept.

    Lets a caller compute masks lazily and stop once it has kept as many as it needs
    (the first k kept do not depend on what follows them). Overlaps are counted within
    the masks' bounding boxes (the same counts, less work on large images).
    """

    def __init__(self, max_overlap: float = 0.5):
        self.max_overlap = max_overlap
        self._kept: list[tuple[int, int, int, int, np.ndarray, int]] = []

    def __len__(self) -> int:
        return len(self._kept)

    def offer(self, mask: np.ndarray) -> bool:
        """Keep ``mask`` ((H, W) bool) unless it is empty or duplicates a kept one."""
        m = np.asarray(mask, dtype=bool)
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size == 0:
            return False
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        crop = m[r0:r1, c0:c1]
        a = int(crop.sum())
        for q0, q1, d0, d1, other, aj in self._kept:
            R0, R1, C0, C1 = max(r0, q0), min(r1, q1), max(c0, d0), min(c1, d1)
            if R0 >= R1 or C0 >= C1:
                continue  # no overlap
            inter = np.logical_and(
                crop[R0 - r0 : R1 - r0, C0 - c0 : C1 - c0],
                other[R0 - q0 : R1 - q0, C0 - d0 : C1 - d0],
            ).sum()
            if inter > self.max_overlap * min(a, aj):
                return False
        self._kept.append((r0, r1, c0, c1, crop, a))
        return True


def mask_overlap_suppression(
    masks: np.ndarray, scores: np.ndarray, max_overlap: float = 0.5
) -> np.ndarray:
    """Indices of instances to keep after class-agnostic duplicate suppression.

    ``masks`` is (N, H, W) bool, ``scores`` (N,). Greedy by score: an instance is dropped
    when its overlap with a kept one, as a fraction of the smaller mask, exceeds
    ``max_overlap``. Returns kept indices sorted by decreasing score.
    """
    m = np.asarray(masks, dtype=bool)
    s = np.asarray(scores, dtype=float)
    if m.shape[0] == 0:
        return np.zeros(0, dtype=int)
    sup = MaskSuppressor(max_overlap)
    keep = [int(i) for i in np.argsort(-s, kind="stable") if sup.offer(m[i])]
    return np.asarray(keep, dtype=int)


def box_suppression(boxes: np.ndarray, max_iou: float | None = 0.5) -> np.ndarray:
    """Indices of boxes kept by greedy class-agnostic non-maximum suppression.

    ``boxes`` is (N, 4) (x0, y0, x1, y1), already in order of decreasing score; a box is
    dropped when its IoU with a kept one exceeds ``max_iou`` (None keeps all). Mask R-CNN
    suppresses per class, so one vertebra comes out once per likely class, copies with
    box IoU well above 0.5 while neighbouring vertebrae overlap little; dropping the
    copies here spares the mask head. Returns kept indices in input order.
    """
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if max_iou is None or len(b) == 0:
        return np.arange(len(b))
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    keep: list[int] = []
    for i in range(len(b)):
        if keep:
            k = np.asarray(keep)
            w = np.clip(np.minimum(b[k, 2], b[i, 2]) - np.maximum(b[k, 0], b[i, 0]), 0, None)
            h = np.clip(np.minimum(b[k, 3], b[i, 3]) - np.maximum(b[k, 1], b[i, 1]), 0, None)
            inter = w * h
            union = area[k] + area[i] - inter
            iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            if (iou > max_iou).any():
                continue
        keep.append(i)
    return np.asarray(keep, dtype=int)
