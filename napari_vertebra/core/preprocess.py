"""The preprocessing steps of Wang et al. 2020 as pure functions.

resample to isotropic voxels -> HU window -> spinal canal per axial slice -> k-means on
the canal circles to tell the spine from the hips -> cuboid crop around the spine ->
sagittal maximum intensity projection (MIP).

Arrays are (z, y, x) in the canonical LPS orientation of
:func:`napari_vertebra.core.read_ct`: x right to left, y anterior to posterior, z inferior
to superior. See ``docs/preprocessing.md`` for the method and where it departs from the
paper.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .params import PreprocessParams
from .progress import ProgressCallback, report, scaled
from .volume import Volume

__all__ = [
    "CanalDetection",
    "CropBox",
    "apply_crop",
    "crop_spine",
    "detect_canal",
    "detect_canal_details",
    "find_canal_candidates",
    "resample_isotropic",
    "resample_labels",
    "sagittal_mip",
    "window_hu",
]

#: ((z0, z1), (y0, y1), (x0, x1)), half-open voxel ranges.
CropBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}

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


# ----------------------------------------------------------------------------- resampling
def _isotropic_grid(volume: Volume, spacing_mm: float) -> tuple[list[int], tuple[float, ...]]:
    size_xyz = [
        max(1, round(n * s / spacing_mm))
        for n, s in zip(volume.shape[::-1], volume.spacing[::-1], strict=True)
    ]
    return size_xyz, (float(spacing_mm),) * 3


def resample_isotropic(
    volume: Volume, spacing_mm: float = 1.0, interpolator: str = "linear"
) -> Volume:
    """Resample ``volume`` to cubic voxels of ``spacing_mm`` (SimpleITK).

    The first voxel keeps its position (same origin and direction); the grid covers the
    same physical extent (size rounded). Voxels past the last input voxel take their
    nearest neighbour's value. The voxel type is kept (linear interpolation of integer
    CT gives integer HU). ``interpolator`` is "linear", "nearest" or "bspline".
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(
            f"unknown interpolator {interpolator!r}; use one of {', '.join(_INTERPOLATORS)}"
        )
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    img = volume.to_sitk()
    size, spacing = _isotropic_grid(volume, spacing_mm)
    out = sitk.Resample(
        img,
        size,
        sitk.Transform(),
        _INTERPOLATORS[interpolator],
        img.GetOrigin(),
        spacing,
        img.GetDirection(),
        0.0,
        img.GetPixelID(),
        True,  # nearest-neighbour extrapolation at the far edge
    )
    return Volume.from_sitk(out)


def resample_labels(labels: Volume, reference: Volume) -> Volume:
    """Resample a label map onto ``reference``'s grid with nearest-neighbour interpolation.

    Ids are kept exactly; voxels of ``reference`` outside the label map get 0.
    """
    out = sitk.Resample(
        labels.to_sitk(),
        reference.shape[::-1],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        reference.origin,
        reference.spacing[::-1],
        tuple(reference.direction.ravel()),
        0,
        sitk.sitkUnknown,
        False,
    )
    return Volume.from_sitk(out)


# ----------------------------------------------------------------------------- window
def window_hu(volume: Volume, lo: float = 100.0, hi: float = 1500.0) -> Volume:
    """Keep HU values in [lo, hi] and set everything else to 0 (HU).

    The voxel type is kept for signed integer and float CT (int16 HU stays int16: half
    the memory of float32 on a 1 mm grid); other types become float32.
    """
    if hi <= lo:
        raise ValueError(f"window upper bound {hi} must exceed the lower bound {lo}")
    arr = volume.array
    kind = arr.dtype.kind
    out = np.empty(arr.shape, arr.dtype if kind in "if" else np.float32)

    def window_slices(z0: int, z1: int) -> None:
        for z in range(z0, z1):
            s = arr[z]
            np.multiply(s, (s >= lo) & (s <= hi), out=out[z], casting="unsafe")

    _by_slices(window_slices, arr.shape[0])
    return volume.with_array(out)


def _by_slices(fn: Callable[[int, int], None], nz: int, chunk: int = 8) -> None:
    """Call ``fn(z0, z1)`` over chunks of axial slices on all cores.

    Per chunk the temporaries stay in cache (about 5x faster than whole-volume
    temporaries on a 600 x 358 x 358 grid); numpy releases the GIL, so the chunks run in
    parallel like SimpleITK's filters.
    """
    starts = range(0, nz, chunk)
    n_jobs = min(os.cpu_count() or 1, len(starts))
    if n_jobs <= 1:
        for z0 in starts:
            fn(z0, min(nz, z0 + chunk))
        return
    with ThreadPoolExecutor(n_jobs) as pool:
        list(pool.map(lambda z0: fn(z0, min(nz, z0 + chunk)), starts))


# ----------------------------------------------------------------------------- canal
@dataclass(frozen=True)
class CanalDetection:
    """Everything the canal step found.

    ``candidates`` is (M, 5) float: z, y, x (voxels of the windowed grid), inscribed
    radius (mm) and elongation (hole area over inscribed-circle area) of every bone-
    enclosed hole whose inscribed circle fits [r_min, r_max]. ``cluster`` (M,) is the
    k-means group of each candidate after merging groups closer than the separation,
    ``spine_cluster`` the group taken as the spine. ``centres`` (N, 3) and ``found`` (N,)
    are per axial slice (N = number of z slices): found slices hold the chosen hole's
    centre, the others are interpolated along z from found neighbours.
    """

    centres: np.ndarray
    found: np.ndarray
    candidates: np.ndarray
    cluster: np.ndarray
    spine_cluster: int
    chosen: np.ndarray  # (N,) index into candidates or -1


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
    arr = windowed.array
    _, sy, sx = windowed.spacing
    nz, ny, nx = arr.shape
    fy = max(1, round(_HOLE_GRID_MM / sy))
    fx = max(1, round(_HOLE_GRID_MM / sx))
    py, px = fy * sy, fx * sx
    pix_mm = float(np.sqrt(py * px))
    report(progress, 0.0, "bone mask")
    # max-pool the bone mask (any bone in an fy x fx block), padding with background
    ny2, nx2 = -(-ny // fy) * fy, -(-nx // fx) * fx
    pooled = np.zeros((nz, ny2 // fy, nx2 // fx), bool)

    def pool_slices(z0: int, z1: int) -> None:
        for oy in range(fy):
            for ox in range(fx):
                part = arr[z0:z1, oy::fy, ox::fx] > 0
                pooled[z0:z1, : part.shape[1], : part.shape[2]] |= part

    _by_slices(pool_slices, nz)
    for _ in range(_HOLE_DILATE_PX):  # 3 x 3 in-plane dilation, separable
        grown = pooled.copy()
        grown[:, 1:] |= pooled[:, :-1]
        grown[:, :-1] |= pooled[:, 1:]
        pooled = grown.copy()
        pooled[:, :, 1:] |= grown[:, :, :-1]
        pooled[:, :, :-1] |= grown[:, :, 1:]
        del grown
    report(progress, 0.3, "finding holes in the bone")
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndi.generate_binary_structure(2, 1)
    lab, n = ndi.label(~pooled, structure=st)
    if n == 0:
        return np.zeros((0, 5))
    border = np.zeros(n + 1, bool)
    for edge in (lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]):
        border[np.unique(edge)] = True
    area = np.bincount(lab.ravel(), minlength=n + 1)
    # a hole must hold the r_min circle (less the dilation) and be at most an elongated
    # r_max circle
    r_lo_px = max(0.5, params.canal_r_min_mm / pix_mm - _HOLE_DILATE_PX - 0.5)
    r_hi_px = params.canal_r_max_mm / pix_mm
    keep = (
        ~border
        & (area >= np.pi * r_lo_px**2 * 0.8)
        & (area <= np.pi * r_hi_px**2 * params.canal_max_elongation)
    )
    keep[0] = False
    ids = np.nonzero(keep)[0]
    report(progress, 0.6, f"measuring {len(ids)} holes")
    objs = ndi.find_objects(lab)
    out = []
    for i in ids:
        sl = objs[i - 1]
        sub = np.pad(lab[sl][0] == i, 1)
        d = ndi.distance_transform_edt(sub)
        k = int(np.argmax(d))
        yy, xx = np.unravel_index(k, d.shape)
        r_px = float(d[yy, xx])
        # back to the full-resolution grid (pixel centres of the pooled grid)
        y = (sl[1].start + yy - 1 + 0.5) * fy - 0.5
        x = (sl[2].start + xx - 1 + 0.5) * fx - 0.5
        r_mm = (r_px + _HOLE_DILATE_PX) * pix_mm  # EDT - 0.5 px, + dilation, + pooling
        elong = float(area[i]) / (np.pi * r_px**2)
        out.append((sl[0].start, y, x, r_mm, elong))
    cands = np.array(out, float).reshape(-1, 5)
    ok = (
        (cands[:, 3] >= params.canal_r_min_mm)
        & (cands[:, 3] <= params.canal_r_max_mm)
        & (cands[:, 4] <= params.canal_max_elongation)
    )
    report(progress, 1.0, f"{int(ok.sum())} canal-sized holes")
    return cands[ok]


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
    circles' radii (dynamic programming over candidates sorted by z). The heaviest chain
    is then extended up and down by further chains (at least ``_CHAIN_MIN_EXTEND_MM``
    heavy) that start near its ends after a longer gap.
    """
    chosen = np.full(nz, -1, int)
    if len(idx) == 0:
        return chosen
    sz, sy, sx = spacing
    order = idx[np.argsort(cands[idx, 0], kind="stable")]
    z = cands[order, 0]
    y = cands[order, 1] * sy
    x = cands[order, 2] * sx
    w = cands[order, 3]
    best, back = _chain_dp(z, y, x, w, sz)
    members = []
    i = int(np.argmax(best))
    while i >= 0:
        members.append(i)
        i = back[i]
    # The canal is the most posterior aligned hole of the spine: a chain of canal-sized
    # holes behind the track (e.g. the track followed the marrow of osteoporotic
    # vertebral bodies) replaces it when it is heavy enough.
    for _ in range(2):
        m = np.array(sorted(members, key=lambda k: z[k]))
        ty = np.interp(z, z[m], y[m])
        tx = np.interp(z, z[m], x[m])
        inside = (z >= z[m[0]] - _CHAIN_MAX_GAP_MM / sz) & (z <= z[m[-1]] + _CHAIN_MAX_GAP_MM / sz)
        post = np.nonzero(
            inside & (y - ty >= _POSTERIOR_MIN_MM) & (np.abs(x - tx) <= _POSTERIOR_MAX_DX_MM)
        )[0]
        if len(post) == 0:
            break
        b2, back2 = _chain_dp(z[post], y[post], x[post], w[post], sz)
        j = int(np.argmax(b2))
        if b2[j] < max(_CHAIN_MIN_EXTEND_MM, _POSTERIOR_MIN_SHARE * best[members[0]]):
            break
        members = []
        while j >= 0:
            members.append(int(post[j]))
            j = back2[j]
    for direction in (1, -1):  # extend upwards, then downwards
        while True:
            end = max(members, key=lambda k: direction * z[k])
            sel = np.nonzero(direction * (z - z[end]) > 0)[0]
            if len(sel) == 0:
                break
            # chains running away from the track's end: DP in that direction
            sel = sel[np.argsort(-direction * z[sel], kind="stable")]
            zs = -direction * z[sel]
            b2, back2 = _chain_dp(zs, y[sel], x[sel], w[sel], sz)
            dz = np.abs(z[sel] - z[end]) * sz
            d = np.hypot(y[sel] - y[end], x[sel] - x[end])
            gate = np.minimum(_CHAIN_STEP_MM + _CHAIN_SLOPE * dz, _CHAIN_MAX_JUMP_MM)
            ok = (d <= gate) & (b2 >= _CHAIN_MIN_EXTEND_MM)
            if not ok.any():
                break
            i = int(np.argmax(np.where(ok, b2, -np.inf)))
            while i >= 0:
                members.append(int(sel[i]))
                i = back2[i]
    for k in members:
        chosen[int(z[k])] = order[k]
    return chosen


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
    cands = find_canal_candidates(windowed, params, scaled(progress, 0.0, 0.85))
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


# ----------------------------------------------------------------------------- crop
def crop_spine(
    centres: np.ndarray,
    found: np.ndarray,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    params: PreprocessParams = PreprocessParams(),  # noqa: B008
) -> CropBox:
    """The cuboid around the canal track plus margins, z over the whole scan.

    y runs from the most anterior centre minus ``crop_margin_anterior_mm`` to the most
    posterior plus ``crop_margin_posterior_mm``; x from the rightmost minus
    ``crop_margin_lr_mm`` to the leftmost plus it (all centres, found or carried).
    Without any found centre the box is the whole volume (nothing is cut away).
    """
    nz, ny, nx = shape
    if len(centres) == 0 or not np.any(found):
        return ((0, nz), (0, ny), (0, nx))
    _, sy, sx = spacing
    ys, xs = centres[:, 1], centres[:, 2]
    y0 = int(np.floor(ys.min() - params.crop_margin_anterior_mm / sy))
    y1 = int(np.ceil(ys.max() + params.crop_margin_posterior_mm / sy)) + 1
    x0 = int(np.floor(xs.min() - params.crop_margin_lr_mm / sx))
    x1 = int(np.ceil(xs.max() + params.crop_margin_lr_mm / sx)) + 1
    y0, y1 = max(0, y0), min(ny, y1)
    x0, x1 = max(0, x0), min(nx, x1)
    return ((0, nz), (y0, y1), (x0, x1))


def apply_crop(volume: Volume, box: CropBox) -> Volume:
    """The sub-volume inside ``box`` with its origin moved to the box's first voxel."""
    (z0, z1), (y0, y1), (x0, x1) = box
    arr = volume.array[z0:z1, y0:y1, x0:x1]
    if arr.size == 0:
        raise ValueError(f"crop box {box} is empty for a volume of shape {volume.shape}")
    origin = volume.index_to_physical(np.array([z0, y0, x0], float))
    return Volume(
        array=arr, spacing=volume.spacing, origin=tuple(origin), direction=volume.direction
    )


# ----------------------------------------------------------------------------- MIP
def sagittal_mip(cropped: Volume | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum over x (left-right) of a (z, y, x) LPS volume.

    Returns (mip float32, argmax_x int32), both (nz, ny) with row 0 the most superior
    slice and column 0 the most anterior; ``argmax_x`` is the x index (of the given
    volume) of the brightest voxel of each ray (0 for an all-zero ray).
    """
    arr = cropped.array if isinstance(cropped, Volume) else np.asarray(cropped)
    if arr.ndim != 3:
        raise ValueError(f"sagittal_mip needs a 3D (z, y, x) array, got shape {arr.shape}")
    am = np.argmax(arr, axis=2)
    mip = np.take_along_axis(arr, am[..., None], axis=2)[..., 0]
    return np.ascontiguousarray(mip[::-1], dtype=np.float32), np.ascontiguousarray(
        am[::-1], dtype=np.int32
    )
