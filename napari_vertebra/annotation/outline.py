"""One-click vertebra outlines on the sagittal MIP by image analysis (no model).

``outline_at(mip, (row, col))`` returns the polygon of the vertebra under a click, or None.
The MIP is 2D windowed HU (0 outside the window), 1 mm per pixel, row 0 superior,
col 0 anterior (:func:`napari_vertebra.core.mip.sagittal_mip`).

Method. Neighbouring vertebrae touch on a sagittal MIP (across thin discs, at the facet
joints, through the maximum over x), so a threshold alone merges them. Around the click
(a window of ``window_mm``):

1. smooth the MIP (Gaussian, ``smooth_mm``) and threshold it *locally*: bone is what is
   brighter than ``bone_fraction`` of the bone level in a disk around the click;
2. find the disc spaces above and below the click: on each side the nearest marked dip
   of the intensity profile along a vertical band through the click (between two bright
   endplates); when only one side has one (e.g. a tilted L5/S1 disc), the other boundary
   is the found one shifted by twice its distance from the click;
3. from each disc, trace a boundary across the window: the darkest left-to-right path
   (dynamic programming, one row per column at most) through the disc point, which
   follows the disc and then runs between the posterior elements; towards posterior it
   moves down more easily than up (the arch of a vertebra lies lower than its body);
4. keep the bone between the two boundaries that is connected to the click, fill holes,
   and refuse it (None) when it is not vertebra-like: an area or extent that is not a
   vertebra's, a window of pixel noise (smoothing removes nearly all of its variance,
   where a MIP keeps about 90 %), a region that does not stand out from the bone around
   it, or a vertebra cut by the image edge of which less than ``min_cut_height_mm``
   lies between its disc and the edge (the part on screen is too small to tell from the
   neighbour it touches).

About 15..100 ms per click on one core, whatever the MIP's size (a window around the
click). See ``docs/outlines.md`` for the figures against
the polygons of "Labels from 3D" and the known failures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .mip_check import structure_fraction

__all__ = ["OutlineParams", "outline_at", "outline_mask_at"]


@dataclass(frozen=True)
class OutlineParams:
    """Parameters of :func:`outline_at`; sizes in mm (the MIP is 1 mm per pixel).

    ``smooth_mm``: Gaussian sigma before thresholding; ``bone_fraction``: bone is above
    this fraction of the bone level near the click; ``min_bone_hu``: and above this many
    HU in any case; ``window_mm``: half-height and half-width of the search window around
    the click; ``min_area_mm2`` / ``max_area_mm2``: plausible area of a vertebra on the
    MIP (T1 body only .. L5 with its posterior elements); ``max_height_mm`` /
    ``max_width_mm``: plausible extent; ``level_radius_mm``: radius of the disk around
    the click whose 60th percentile is the bone level. Discs: searched between
    ``min_half_body_mm`` and ``disc_search_mm`` from the click, as dips of at least
    ``disc_prominence`` times the bone level and ``disc_relative`` times the deepest dip
    on that side, on the mean of ``2 * band_mm + 1`` columns. Boundaries: a row change
    costs ``seam_step_cost`` (units: the bone level per pixel), a move up towards
    posterior ``seam_up_cost``. Vertebra-like: the Gaussian-smoothed window keeps at
    least ``min_structure`` of the window's variance (white pixel noise keeps about 0.08,
    a MIP about 0.9); at most ``max_ring_bone`` of the pixels just outside the region are
    bone (a MIP's vertebra: up to about 0.7; a bright noise field: 1.0); with a disc on
    one side only, at least ``min_cut_height_mm`` between that disc and the image edge.
    """

    smooth_mm: float = 1.0
    bone_fraction: float = 0.35
    min_bone_hu: float = 120.0
    level_radius_mm: float = 12.0
    window_mm: tuple[float, float] = (70.0, 120.0)
    min_area_mm2: float = 150.0
    max_area_mm2: float = 5000.0
    max_height_mm: float = 85.0
    max_width_mm: float = 140.0
    disc_search_mm: float = 40.0
    min_half_body_mm: int = 4
    disc_prominence: float = 0.1
    disc_relative: float = 0.4
    band_mm: int = 5
    seam_step_cost: float = 0.05
    seam_up_cost: float = 0.3
    min_structure: float = 0.5
    max_ring_bone: float = 0.9
    min_cut_height_mm: float = 15.0


def _window(shape, rc, half) -> tuple[slice, slice]:
    r, c = rc
    return (
        slice(max(0, int(r - half[0])), min(shape[0], int(r + half[0]) + 1)),
        slice(max(0, int(c - half[1])), min(shape[1], int(c + half[1]) + 1)),
    )


def _discs(
    profile: np.ndarray, r: int, level: float, p: OutlineParams
) -> tuple[int | None, int | None]:
    """Rows of the disc above and below row ``r`` of a vertical intensity ``profile``.

    A disc is a dip of the profile between two bright endplates. On each side, among the
    dips between ``p.min_half_body_mm`` and ``p.disc_search_mm`` from the click whose
    prominence is at least ``p.disc_prominence`` of the bone ``level`` and at least
    ``p.disc_relative`` of the side's most prominent one, the nearest is taken (the dips
    inside a body are shallower than a disc; the farther discs are as deep as the near
    one). None: no disc on that side (e.g. the image edge)."""
    from scipy.signal import find_peaks

    pk, props = find_peaks(-profile, prominence=p.disc_prominence * level)
    prom = props["prominences"]
    out: list[int | None] = []
    for side in (-1, 1):
        dist = (pk - r) * side
        ok = (dist >= p.min_half_body_mm) & (dist <= p.disc_search_mm)
        if not ok.any():
            out.append(None)
            continue
        cand = np.flatnonzero(ok)
        cand = cand[prom[cand] >= p.disc_relative * prom[cand].max()]
        out.append(int(pk[cand[int(np.argmin(dist[cand]))]]))
    return out[0], out[1]


def _seam(cost: np.ndarray, row: int, col: int, step: float, up_posterior: float) -> np.ndarray:
    """Row per column of the cheapest left-to-right path through ``cost`` (H, W) that
    passes through (``row``, ``col``) and moves at most one row per column.

    Dynamic programming outward from the anchor column. A row change costs ``step``;
    towards posterior (larger columns) a move *up* costs ``up_posterior`` instead: the
    boundary between two vertebrae runs along the disc, then down between the posterior
    elements (the arch of a vertebra lies lower than its body)."""
    h, w = cost.shape
    rows = np.arange(h)
    out = np.empty(w, int)
    out[col] = row
    for cols, up_cost in ((range(col + 1, w), up_posterior), (range(col - 1, -1, -1), step)):
        cols = list(cols)
        if not cols:
            continue
        acc = np.full(h, np.inf)
        acc[row] = 0.0
        back = np.zeros((len(cols), h), np.int8)
        for k, j in enumerate(cols):
            # a path entering row i from row i + 1 moves up (its row decreases)
            from_above = np.concatenate(([np.inf], acc[:-1])) + step
            from_below = np.concatenate((acc[1:], [np.inf])) + up_cost
            cand = np.stack([from_above, acc, from_below])
            choice = np.argmin(cand, axis=0)
            back[k] = choice - 1  # -1: from the row above, +1: from the row below
            acc = cand[choice, rows] + cost[:, j]
        i = int(np.argmin(acc))
        for k in range(len(cols) - 1, -1, -1):
            out[cols[k]] = i
            i += int(back[k, i])
    return out


def outline_mask_at(
    mip: np.ndarray,
    point_rc,
    params: OutlineParams | None = None,
    debug: dict | None = None,
) -> np.ndarray | None:
    """Boolean mask (the MIP's shape) of the vertebra under ``point_rc`` or None.

    ``point_rc``: (row, col) px, float accepted. See the module doc for the method.
    ``debug``: a dict that receives the intermediate arrays of the window (for tuning).
    """
    p = OutlineParams() if params is None else params
    img = np.asarray(mip, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"outline_at expects a 2D MIP, got shape {img.shape}")
    r0, c0 = (round(float(v)) for v in point_rc)
    if not (0 <= r0 < img.shape[0] and 0 <= c0 < img.shape[1]):
        return None
    sl = _window(img.shape, (r0, c0), p.window_mm)
    if structure_fraction(img[sl], p.smooth_mm) < p.min_structure:
        return None  # pixel noise (or a constant window): no shapes to outline
    sm = ndi.gaussian_filter(img[sl], p.smooth_mm)
    r, c = r0 - sl[0].start, c0 - sl[1].start
    level, thr = _bone_level(sm, r, c, p)
    rc = _on_bone(sm, r, c, thr)
    if rc is None:
        return None
    r, c = rc
    fg = sm >= thr
    # discs above and below along a band of columns through the click
    band = sm[:, max(0, c - p.band_mm) : c + p.band_mm + 1].mean(axis=1)
    up, down = _discs(band, r, level, p)
    if _cut_too_short(up, down, sl, img.shape[0], p):
        return None
    top, bottom = _boundaries(np.minimum(sm / max(level, 1e-6), 2.0), up, down, r, c, p)
    yy = np.arange(sm.shape[0])[:, None]
    region = fg & (yy > top[None, :]) & (yy < bottom[None, :])
    if debug is not None:
        debug.update(
            sl=sl,
            sm=sm,
            fg=fg,
            discs=(up, down),
            rc=(r, c),
            level=level,
            top=top,
            bottom=bottom,
            region=region,
        )
    region = _part_at(ndi.binary_opening(region, iterations=1), r, c)
    if region is None or not _plausible(region, p) or not _stands_out(region, fg, p):
        return None
    out = np.zeros(img.shape, bool)
    out[sl] = region
    return out


def _bone_level(sm: np.ndarray, r: int, c: int, p: OutlineParams) -> tuple[float, float]:
    """The local bone level (the bright part of a disk around the click) and the bone
    threshold derived from it."""
    yy, xx = np.ogrid[: sm.shape[0], : sm.shape[1]]
    near = (yy - r) ** 2 + (xx - c) ** 2 <= p.level_radius_mm**2
    vals = sm[near]
    level = float(np.percentile(vals, 60)) if vals.size else 0.0
    return level, max(p.min_bone_hu, p.bone_fraction * level)


def _cut_too_short(
    up: int | None, down: int | None, sl: tuple[slice, slice], height: int, p: OutlineParams
) -> bool:
    """With a disc on one side only: whether less than ``p.min_cut_height_mm`` lies
    between it and the image edge on the other side (a vertebra cut by the edge)."""
    if (up is None) == (down is None):
        return False
    if up is None:  # the disc below the click, the top edge above it
        return down + sl[0].start < p.min_cut_height_mm
    return height - 1 - (up + sl[0].start) < p.min_cut_height_mm


def _stands_out(region: np.ndarray, fg: np.ndarray, p: OutlineParams) -> bool:
    """Whether at most ``p.max_ring_bone`` of the pixels just outside ``region`` (a
    2-pixel ring, inside the window) are bone."""
    ring = ndi.binary_dilation(region, iterations=2) & ~region
    return bool(ring.any()) and float(fg[ring].mean()) <= p.max_ring_bone


def _on_bone(sm: np.ndarray, r: int, c: int, thr: float) -> tuple[int, int] | None:
    """The click, or on a dark pixel the brightest bone pixel right next to it (None:
    no bone there)."""
    if sm[r, c] >= thr:
        return r, c
    look = sm[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3]
    if look.max() < thr:
        return None
    dr, dc = np.unravel_index(int(np.argmax(look)), look.shape)
    return max(0, r - 2) + int(dr), max(0, c - 2) + int(dc)


def _boundaries(
    cost: np.ndarray, up: int | None, down: int | None, r: int, c: int, p: OutlineParams
) -> tuple[np.ndarray, np.ndarray]:
    """Row per column of the boundary above and below the vertebra at (r, c): seams
    through the discs ``up`` / ``down``. With a disc on one side only (a tilted L5/S1
    disc, a cut vertebra) the other boundary is the found one shifted by twice its
    distance from the click; with none, the window's edges."""
    h, w = cost.shape
    top = _seam(cost, up, c, p.seam_step_cost, p.seam_up_cost) if up is not None else None
    bottom = _seam(cost, down, c, p.seam_step_cost, p.seam_up_cost) if down is not None else None
    if top is not None and bottom is None:
        bottom = np.clip(top + 2 * (r - up), -1, h)
    elif bottom is not None and top is None:
        top = np.clip(bottom - 2 * (down - r), -1, h)
    elif top is None and bottom is None:
        top, bottom = np.full(w, -1), np.full(w, h)
    return top, np.maximum(bottom, top + 2)


def _part_at(region: np.ndarray, r: int, c: int) -> np.ndarray | None:
    """The connected part of ``region`` at (r, c) (or, when the click's pixel is not in
    it, the part most present right next to it), holes filled; None when none."""
    lbl, n = ndi.label(region)
    if n == 0:
        return None
    k = int(lbl[r, c])
    if k == 0:  # the opening took the click's pixel: the part right next to it
        near_click = lbl[max(0, r - 2) : r + 3, max(0, c - 2) : c + 3]
        if not near_click.any():
            return None
        k = int(np.bincount(near_click[near_click > 0]).argmax())
    return ndi.binary_fill_holes(lbl == k)


def _plausible(region: np.ndarray, p: OutlineParams) -> bool:
    """Whether a part's area and extent are those of a vertebra."""
    area = int(region.sum())
    rows = np.flatnonzero(region.any(1))
    cols = np.flatnonzero(region.any(0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if not (p.min_area_mm2 <= area <= p.max_area_mm2):
        return False
    return not (height > p.max_height_mm or width > p.max_width_mm)


def outline_at(
    mip: np.ndarray,
    point_rc,
    params: OutlineParams | None = None,
    tolerance_px: float = 1.0,
) -> np.ndarray | None:
    """Polygon ((N, 2) float (row, col), napari's Shapes order) of the vertebra under a
    click on the sagittal MIP, or None when no plausible vertebra is found there.

    ``mip``: 2D windowed HU, 1 mm/px; ``point_rc``: the click (row, col) px;
    ``tolerance_px``: polygon simplification (as
    :func:`~napari_vertebra.annotation.polygons.mask_to_polygons`).
    """
    from .polygons import mask_to_polygons

    mask = outline_mask_at(mip, point_rc, params)
    if mask is None:
        return None
    polys = mask_to_polygons(mask, tolerance_px=tolerance_px)
    return polys[0] if polys else None
