"""Polygons <-> masks, Labels-layer images <-> annotations, and annotation checks.

Coordinates are (row, col) pixel coordinates in napari's convention: the centre of pixel
``[r, c]`` is the point ``(r, c)``. A pixel belongs to a polygon when its centre lies
inside it. COCO and VIA put pixel centres at ``(x + 0.5, y + 0.5)``; their modules shift
by half a pixel at the boundary, so that our raster agrees with pycocotools' ``annToMask``
(up to pixels whose centre lies within ~0.1 px of an edge, where pycocotools rounds).

Holes: :func:`mask_to_polygons` keeps outer rings only, i.e. holes are filled. Vertebra
masks on a sagittal MIP practically never have holes, and COCO polygons cannot express
them either.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon
from skimage.measure import approximate_polygon, find_contours

from napari_vertebra.core.labels import class_name

from .types import VertebraAnnotation

__all__ = [
    "annotations_to_label_image",
    "check_image_annotations",
    "check_polygon",
    "dice",
    "label_image_to_annotations",
    "mask_outline",
    "mask_to_polygons",
    "polygon_area",
    "polygon_centroid",
    "rasterize",
    "segments_intersect",
]

#: Raster agreement that mask_to_polygons refines its simplification to reach per part.
_MIN_DICE = 0.99


def _as_polys(polygons: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        return [polygons.astype(float)]
    return [np.asarray(p, dtype=float).reshape(-1, 2) for p in polygons]


def rasterize(polygons: np.ndarray | Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask (``shape`` = (rows, cols)) of the union of ``polygons``.

    Each polygon is an (N, 2) array of (row, col) vertices; a single (N, 2) array is
    accepted too. Polygons with fewer than 3 vertices paint nothing.
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), bool)
    for p in _as_polys(polygons):
        if len(p) < 3 or not np.all(np.isfinite(p)):
            continue
        rr, cc = draw_polygon(p[:, 0], p[:, 1], shape=(h, w))
        mask[rr, cc] = True
    return mask


def polygon_area(points: np.ndarray) -> float:
    """Unsigned area (px²) of a simple polygon given as (N, 2) vertices (shoelace)."""
    p = np.asarray(points, float).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 1], p[:, 0]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygon_centroid(points: np.ndarray) -> np.ndarray:
    """Area centroid (row, col) of a polygon; the vertex mean when it has no area."""
    p = np.asarray(points, float).reshape(-1, 2)
    if len(p) < 3:
        return p.mean(axis=0) if len(p) else np.array([np.nan, np.nan])
    r, c = p[:, 0], p[:, 1]
    r1, c1 = np.roll(r, -1), np.roll(c, -1)
    cross = r * c1 - r1 * c
    a = cross.sum() / 2.0
    if abs(a) < 1e-9:
        return p.mean(axis=0)
    return np.array([((r + r1) * cross).sum() / (6 * a), ((c + c1) * cross).sum() / (6 * a)])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def _open_ring(ring: np.ndarray) -> np.ndarray:
    """``ring`` without a closing vertex equal to the first."""
    if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
        return ring[:-1]
    return ring


def mask_to_polygons(
    mask: np.ndarray, tolerance_px: float = 1.0, min_area_px: float = 4.0
) -> list[np.ndarray]:
    """Outline a 2D boolean mask as polygons: one (N, 2) (row, col) array per part.

    Parts are 4-connected components (pixels touching only diagonally are separate
    parts); holes are filled (outer rings only). The outline runs half-way between
    inside and outside pixel centres and is simplified with Douglas-Peucker
    (``tolerance_px``, px; 0 keeps every contour vertex); for small parts the tolerance is
    halved until the polygon's raster matches the part with Dice >= 0.99. Parts with fewer than
    ``min_area_px`` pixels are dropped. Parts are ordered largest first.
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask_to_polygons expects a 2D mask, got shape {m.shape}")
    lab, n = ndi.label(m)
    if n == 0:
        return []
    out: list[tuple[int, np.ndarray]] = []
    slices = ndi.find_objects(lab)
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        part = lab[sl] == i
        area = int(part.sum())
        if area < min_area_px:
            continue
        part = ndi.binary_fill_holes(part)
        padded = np.pad(part, 1).astype(float)
        contours = find_contours(padded, 0.5)
        if not contours:
            continue
        # the outer ring encloses the largest area
        full = max(contours, key=polygon_area)
        ring, tol = full, float(tolerance_px)
        while tol > 0:
            ring = approximate_polygon(full, tolerance=tol)
            # small parts lose too much to the simplification: refine until the raster
            # matches the mask well (Dice >= _MIN_DICE) or the tolerance is tiny; a
            # simplification whose edges cross is refined too (the readers refuse those)
            crossing = _self_intersects(_open_ring(ring), touching=False)
            if not crossing and (
                tol < 0.2 or dice(rasterize([ring], padded.shape), padded > 0) >= _MIN_DICE
            ):
                break
            if crossing and tol < 0.2:
                ring = full  # the traced contour itself never crosses
                break
            tol /= 2
        if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
            ring = ring[:-1]
        if len(ring) < 3:
            continue
        ring = ring + np.array([sl[0].start - 1, sl[1].start - 1], float)
        out.append((area, ring))
    out.sort(key=lambda t: -t[0])
    return [p for _, p in out]


def mask_outline(
    mask: np.ndarray, gap_px: float = 4.0, tolerance_px: float = 1.0
) -> np.ndarray | None:
    """One polygon ((N, 2) (row, col)) outlining a vertebra's mask, whatever its shape;
    None for an empty mask.

    A predicted mask may come in fragments (cracks through the body, islands at its
    edge) and with holes: parts closer than ``gap_px`` are merged (a binary closing
    with a disc), holes are filled, and of what stays apart the part holding most of the
    mask's pixels is kept (a far fragment is dropped). That part is outlined as
    :func:`mask_to_polygons` outlines one (``tolerance_px``).
    """
    m = np.asarray(mask, bool)
    if m.ndim != 2:
        raise ValueError(f"mask_outline expects a 2D mask, got shape {m.shape}")
    if not m.any():
        return None
    r = max(0, int(np.ceil(gap_px / 2)))
    merged = m
    if r:
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disc = yy**2 + xx**2 <= r * r
        padded = np.pad(m, 2 * r)  # the closing must not stick to the image's edge
        closed = ndi.binary_closing(padded, structure=disc)[2 * r : -2 * r, 2 * r : -2 * r]
        merged = closed | m
    merged = ndi.binary_fill_holes(merged)
    lab, n = ndi.label(merged)  # 4-connected, as mask_to_polygons' parts
    if n > 1:
        held = ndi.sum(m, lab, index=np.arange(1, n + 1))
        merged = lab == 1 + int(np.argmax(held))
    polys = mask_to_polygons(merged, tolerance_px=tolerance_px, min_area_px=1)
    return polys[0] if polys else None


def label_image_to_annotations(
    label_image: np.ndarray, tolerance_px: float = 1.0, min_area_px: float = 4.0
) -> list[VertebraAnnotation]:
    """Annotations from a 2D class image (napari Labels layer: 0 background, 1..17).

    One :class:`VertebraAnnotation` per class present, ordered by class id; values
    outside 1..17 raise ValueError.
    """
    img = np.asarray(label_image)
    if img.ndim != 2:
        raise ValueError(f"expected a 2D label image, got shape {img.shape}")
    values = np.unique(img)
    bad = [int(v) for v in values if v != 0 and not 1 <= v <= 17]
    if bad:
        raise ValueError(f"label image holds values {bad} outside the classes 1..17 (T1..L5)")
    out = []
    for v in values:
        if v == 0:
            continue
        polys = mask_to_polygons(img == v, tolerance_px=tolerance_px, min_area_px=min_area_px)
        if polys:
            out.append(VertebraAnnotation(int(v), polys))
    return out


def annotations_to_label_image(
    annotations: Sequence[VertebraAnnotation], shape: tuple[int, int]
) -> np.ndarray:
    """uint8 class image (0 background, 1..17) of ``shape`` painted from ``annotations``.

    Annotations are painted in the given order, so a later one wins where they overlap.
    """
    out = np.zeros((int(shape[0]), int(shape[1])), np.uint8)
    for a in annotations:
        out[rasterize(a.polygons, out.shape)] = a.class_id
    return out


def segments_intersect(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray):
    """Element-wise (broadcast) test whether segments a0-a1 and b0-b1 intersect.

    Points are (..., 2) arrays; touching and collinear overlaps count as intersecting.
    """

    def orient(p, q, r):
        v = (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (
            r[..., 0] - p[..., 0]
        )
        return np.sign(np.where(np.abs(v) < 1e-12, 0.0, v))

    def on_seg(p, q, r):  # r on segment p-q given collinear
        return (
            (np.minimum(p[..., 0], q[..., 0]) <= r[..., 0])
            & (r[..., 0] <= np.maximum(p[..., 0], q[..., 0]))
            & (np.minimum(p[..., 1], q[..., 1]) <= r[..., 1])
            & (r[..., 1] <= np.maximum(p[..., 1], q[..., 1]))
        )

    o1, o2 = orient(a0, a1, b0), orient(a0, a1, b1)
    o3, o4 = orient(b0, b1, a0), orient(b0, b1, a1)
    general = (o1 != o2) & (o3 != o4) & (o1 != 0) & (o2 != 0) & (o3 != 0) & (o4 != 0)
    special = (
        ((o1 == 0) & on_seg(a0, a1, b0))
        | ((o2 == 0) & on_seg(a0, a1, b1))
        | ((o3 == 0) & on_seg(b0, b1, a0))
        | ((o4 == 0) & on_seg(b0, b1, a1))
    )
    return general | special


def _proper_crossings(a0, a1, b0, b1) -> np.ndarray:
    """Element-wise: segments a0-a1 and b0-b1 cross at a point inside both (not a touch,
    not a shared vertex, not a collinear overlap)."""

    def orient(p, q, r):
        v = (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (
            r[..., 0] - p[..., 0]
        )
        return np.sign(np.where(np.abs(v) < 1e-12, 0.0, v))

    o1, o2 = orient(a0, a1, b0), orient(a0, a1, b1)
    o3, o4 = orient(b0, b1, a0), orient(b0, b1, a1)
    return (o1 * o2 < 0) & (o3 * o4 < 0)


def _self_intersects(p: np.ndarray, chunk: int = 200_000, touching: bool = True) -> bool:
    """Whether polygon ``p`` ((N, 2), no closing vertex) meets itself: any contact of two
    non-adjacent edges (``touching``), or only edges that properly cross."""
    n = len(p)
    if n < 4:
        return False
    a0, a1 = p, np.roll(p, -1, axis=0)
    i, j = np.triu_indices(n, k=2)
    keep = ~((i == 0) & (j == n - 1))  # first and last edges share a vertex
    i, j = i[keep], j[keep]
    test = segments_intersect if touching else _proper_crossings
    for s in range(0, len(i), chunk):  # bounded memory for long freehand outlines
        ii, jj = i[s : s + chunk], j[s : s + chunk]
        if np.any(test(a0[ii], a1[ii], a0[jj], a1[jj])):
            return True
    return False


def check_polygon(
    points: np.ndarray, shape: tuple[int, int] | None = None, allow_touching: bool = False
) -> list[str]:
    """Problems with one polygon ((N, 2) (row, col)) as messages; [] when fine.

    Checks: fewer than 3 distinct vertices, non-finite values, vertices outside the image
    ``shape`` (rows, cols; pixel centres 0..n-1, half a pixel margin allowed), zero area,
    self-intersection. With ``allow_touching`` only edges that properly cross count as a
    self-intersection; a vertex on another edge or an edge retraced (as contour tracers
    give for a one-pixel neck) is accepted, since its fill is unambiguous. Never raises
    for bad geometry (for the annotate widget).
    """
    p = np.asarray(points, float)
    if p.size == 0:
        return ["polygon has no points"]
    p = p.reshape(-1, 2)
    msgs: list[str] = []
    if not np.all(np.isfinite(p)):
        return ["polygon has non-finite coordinates"]
    # drop consecutive duplicates (and a closing vertex equal to the first)
    keep = np.ones(len(p), bool)
    keep[1:] = np.any(np.abs(np.diff(p, axis=0)) > 1e-9, axis=1)
    q = p[keep]
    if len(q) > 1 and np.allclose(q[0], q[-1]):
        q = q[:-1]
    if len(q) < 3:
        return [f"polygon has {len(q)} distinct point(s); at least 3 are needed"]
    if shape is not None:
        h, w = shape[0], shape[1]
        out = (q[:, 0] < -0.5) | (q[:, 0] > h - 0.5) | (q[:, 1] < -0.5) | (q[:, 1] > w - 0.5)
        if out.any():
            msgs.append(f"{int(out.sum())} of {len(q)} points lie outside the {h}x{w} image")
    if _self_intersects(q, touching=not allow_touching):
        msgs.append("polygon intersects itself")
    elif polygon_area(q) < 1e-9:
        msgs.append("polygon has zero area")
    return msgs


def check_image_annotations(
    annotations: Sequence[VertebraAnnotation], shape: tuple[int, int] | None = None
) -> list[str]:
    """Problems with the annotations of one image as messages; [] when fine.

    Checks each polygon (:func:`check_polygon`), an annotation without polygons, a class
    used more than once, and anatomical order: a vertebra with a higher class id (more
    inferior, e.g. L1) must have its centroid below (larger row than) every lower class
    id (e.g. T12). Centroids are area-weighted over the annotation's polygons.
    """
    msgs: list[str] = []
    counts: dict[int, int] = {}
    centroids: dict[int, float] = {}
    for a in annotations:
        name = class_name(a.class_id)
        counts[a.class_id] = counts.get(a.class_id, 0) + 1
        if not a.polygons:
            msgs.append(f"{name}: no polygon")
            continue
        for k, p in enumerate(a.polygons):
            label = f"{name}" if len(a.polygons) == 1 else f"{name} part {k + 1}"
            msgs.extend(f"{label}: {m}" for m in check_polygon(p, shape))
        areas = np.array([polygon_area(p) for p in a.polygons])
        cents = np.array([polygon_centroid(p)[0] for p in a.polygons])
        if areas.sum() > 0:
            centroids.setdefault(a.class_id, float((areas * cents).sum() / areas.sum()))
    for cid, n in sorted(counts.items()):
        if n > 1:
            msgs.append(f"{class_name(cid)} is used {n} times")
    ids = sorted(centroids)
    for i, upper in enumerate(ids):
        for lower in ids[i + 1 :]:
            if centroids[lower] < centroids[upper]:
                msgs.append(
                    f"order: {class_name(upper)} (row {centroids[upper]:.0f}) lies below "
                    f"{class_name(lower)} (row {centroids[lower]:.0f})"
                )
    return msgs
