"""The spinal canal per axial slice: bone-enclosed holes, k-means on x, a chained track.

Holes of the bone mask whose inscribed circle is canal-sized are the candidates; k-means
on their x tells the spine from the hips; the heaviest chain of candidates along z is the
track. Arrays are (z, y, x) voxels of the windowed, isotropic LPS grid. See
``docs/preprocessing.md`` for the method and where it departs from the paper.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ._slices import by_slices
from .params import PreprocessParams
from .progress import ProgressCallback, report, scaled
from .volume import Volume

__all__ = [
    "CanalDetection",
    "detect_canal",
    "detect_canal_details",
    "find_canal_candidates",
    "midline_of_columns",
]

#: In-plane pixel size (mm) of the bone mask on which holes are searched.
_HOLE_GRID_MM = 2.0
#: Gap in the bony ring (in pixels of that grid) bridged by dilating the bone.
_HOLE_DILATE_PX = 1
#: Half-width (mm along z) of the running median used to reject outlier centres.
_TRACK_WINDOW_MM = 30.0
#: Linking of canal circles into a track along z: largest z gap (mm), in-plane step
#: allowed between neighbouring slices (mm) and its growth per mm of z gap.
_CHAIN_MAX_GAP_MM = 60.0
_CHAIN_STEP_MM = 5.0
_CHAIN_SLOPE = 0.5
#: Extension of the track across longer gaps: largest in-plane jump (mm) and least
#: weight (sum of radii, mm) of a chain to be added.
_CHAIN_MAX_JUMP_MM = 30.0
_CHAIN_MIN_EXTEND_MM = 30.0
#: A chain at least this far behind the track (mm), within this distance in x (mm),
#: and at least this share of the track's weight is taken as the canal instead.
_POSTERIOR_MIN_MM = 12.0
_POSTERIOR_MAX_DX_MM = 15.0
_POSTERIOR_MIN_SHARE = 0.3

#: Candidates sorted along z for the chain: z (voxels), y, x (mm), weight (radius, mm).
_Cands = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CanalDetection:
    """Everything the canal step found.

    ``candidates`` is (M, 5) float: z, y, x (voxels of the windowed grid), inscribed
    radius (mm) and elongation (hole area over inscribed-circle area) of every bone-
    enclosed hole whose inscribed circle fits [r_min, r_max]. ``cluster`` (M,) is the
    k-means group of each candidate after merging groups closer than the separation,
    ``spine_cluster`` the group taken as the spine. ``centres`` (N, 3) and ``found`` (N,)
    are per axial slice (N = number of z slices): found slices hold the chosen hole's
    centre, the others are interpolated along z from found neighbours. ``midline`` (N,)
    is the bony midline x (voxels) per slice, NaN without bone (see
    :func:`~.crop.bony_midline`).
    """

    centres: np.ndarray
    found: np.ndarray
    candidates: np.ndarray
    cluster: np.ndarray
    spine_cluster: int
    chosen: np.ndarray  # (N,) index into candidates or -1
    midline: np.ndarray | None = None  # (N,) bony midline x per slice, see bony_midline


def find_canal_candidates(
    windowed: Volume,
    params: PreprocessParams = PreprocessParams(),  # noqa: B008 (frozen, immutable)
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Bone-enclosed holes of every axial slice whose inscribed circle is canal-sized.

    The bone mask (windowed > 0) is max-pooled to about 2 mm pixels in-plane and dilated
    by one pixel, which closes small gaps of the bony ring; the background is labelled
    once for the whole volume (4-connected within each slice) and every component that
    does not touch the slice border is a hole. The largest circle inscribed in a hole
    (the maximum of its distance transform) is the paper's circle grown from r_min until
    it touches bone. Returns (M, 5): z, y, x (voxels), radius (mm), elongation.
    """
    return _canal_candidates(windowed, params, progress)[0]


def _canal_candidates(
    windowed: Volume, params: PreprocessParams, progress: ProgressCallback | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`find_canal_candidates` and the bony midline per slice (from the pooled mask).

    Holes are searched only in the in-plane box of the bone of all slices (plus the
    dilation and a pixel of background): everything outside it is background connected
    to the border, so the holes, their order and their measures are those of the whole
    slice, at a fraction of the labelling cost.
    """
    arr = windowed.array
    _, sy, sx = windowed.spacing
    fy = max(1, round(_HOLE_GRID_MM / sy))
    fx = max(1, round(_HOLE_GRID_MM / sx))
    py, px = fy * sy, fx * sx
    pix_mm = float(np.sqrt(py * px))
    report(progress, 0.0, "bone mask")
    pooled = _pooled_bone(arr, fy, fx)
    midline = midline_of_columns(np.count_nonzero(pooled, axis=1), fx)
    ys, xs = _bone_box(pooled, _HOLE_DILATE_PX + 1)
    mask = _dilate_in_plane(pooled[:, ys, xs], _HOLE_DILATE_PX)
    del pooled
    report(progress, 0.3, "finding holes in the bone")
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)
    lab, n = ndi.label(~mask, structure=st)
    if n == 0:
        return np.zeros((0, 5)), midline
    holes = _holes(lab, n, params, pix_mm)
    report(progress, 0.6, f"measuring {len(holes[0])} holes")
    cands = _measure_holes(lab, holes, (ys.start, xs.start), (fy, fx), pix_mm)
    ok = (
        (cands[:, 3] >= params.canal_r_min_mm)
        & (cands[:, 3] <= params.canal_r_max_mm)
        & (cands[:, 4] <= params.canal_max_elongation)
    )
    report(progress, 1.0, f"{int(ok.sum())} canal-sized holes")
    return cands[ok], midline


def _pooled_bone(arr: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """The bone mask (``arr`` > 0) max-pooled over fy x fx blocks in-plane.

    A block is bone when any of its voxels is; blocks past the slice's edge are padded
    with background.
    """
    nz, ny, nx = arr.shape
    pooled = np.empty((nz, -(-ny // fy), -(-nx // fx)), bool)

    def pool_slices(z0: int, z1: int) -> None:
        bone = arr[z0:z1] > 0
        cols = bone[:, :, ::fx].copy()
        for ox in range(1, fx):
            part = bone[:, :, ox::fx]
            cols[:, :, : part.shape[2]] |= part
        rows = cols[:, ::fy].copy()
        for oy in range(1, fy):
            part = cols[:, oy::fy]
            rows[:, : part.shape[1]] |= part
        pooled[z0:z1] = rows

    by_slices(pool_slices, nz)
    return pooled


def _bone_box(mask: np.ndarray, grow: int) -> tuple[slice, slice]:
    """In-plane (y, x) box of ``mask`` on any slice, ``grow`` pixels wider (within the
    slice); the whole slice when ``mask`` is empty."""
    seen = np.logical_or.reduce(mask, axis=0)
    ny, nx = seen.shape
    ys = np.nonzero(seen.any(axis=1))[0]
    xs = np.nonzero(seen.any(axis=0))[0]
    if len(ys) == 0:
        return slice(0, ny), slice(0, nx)
    return (
        slice(max(0, ys[0] - grow), min(ny, ys[-1] + grow + 1)),
        slice(max(0, xs[0] - grow), min(nx, xs[-1] + grow + 1)),
    )


def _dilate_in_plane(mask: np.ndarray, px: int) -> np.ndarray:
    """``mask`` dilated ``px`` times by 3 x 3 within each slice (separable)."""
    for _ in range(px):
        grown = mask.copy()
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        mask = grown.copy()
        mask[:, :, 1:] |= grown[:, :, :-1]
        mask[:, :, :-1] |= grown[:, :, 1:]
        del grown
    return mask


def _holes(
    lab: np.ndarray, n: int, params: PreprocessParams, pix_mm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The background components of ``lab`` that are canal-sized holes, by label.

    A hole touches no slice border, holds the r_min circle (less the dilation) and is at
    most an elongated r_max circle. Returns (K,) labels (ascending), (K,) areas (pixels)
    and (K, 5) boxes z, y0, y1, x0, x1 (inclusive), from the pixels of the components
    that touch no border only (a few of the whole background).
    """
    inside = np.ones(n + 1, bool)
    inside[0] = False  # label 0 is the bone
    for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        inside[edge] = False
    z, y, x = np.nonzero(inside[lab])
    ids = lab[z, y, x]
    area = np.bincount(ids, minlength=n + 1)
    r_lo_px = max(0.5, params.canal_r_min_mm / pix_mm - _HOLE_DILATE_PX - 0.5)
    r_hi_px = params.canal_r_max_mm / pix_mm
    keep = (
        inside
        & (area >= np.pi * r_lo_px**2 * 0.8)
        & (area <= np.pi * r_hi_px**2 * params.canal_max_elongation)
    )
    sel = np.nonzero(keep[ids])[0]
    sel = sel[np.argsort(ids[sel], kind="stable")]
    labels, starts = np.unique(ids[sel], return_index=True)
    boxes = np.stack(
        [z[sel][starts]]
        + [f.reduceat(v[sel], starts) for v in (y, x) for f in (np.minimum, np.maximum)],
        axis=1,
    ).reshape(-1, 5)
    return labels, area[labels], boxes


def _measure_holes(
    lab: np.ndarray,
    holes: tuple[np.ndarray, np.ndarray, np.ndarray],
    offset_yx: tuple[int, int],
    factors: tuple[int, int],
    pix_mm: float,
) -> np.ndarray:
    """(M, 5) z, y, x (full-resolution voxels), radius (mm), elongation of ``holes``.

    The largest inscribed circle is the maximum of the hole's distance transform (on
    its box with a pixel of background around); ``offset_yx`` is the pooled pixel of
    ``lab``'s first row and column, ``factors`` the pooling (fy, fx).
    """
    (oy, ox), (fy, fx) = offset_yx, factors
    out = []
    for i, a, (z, y0, y1, x0, x1) in zip(*holes, strict=True):
        sub = np.zeros((y1 - y0 + 3, x1 - x0 + 3), bool)
        sub[1:-1, 1:-1] = lab[z, y0 : y1 + 1, x0 : x1 + 1] == i
        d = ndi.distance_transform_edt(sub)
        yy, xx = np.unravel_index(int(np.argmax(d)), d.shape)
        r_px = float(d[yy, xx])
        # back to the full-resolution grid (pixel centres of the pooled grid)
        y = (oy + y0 + yy - 1 + 0.5) * fy - 0.5
        x = (ox + x0 + xx - 1 + 0.5) * fx - 0.5
        r_mm = (r_px + _HOLE_DILATE_PX) * pix_mm  # EDT - 0.5 px, + dilation, + pooling
        elong = float(a) / (np.pi * r_px**2)
        out.append((z, y, x, r_mm, elong))
    return np.array(out, float).reshape(-1, 5)


def _cluster_spine(
    cands: np.ndarray, spacing_x: float, params: PreprocessParams
) -> tuple[np.ndarray, int]:
    """k-means on the candidates' x (left-right, mm); returns (group per candidate, spine)."""
    m = len(cands)
    k = min(params.n_clusters, len(np.unique(cands[:, 2]))) if m else 0
    if k <= 1:
        return np.zeros(m, int), 0
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    x_mm = cands[:, 2:3] * spacing_x
    km = KMeans(n_clusters=k, n_init=params.kmeans_n_init, random_state=params.kmeans_seed)
    with threadpool_limits(1):  # a few hundred 1D points: threads only cost time
        lab = km.fit_predict(x_mm)
    centres = km.cluster_centers_[:, 0]
    order = np.argsort(centres)
    # merge neighbouring clusters closer than the separation: they are one structure
    group_of = np.empty(k, int)
    g = 0
    group_of[order[0]] = 0
    for a, b in itertools.pairwise(order):
        if centres[b] - centres[a] >= params.min_cluster_separation_mm:
            g += 1
        group_of[b] = g
    groups = group_of[lab]
    n_groups = g + 1
    cover = np.array([len(np.unique(cands[groups == i, 0])) for i in range(n_groups)])
    if n_groups == 3 and cover[1] >= 0.5 * cover.max():
        spine = 1  # the paper: the middle cluster is the spine, the others the hips
    else:
        # one hip, or something else beside the spine: the spine runs through the most
        # slices; ties go to the group nearest the middle of the candidates
        mid = np.median(x_mm)
        gx = np.array([np.median(x_mm[groups == i]) for i in range(n_groups)])
        spine = int(np.lexsort((np.abs(gx - mid), -cover))[0])
    return groups, spine


def _running_median(z: np.ndarray, v: np.ndarray, half: float) -> np.ndarray:
    """Median of ``v`` over samples within ``half`` of each z (z sorted ascending)."""
    lo = np.searchsorted(z, z - half, side="left")
    hi = np.searchsorted(z, z + half, side="right")
    return np.array([np.median(v[a:b], axis=0) for a, b in zip(lo, hi, strict=True)])


def _chain_dp(
    z: np.ndarray, y: np.ndarray, x: np.ndarray, w: np.ndarray, sz: float
) -> tuple[np.ndarray, np.ndarray]:
    """Heaviest chain ending at each candidate (z ascending): (weight, back-pointer)."""
    best = w.copy()
    back = np.full(len(z), -1)
    lo_all = np.searchsorted(z, z - _CHAIN_MAX_GAP_MM / sz, side="left")
    hi_all = np.searchsorted(z, z, side="left")
    for i in range(len(z)):
        lo, hi = lo_all[i], hi_all[i]
        if hi <= lo:
            continue
        dz = (z[i] - z[lo:hi]) * sz
        d = np.hypot(y[i] - y[lo:hi], x[i] - x[lo:hi])
        ok = d <= _CHAIN_STEP_MM + _CHAIN_SLOPE * dz
        if ok.any():
            cand = np.where(ok, best[lo:hi], -np.inf)
            j = int(np.argmax(cand))
            best[i] = w[i] + cand[j]
            back[i] = lo + j
    return best, back


def _best_chain(
    cands: np.ndarray, idx: np.ndarray, nz: int, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The canal track: heaviest chain of candidates along z; (nz,) index or -1.

    Candidates link to an earlier one within ``_CHAIN_MAX_GAP_MM`` along z and at most
    ``_CHAIN_STEP_MM + _CHAIN_SLOPE * dz`` in-plane; a chain weighs the sum of its
    circles' radii (dynamic programming over candidates sorted by z). A heavy enough
    chain behind it may take its place (:func:`_prefer_posterior`); the track is then
    extended up and down by further chains (at least ``_CHAIN_MIN_EXTEND_MM`` heavy)
    that start near its ends after a longer gap.
    """
    chosen = np.full(nz, -1, int)
    if len(idx) == 0:
        return chosen
    sz, sy, sx = spacing
    order = idx[np.argsort(cands[idx, 0], kind="stable")]
    zyxw = (cands[order, 0], cands[order, 1] * sy, cands[order, 2] * sx, cands[order, 3])
    best, back = _chain_dp(*zyxw, sz)
    members = _follow(back, int(np.argmax(best)))
    members = _prefer_posterior(zyxw, sz, members, best)
    for direction in (1, -1):  # extend upwards, then downwards
        members = _extend(zyxw, sz, members, direction)
    z = zyxw[0]
    for k in members:
        chosen[int(z[k])] = order[k]
    return chosen


def _follow(back: np.ndarray, i: int, ids: np.ndarray | None = None) -> list[int]:
    """The chain ending at ``i`` through the back-pointers, as ``ids[k]`` (default ``k``)."""
    out = []
    while i >= 0:
        out.append(int(i if ids is None else ids[i]))
        i = back[i]
    return out


def _prefer_posterior(zyxw: _Cands, sz: float, members: list[int], best: np.ndarray) -> list[int]:
    """The track, or a chain of canal-sized holes behind it over the same slices.

    The canal is the most posterior aligned hole of the spine: such a chain (e.g. when
    the track followed the marrow of osteoporotic vertebral bodies) replaces it when it
    is heavy enough, twice at most. Only holes beside the track count: the sacral canal
    below a lumbar track lies behind it too (the sacrum curves backwards) but is no
    reason to leave the lumbar canal.
    """
    z, y, x, w = zyxw
    for _ in range(2):
        m = np.array(sorted(members, key=lambda k: z[k]))
        ty = np.interp(z, z[m], y[m])
        tx = np.interp(z, z[m], x[m])
        inside = (z >= z[m[0]]) & (z <= z[m[-1]])
        post = np.nonzero(
            inside & (y - ty >= _POSTERIOR_MIN_MM) & (np.abs(x - tx) <= _POSTERIOR_MAX_DX_MM)
        )[0]
        if len(post) == 0:
            break
        b2, back2 = _chain_dp(z[post], y[post], x[post], w[post], sz)
        j = int(np.argmax(b2))
        if b2[j] < max(_CHAIN_MIN_EXTEND_MM, _POSTERIOR_MIN_SHARE * best[members[0]]):
            break
        members = _follow(back2, j, post)
    return members


def _extend(zyxw: _Cands, sz: float, members: list[int], direction: int) -> list[int]:
    """``members`` with the chains that continue the track beyond its end along
    ``direction`` (1: upwards, -1: downwards), one after another."""
    z, y, x, w = zyxw
    while True:
        end = max(members, key=lambda k: direction * z[k])
        sel = np.nonzero(direction * (z - z[end]) > 0)[0]
        if len(sel) == 0:
            return members
        # chains running away from the track's end: DP in that direction
        sel = sel[np.argsort(-direction * z[sel], kind="stable")]
        b2, back2 = _chain_dp(-direction * z[sel], y[sel], x[sel], w[sel], sz)
        dz = np.abs(z[sel] - z[end]) * sz
        d = np.hypot(y[sel] - y[end], x[sel] - x[end])
        gate = np.minimum(_CHAIN_STEP_MM + _CHAIN_SLOPE * dz, _CHAIN_MAX_JUMP_MM)
        ok = (d <= gate) & (b2 >= _CHAIN_MIN_EXTEND_MM)
        if not ok.any():
            return members
        members = members + _follow(back2, int(np.argmax(np.where(ok, b2, -np.inf))), sel)


def detect_canal_details(
    windowed: Volume,
    params: PreprocessParams = PreprocessParams(),  # noqa: B008
    progress: ProgressCallback | None = None,
) -> CanalDetection:
    """Find the spinal canal on every axial slice; see :class:`CanalDetection`.

    Candidates (:func:`find_canal_candidates`) are clustered by x (k-means, k =
    ``n_clusters``, groups closer than ``min_cluster_separation_mm`` merged); in the
    spine group each slice keeps the hole nearest the running median track of its
    neighbours (roundest hole first); holes farther than ``canal_outlier_mm`` from the
    track are rejected; slices without a hole get the centre interpolated along z
    (constant beyond the first and last found slices).
    """
    nz, ny, nx = windowed.shape
    sz, sy, sx = windowed.spacing
    cands, midline = _canal_candidates(windowed, params, scaled(progress, 0.0, 0.85))
    report(progress, 0.85, "clustering canal circles")
    groups, spine = _cluster_spine(cands, sx, params)
    spine_idx = np.nonzero(groups == spine)[0] if len(cands) else np.zeros(0, int)
    chosen = _best_chain(cands, spine_idx, nz, windowed.spacing)
    # reject found centres far from the running median of their neighbours
    zf = np.nonzero(chosen >= 0)[0]
    if len(zf):
        pts = cands[chosen[zf], 1:3]
        med = _running_median(zf.astype(float), pts, _TRACK_WINDOW_MM / sz)
        off = np.linalg.norm((pts - med) * np.array([sy, sx]), axis=1)
        chosen[zf[off > params.canal_outlier_mm]] = -1
    found = chosen >= 0
    centres = np.zeros((nz, 3))
    centres[:, 0] = np.arange(nz)
    if found.any():
        zf = np.nonzero(found)[0]
        centres[:, 1] = np.interp(centres[:, 0], zf, cands[chosen[zf], 1])
        centres[:, 2] = np.interp(centres[:, 0], zf, cands[chosen[zf], 2])
    else:
        centres[:, 1] = (ny - 1) / 2
        centres[:, 2] = (nx - 1) / 2
    report(progress, 1.0, f"canal found on {int(found.sum())} of {nz} slices")
    return CanalDetection(
        centres=centres,
        found=found,
        candidates=cands,
        cluster=groups,
        spine_cluster=int(spine),
        chosen=chosen,
        midline=midline,
    )


def detect_canal(
    windowed: Volume,
    params: PreprocessParams = PreprocessParams(),  # noqa: B008
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Canal centre per axial slice: ((N, 3) float (z, y, x) voxels, (N,) bool found).

    ``found`` is False where the centre was carried across from neighbouring slices
    (open bony ring at disc levels) or, when no slice has a canal, where it is the
    middle of the slice. See :func:`detect_canal_details`.
    """
    det = detect_canal_details(windowed, params, progress)
    return det.centres, det.found


def midline_of_columns(cols: np.ndarray, fx: int) -> np.ndarray:
    """Quartiles' middle per slice of (N, X) bone counts per column of ``fx`` voxels."""
    total = cols.sum(axis=1)
    cum = np.cumsum(cols, axis=1)
    mid = np.full(len(cols), np.nan)
    for z in np.nonzero(total > 0)[0]:
        q1, q3 = np.searchsorted(cum[z], (0.25 * total[z], 0.75 * total[z]))
        mid[z] = ((q1 + q3) / 2.0 + 0.5) * fx - 0.5
    return mid
