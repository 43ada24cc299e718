"""Geometry checks shared by every annotation reader and writer (COCO, VIA, dataset).

One rule set, used on every path (see ``docs/annotations.md``):

* refused: non-finite coordinates; a vertex farther outside the image than half the
  image's size (absurd coordinates such as 1e300, or the wrong image size); fewer than 3
  distinct vertices; edges that cross (a self-intersecting outline has no unambiguous
  fill); zero area (collinear vertices); a polygon lying entirely outside the image;
* repaired, with a note: a polygon partly outside the image is clipped to the image
  rectangle (pixel centres 0..n-1, half a pixel margin), which keeps exactly the
  pixels it covered in the image;
* accepted as is: a polygon that only touches itself (a vertex on another edge, an edge
  retraced, as contour tracers give for a one-pixel neck), since its fill is unambiguous.

Coordinates are (row, col) pixels (see ``types``). Pure numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .polygons import check_polygon, polygon_area

__all__ = [
    "MAX_IMAGE_SIDE",
    "MAX_OVERHANG",
    "clip_to_image",
    "image_size_problem",
    "validate_polygon",
]

#: Largest image side (px) an annotation file may declare; a sagittal MIP at 1 mm is
#: under 2,000 px, so larger sizes are corrupt entries.
MAX_IMAGE_SIDE = 65_535

#: A vertex may lie outside the image by at most this fraction of the image's height
#: (rows) or width (cols) to be clipped; farther out the polygon is refused.
MAX_OVERHANG = 0.5

#: Overhang (px) below which a vertex counts as on the image edge (rounding in files).
_EPS = 1e-6


def image_size_problem(height: object, width: object) -> str | None:
    """A message when (height, width) is not a plausible image size in pixels, else None."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            return f"{name} {v!r} is not an integer"
        if not 0 < int(v) <= MAX_IMAGE_SIDE:
            return f"{name} {v!r} is not between 1 and {MAX_IMAGE_SIDE} px"
    return None


def _clip_half_plane(p: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """Sutherland-Hodgman step: the part of polygon ``p`` with ``p[:, axis] <= bound``
    (``keep_below``) or ``>= bound``."""
    if not len(p):
        return p
    v = p[:, axis] - bound
    inside = v <= 0 if keep_below else v >= 0
    out: list[np.ndarray] = []
    n = len(p)
    for k in range(n):
        cur, nxt = p[k], p[(k + 1) % n]
        if inside[k]:
            out.append(cur)
        if inside[k] != inside[(k + 1) % n]:
            t = v[k] / (v[k] - v[(k + 1) % n])
            pt = cur + t * (nxt - cur)
            pt[axis] = bound
            out.append(pt)
    return np.array(out).reshape(-1, 2)


def clip_to_image(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Polygon ((N, 2) (row, col)) clipped to the image rectangle of ``shape`` (rows,
    cols): rows and cols in -0.5 .. n - 0.5 (Sutherland-Hodgman; consecutive duplicate
    vertices removed). May return fewer than 3 vertices when nothing is left."""
    p = np.asarray(points, float).reshape(-1, 2)
    h, w = shape
    for axis, lo, hi in ((0, -0.5, h - 0.5), (1, -0.5, w - 0.5)):
        p = _clip_half_plane(p, axis, lo, keep_below=False)
        p = _clip_half_plane(p, axis, hi, keep_below=True)
    if len(p) > 1:
        keep = np.ones(len(p), bool)
        keep[1:] = np.any(np.abs(np.diff(p, axis=0)) > 1e-9, axis=1)
        p = p[keep]
        if len(p) > 1 and np.allclose(p[0], p[-1]):
            p = p[:-1]
    return p


def validate_polygon(
    points: np.ndarray | Sequence, shape: tuple[int, int]
) -> tuple[np.ndarray | None, list[str], list[str]]:
    """Check one polygon ((N, 2) (row, col)) on an image of ``shape`` (rows, cols).

    Returns ``(polygon, errors, notes)``: the polygon to keep (clipped to the image when
    it reached outside; None when refused), the reasons it is refused, and what was
    repaired. See the module doc for the rules. Never raises for bad geometry.
    """
    p = np.asarray(points, float).reshape(-1, 2)
    h, w = int(shape[0]), int(shape[1])
    size = f"{h} x {w} (height x width) image"
    if not np.all(np.isfinite(p)):
        return None, ["has non-finite coordinates (NaN or infinity)"], []
    if not len(p):
        return None, ["has no points"], []
    below = np.maximum(-0.5 - p, 0.0)
    above = np.maximum(p - np.array([h - 0.5, w - 0.5]), 0.0)
    over = np.maximum(below, above)  # (N, 2) px outside the image, per axis
    limit = np.array([max(2.0, MAX_OVERHANG * h), max(2.0, MAX_OVERHANG * w)])
    if np.any(over > limit):
        far = float(over.max())
        return (
            None,
            [
                f"has a vertex {far:.4g} px outside the {size} (more than half the image "
                "size): wrong coordinates or the wrong image size"
            ],
            [],
        )
    problems = check_polygon(p, None, allow_touching=True)
    if problems:
        return None, [m.removeprefix("polygon ") for m in problems], []
    outside = np.any(over > _EPS, axis=1)
    if not outside.any():
        return p, [], []
    q = clip_to_image(p, (h, w))
    if len(q) < 3 or polygon_area(q) < 1e-9:
        return None, [f"lies entirely outside the {size}"], []
    if check_polygon(q, None, allow_touching=True):  # never seen; refuse rather than guess
        return None, [f"reaches outside the {size} and cannot be clipped cleanly"], []
    note = (
        f"{int(outside.sum())} of {len(p)} vertices lay outside the {size} (up to "
        f"{float(over.max()):.3g} px): clipped to the image"
    )
    return q, [], [note]
