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
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .params import PreprocessParams
from .progress import ProgressCallback, report, scaled
from .volume import Volume

__all__ = [
    "CROP_KINDS",
    "CanalDetection",
    "CropBox",
    "CropDecision",
    "apply_crop",
    "bony_midline",
    "crop_spine",
    "decide_crop",
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
#: Value (HU) given to CT voxels outside the input's field of view: air.
_CT_FILL_HU = -1024.0


def _isotropic_grid(
    volume: Volume, spacing_mm: float
) -> tuple[list[int], tuple[float, float, float], tuple[float, float, float]]:
    """Axis-aligned LPS grid of cubic voxels over ``volume``: size, origin, spacing (x, y, z).

    Along each LPS axis the grid starts at the lowest voxel centre of the input and spans
    the width of the input's physical extent (the bounding box of its voxels), rounded to
    whole voxels. For an input already on LPS axes this keeps the first voxel's position
    and gives round(n * spacing / spacing_mm) voxels per axis.
    """
    n = np.array(volume.shape[::-1], float)
    s = np.array(volume.spacing[::-1], float)
    r = volume.direction
    corners = np.array(list(itertools.product(*[(0.0, v - 1.0) for v in n])))  # (8, 3) ijk
    lo = ((corners * s) @ r.T + np.asarray(volume.origin)).min(axis=0)
    extent = np.abs(r) @ (n * s)
    size = [max(1, round(float(e) / spacing_mm)) for e in extent]
    return size, tuple(float(v) for v in lo), (float(spacing_mm),) * 3  # type: ignore[return-value]


def _fill_value(dtype: np.dtype, value: float) -> float:
    """``value`` clipped to what ``dtype`` can hold (0 for unsigned integers and -1024)."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(min(max(value, info.min), info.max))
    return value


def _index_map(
    source: Volume,
    origin: tuple[float, ...],
    spacing: tuple[float, ...],
    direction: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous index (i, j, k) of ``source`` at output voxel (x, y, z) = base + step @ xyz."""
    to_index = np.linalg.inv(source.direction @ np.diag(source.spacing[::-1]))
    base = to_index @ (np.asarray(origin, float) - np.asarray(source.origin))
    step = to_index @ np.asarray(direction, float) @ np.diag(spacing)  # column per out axis
    return base, step


def _corner_indices(base: np.ndarray, step: np.ndarray, size: list[int]) -> np.ndarray:
    """(8, 3) source indices of the output grid's corner voxels."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in size])), float)
    return base + corners @ step.T


def _fill_outside(
    arr: np.ndarray, n_in: np.ndarray, base: np.ndarray, step: np.ndarray, fill: float
) -> None:
    """Set ``fill`` in the voxels of ``arr`` (z, y, x) more than one input voxel beyond the
    input's voxel centres (continuous input index outside [-1, n]; ``n_in`` is (x, y, z))."""
    lo_b, hi_b = -1.0 - 1e-6, n_in + 1e-6
    nz, ny, nx = arr.shape
    gi = step[:, 0]
    jj = np.arange(ny, dtype=float)
    ii = np.arange(nx, dtype=float)

    def fill_slabs(z0: int, z1: int) -> None:
        kk = np.arange(z0, z1, dtype=float)
        rows = base + kk[:, None, None] * step[:, 2] + jj[None, :, None] * step[:, 1]
        lo = np.full(rows.shape[:2], -np.inf)
        hi = np.full(rows.shape[:2], np.inf)
        for a in range(3):
            ra = rows[..., a]
            if abs(gi[a]) < 1e-12:
                out = (ra < lo_b) | (ra > hi_b[a])
                lo[out], hi[out] = np.inf, -np.inf
                continue
            t1, t2 = (lo_b - ra) / gi[a], (hi_b[a] - ra) / gi[a]
            np.maximum(lo, np.minimum(t1, t2), out=lo)
            np.minimum(hi, np.maximum(t1, t2), out=hi)
        outside = (ii < lo[..., None] - 1e-9) | (ii > hi[..., None] + 1e-9)
        arr[z0:z1][outside] = fill

    _by_slices(fill_slabs, nz)


def _axis_weights(
    t: np.ndarray, n: int, linear: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Along one axis: source indices i0, i1, weights of i1 (None: all 0), valid outputs.

    ``t`` are continuous source indices of the output samples; beyond the outermost
    centres the edge value is used up to one voxel out (``t`` in [-1, n]), as the padded
    SimpleITK path does.
    """
    valid = (t >= -1.0 - 1e-6) & (t <= n + 1e-6)
    tc = np.clip(t, 0.0, n - 1.0)
    if not linear:
        i0 = np.clip(np.floor(tc + 0.5), 0, n - 1).astype(np.intp)
        return i0, i0, None, valid
    i0 = np.clip(np.floor(tc), 0, n - 1).astype(np.intp)
    w = tc - i0
    w[np.abs(w) < 1e-6] = 0.0  # on an input voxel (float error of the grid arithmetic)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, (w.astype(np.float32) if np.any(w) else None), valid


def _resample_separable(
    arr: np.ndarray,
    t_xyz: tuple[np.ndarray, np.ndarray, np.ndarray],
    linear: bool,
    fill: float,
) -> np.ndarray:
    """Resample a (z, y, x) array whose output axes are its own axes, scaled and shifted.

    Trilinear interpolation is separable: three 1D passes (z, y, x) per chunk of output
    slices, in float and rounded to the nearest integer for integer voxel types. About
    twice as fast as SimpleITK's generic resampler on one core, with no copy of the input.
    """
    tx, ty, tz = t_xyz
    nz_in, ny_in, nx_in = arr.shape
    ax = _axis_weights(tx, nx_in, linear)
    ay = _axis_weights(ty, ny_in, linear)
    az = _axis_weights(tz, nz_in, linear)
    out = np.empty((len(tz), len(ty), len(tx)), arr.dtype)
    ftype = np.float64 if arr.dtype == np.float64 else np.float32
    is_int = arr.dtype.kind in "iu"

    def one_pass(a: np.ndarray, axis: int, i0, i1, w) -> np.ndarray:
        if w is None:
            if len(i0) == a.shape[axis] and np.array_equal(i0, np.arange(len(i0))):
                return a  # the same samples
            return np.take(a, i0, axis=axis)
        shape = [1, 1, 1]
        shape[axis] = -1
        r = np.multiply(np.take(a, i0, axis=axis), (1 - w).reshape(shape), dtype=ftype)
        r += np.multiply(np.take(a, i1, axis=axis), w.reshape(shape), dtype=ftype)
        return r

    def run(z0: int, z1: int) -> None:
        i0, i1, w, _ = az
        i0, i1 = i0[z0:z1], i1[z0:z1]
        w = None if w is None else w[z0:z1]
        if w is None and np.array_equal(i0, np.arange(i0[0], i0[0] + len(i0))):
            slab = arr[i0[0] : i0[0] + len(i0)]  # a view: whole input slices
        else:
            slab = one_pass(arr, 0, i0, i1, w)
        slab = one_pass(slab, 1, *ay[:3])
        slab = one_pass(slab, 2, *ax[:3])
        if is_int and slab.dtype.kind == "f":
            np.rint(slab, out=slab)
        out[z0:z1] = slab

    _by_slices(run, len(tz))
    for axis, (_, _, _, valid) in zip((2, 1, 0), (ax, ay, az), strict=True):
        if not valid.all():
            idx = [slice(None)] * 3
            idx[axis] = ~valid
            out[tuple(idx)] = fill
    return out


def _resample_onto(
    volume: Volume,
    size: list[int] | tuple[int, ...],
    origin: tuple[float, ...],
    spacing: tuple[float, ...],
    direction: np.ndarray,
    interpolator: int,
    fill: float,
) -> Volume:
    """Resample ``volume`` onto a grid (ITK x, y, z order), the same rule for CT and labels.

    Output voxels up to one input voxel beyond the input's outermost voxel centres take
    the edge value (linear along the edge); voxels further out get ``fill``. A grid whose
    axes are parallel to the input's (the usual case) is resampled separably in numpy,
    any other through ``SimpleITK.Resample`` (input padded by copies of its edge slices).
    """
    size = [int(v) for v in size]
    n_in = np.array(volume.shape[::-1], float)
    base, step = _index_map(volume, origin, spacing, direction)
    fill = _fill_value(volume.array.dtype, fill)
    if interpolator in (sitk.sitkLinear, sitk.sitkNearestNeighbor) and np.allclose(
        step, np.diag(np.diag(step)), atol=0.01 / max(size)
    ):  # axes parallel to the input's: separable, no copy of the input
        tx, ty, tz = (base[a] + step[a, a] * np.arange(size[a]) for a in range(3))
        arr = _resample_separable(
            volume.array, (tx, ty, tz), interpolator == sitk.sitkLinear, fill
        )
        return Volume(arr, tuple(spacing[::-1]), tuple(origin), direction, volume.warnings)
    idx = _corner_indices(base, step, size)
    img = volume.to_sitk()
    if np.any((idx < -0.5 + 1e-3) | (idx > n_in - 0.5 - 1e-3)):  # at or past the edge
        img = sitk.ZeroFluxNeumannPad(img, (1, 1, 1), (1, 1, 1))  # there: the edge value
    out = sitk.Resample(
        img,
        size,
        sitk.Transform(),
        interpolator,
        tuple(float(v) for v in origin),
        tuple(float(v) for v in spacing),
        tuple(np.asarray(direction, float).ravel()),
        fill,
        img.GetPixelID(),
    )
    del img
    arr = sitk.GetArrayFromImage(out)
    del out
    if np.any((idx < -1.0 - 1e-6) | (idx > n_in + 1e-6)):  # a rotated input's corners
        _fill_outside(arr, n_in, base, step, fill)
    return Volume(arr, tuple(spacing[::-1]), tuple(origin), direction, volume.warnings)


def resample_isotropic(
    volume: Volume,
    spacing_mm: float = 1.0,
    interpolator: str = "linear",
    fill: float = _CT_FILL_HU,
) -> Volume:
    """Resample ``volume`` to cubic voxels of ``spacing_mm`` on an axis-aligned LPS grid.

    Whatever the input's direction (oblique, rotated, flipped), the output has the
    identity direction: index axes x right to left, y anterior to posterior, z inferior
    to superior. The grid covers the input's physical extent (its bounding box; for an
    input already on LPS axes the first voxel keeps its position and the size is
    round(n * spacing / spacing_mm)). Voxels within one input voxel of the input's voxel
    centres take the nearest value at the edge; the corners of a rotated input's bounding
    box get ``fill`` (-1024 HU, air; clipped to the voxel type). The voxel type is kept
    (linear interpolation of integer CT gives integer HU). ``interpolator`` is "linear",
    "nearest" or "bspline". ``volume.warnings`` are kept.
    """
    if interpolator not in _INTERPOLATORS:
        raise ValueError(
            f"unknown interpolator {interpolator!r}; use one of {', '.join(_INTERPOLATORS)}"
        )
    if spacing_mm <= 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    size, origin, spacing = _isotropic_grid(volume, spacing_mm)
    return _resample_onto(
        volume, size, origin, spacing, np.eye(3), _INTERPOLATORS[interpolator], fill
    )


def resample_labels(labels: Volume, reference: Volume) -> Volume:
    """Resample a label map onto ``reference``'s grid with nearest-neighbour interpolation.

    Ids and voxel type are kept exactly. The edges follow the same rule as
    :func:`resample_isotropic` (nearest value within one input voxel of the label map's
    voxel centres, so the top slice of a CT and of its labels agree); voxels further out
    get 0.
    """
    return _resample_onto(
        labels,
        reference.shape[::-1],
        reference.origin,
        reference.spacing[::-1],
        reference.direction,
        sitk.sitkNearestNeighbor,
        0.0,
    )


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
    centre, the others are interpolated along z from found neighbours. ``midline`` (N,)
    is the bony midline x (voxels) per slice, NaN without bone (see :func:`bony_midline`).
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
    """:func:`find_canal_candidates` and the bony midline per slice (from the pooled mask)."""
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
    midline = _midline_of_columns(np.count_nonzero(pooled, axis=1), fx)
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
        return np.zeros((0, 5)), midline
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
    return cands[ok], midline


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
    # holes behind the track over the same slices (e.g. the track followed the marrow of
    # osteoporotic vertebral bodies) replaces it when it is heavy enough. Only holes
    # beside the track count: the sacral canal below a lumbar track lies behind it too
    # (the sacrum curves backwards) but is no reason to leave the lumbar canal.
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


#: Fallback boxes: extra half-width in x (mm) beyond ``crop_margin_lr_mm`` around a
#: short canal track, and around the bony midline when no track can be trusted.
_FALLBACK_TRACK_EXTRA_MM = 15.0
_FALLBACK_MIDLINE_EXTRA_MM = 40.0
#: Orientation check: bone is counted within this half-width in x (mm) of the canal,
#: from this distance in front of / behind its centre to that one (mm).
_ORIENT_HALF_WIDTH_MM = 15.0
_ORIENT_NEAR_MM = 12.0
_ORIENT_FAR_MM = 45.0
#: Half-size (y, x; mm) of the patch around the canal whose holes are filled first, and
#: the most slices looked at.
_ORIENT_PATCH_MM = (60.0, 35.0)
_ORIENT_MAX_SLICES = 40
#: Bone in front of the canal over bone behind it below this ratio: the anatomy
#: contradicts the header (vertebral bodies lie anterior to the canal).
_ORIENT_MIN_RATIO = 0.7
#: The box keeps the bone around the track: in a band of this half-width (mm) through
#: the canal centre, the bone from the canal's wall (at most ``_KEEP_BONE_WALL_MM``
#: from the centre) outwards up to a gap of ``_KEEP_BONE_GAP_MM`` must be inside the box
#: on all but this share of the found slices; a face moves out at most the limit (mm).
_KEEP_BONE_HALF_WIDTH_MM = 8.0
_KEEP_BONE_WALL_MM = 20.0
_KEEP_BONE_GAP_MM = 3.0
_KEEP_BONE_SHARE = 0.1
_KEEP_BONE_MAX_MM = 30.0

#: Kinds of :class:`CropDecision` (``kind``).
CROP_KINDS = ("kmeans", "fallback-track-x", "fallback-midline", "fallback-none")


@dataclass(frozen=True)
class CropDecision:
    """The crop box and why it was chosen (see :func:`decide_crop`).

    ``kind`` is "kmeans" (the paper's box around the canal track), "fallback-track-x"
    (a short track: x cropped around it with a wider margin, y whole),
    "fallback-midline" (no track to trust: x around the bony midline with a wide margin,
    y whole) or "fallback-none" (nothing cropped). ``reason`` says why in one sentence;
    ``orientation`` is "ok", "doubt" (bone behind the canal outweighs bone in front of
    it: the header's anterior-posterior axis may be wrong) or "unknown";
    ``evidence`` holds the measured figures; ``warnings`` the plain-language notes for
    the user (empty when the paper's box was used and the anatomy agrees).
    """

    box: CropBox
    kind: str
    reason: str
    orientation: str = "unknown"
    evidence: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def bony_midline(windowed: Volume) -> np.ndarray:
    """Left-right middle of the bone on each axial slice: (N,) x voxel, NaN without bone.

    Half-way between the first and third quartiles of the x of the bone voxels
    (windowed > 0) of each slice: the bones of a slice (spine, ribs, hips) are about
    symmetric about the body's midline, and the quartiles' middle stays there even when
    no bone lies on the midline itself. The canal step computes the same from its
    pooled bone mask (``CanalDetection.midline``) at no extra cost.
    """
    arr = windowed.array
    nz, _, nx = arr.shape
    cols = np.zeros((nz, nx), np.int64)

    def count(z0: int, z1: int) -> None:
        cols[z0:z1] = np.count_nonzero(arr[z0:z1] > 0, axis=1)

    _by_slices(count, nz)
    return _midline_of_columns(cols, 1)


def _midline_of_columns(cols: np.ndarray, fx: int) -> np.ndarray:
    """Quartiles' middle per slice of (N, X) bone counts per column of ``fx`` voxels."""
    total = cols.sum(axis=1)
    cum = np.cumsum(cols, axis=1)
    mid = np.full(len(cols), np.nan)
    for z in np.nonzero(total > 0)[0]:
        q1, q3 = np.searchsorted(cum[z], (0.25 * total[z], 0.75 * total[z]))
        mid[z] = ((q1 + q3) / 2.0 + 0.5) * fx - 0.5
    return mid


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes (background not 4-connected to the border) filled.

    One labelling pass (faster than scipy's iterative ``binary_fill_holes``).
    """
    lab, n = ndi.label(~mask)
    if n == 0:
        return mask
    border = np.zeros(n + 1, bool)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        border[edge] = True
    border[0] = True  # label 0 is the mask itself
    return mask | ~border[lab]


def _orientation_ratio(
    windowed: Volume, centres: np.ndarray, zf: np.ndarray
) -> tuple[float, int, int]:
    """Bone in front of / behind the canal on (at most 40 of) the found slices ``zf``.

    Per slice, the bone mask of a patch around the canal centre is hole-filled first
    (``_ORIENT_PATCH_MM``), so that a vertebral body whose marrow is below the window
    (osteoporosis: only the cortical shell is bone) counts as the solid block it is.
    Returns (ratio, voxels in front, voxels behind).
    """
    arr = windowed.array
    _, ny, nx = arr.shape
    _, sy, sx = windowed.spacing
    hw = round(_ORIENT_HALF_WIDTH_MM / sx)
    near, far = round(_ORIENT_NEAR_MM / sy), round(_ORIENT_FAR_MM / sy)
    py, px = round(_ORIENT_PATCH_MM[0] / sy), round(_ORIENT_PATCH_MM[1] / sx)
    if len(zf) > _ORIENT_MAX_SLICES:
        zf = zf[np.linspace(0, len(zf) - 1, _ORIENT_MAX_SLICES).round().astype(int)]
    ant = post = 0
    for z in zf:
        cy, cx = round(centres[z, 1]), round(centres[z, 2])
        y0, x0 = max(0, cy - py), max(0, cx - px)
        patch = _fill_holes_2d(arr[z, y0 : min(ny, cy + py + 1), x0 : min(nx, cx + px + 1)] > 0)
        ly, lx = cy - y0, cx - x0
        xs = slice(max(0, lx - hw), lx + hw + 1)
        ant += int(np.count_nonzero(patch[max(0, ly - far) : max(0, ly - near), xs]))
        post += int(np.count_nonzero(patch[ly + near : ly + far, xs]))
    return ant / max(post, 1), ant, post


def _keep_bone_around_track(
    windowed: Volume, centres: np.ndarray, zf: np.ndarray, box: CropBox
) -> tuple[CropBox, float, float]:
    """Move the box's y faces outwards where they cut the bone around the canal.

    On each found slice, the bone in a narrow band along y through the canal centre is
    followed from the canal's wall outwards (in front: the vertebral body, behind: the
    arch and spinous process) until a gap of ``_KEEP_BONE_GAP_MM``; a face that cuts
    it on more than ``_KEEP_BONE_SHARE`` of the slices moves out to keep it there, at
    most ``_KEEP_BONE_MAX_MM``. Returns (box, mm added in front, mm added behind).
    """
    arr = windowed.array
    _, ny, nx = arr.shape
    _, sy, sx = windowed.spacing
    (z0, z1), (y0, y1), (x0, x1) = box
    if len(zf) == 0:
        return box, 0.0, 0.0
    hw = max(1, round(_KEEP_BONE_HALF_WIDTH_MM / sx))
    gap = max(1, round(_KEEP_BONE_GAP_MM / sy))
    wall = round(_KEEP_BONE_WALL_MM / sy)
    front, back = [], []
    for z in zf:
        cy, cx = round(centres[z, 1]), round(centres[z, 2])
        prof = np.any(arr[z, :, max(0, cx - hw) : min(nx, cx + hw + 1)] > 0, axis=1)
        for sign, seg, out in ((-1, prof[cy::-1], front), (1, prof[cy:], back)):
            if not seg.any():
                continue
            first = int(np.argmax(seg))
            if first > wall:
                continue  # no wall near the centre on this side
            rest = ~seg[first:]
            runs = np.convolve(rest, np.ones(gap), "valid") >= gap
            end = int(np.argmax(runs)) if runs.any() else len(rest)
            out.append(cy + sign * (first + end - 1))  # the last bone row on this side
    limit = round(_KEEP_BONE_MAX_MM / sy)
    ny0, ny1 = y0, y1
    if front:
        need = int(np.floor(np.quantile(front, _KEEP_BONE_SHARE)))
        ny0 = max(0, min(y0, max(need - 1, y0 - limit)))
    if back:
        need = int(np.ceil(np.quantile(back, 1 - _KEEP_BONE_SHARE)))
        ny1 = min(ny, max(y1, min(need + 2, y1 + limit)))
    return ((z0, z1), (ny0, ny1), (x0, x1)), (y0 - ny0) * sy, (ny1 - y1) * sy


def decide_crop(
    windowed: Volume,
    canal: CanalDetection,
    params: PreprocessParams = PreprocessParams(),  # noqa: B008
) -> CropDecision:
    """Choose the crop box from the canal track and say why; never cut the spine away.

    The paper's box (:func:`crop_spine`) needs strong evidence: a track found on at
    least ``crop_min_found_slices`` slices over at least ``crop_min_track_mm`` along z
    (half the scan on shorter scans), whose median distance to the bony midline
    (:func:`bony_midline`) is at most ``crop_max_midline_offset_mm``. Its y faces then
    move outwards while they cut bone beside the canal. Otherwise: a track off the
    midline (a hip's hole) or none gives a box of x within ``crop_margin_lr_mm`` + 40 mm
    of the bony midline, y whole ("fallback-midline"); a short track gives x within
    ``crop_margin_lr_mm`` + 15 mm of its found centres, y whole ("fallback-track-x");
    no bone at all gives the whole volume ("fallback-none"). The orientation check
    compares the bone within 12..45 mm in front of the canal (vertebral bodies, holes
    filled) with the bone behind it: less than 0.7 times as much in front means the header's
    anterior-posterior axis contradicts the anatomy (e.g. a prone patient stored as
    supine): a warning, and both y margins take the larger of the two.
    """
    nz, ny, nx = windowed.shape
    sz, _sy, sx = windowed.spacing
    whole: CropBox = ((0, nz), (0, ny), (0, nx))
    centres, found = canal.centres, canal.found
    zf = np.nonzero(found)[0]
    scan_mm = nz * sz
    track_mm = float((zf[-1] - zf[0] + 1) * sz) if len(zf) else 0.0
    ev: dict[str, float] = {
        "found_slices": len(zf),
        "track_mm": round(track_mm, 1),
        "scan_mm": round(scan_mm, 1),
    }
    mid = canal.midline if canal.midline is not None else bony_midline(windowed)
    if len(mid) != nz:
        mid = bony_midline(windowed)
    if np.all(np.isnan(mid)):
        return CropDecision(
            whole,
            "fallback-none",
            f"no bone between {params.hu_min:g} and {params.hu_max:g} HU: nothing to crop on",
            evidence=ev,
            warnings=(
                f"no bone between {params.hu_min:g} and {params.hu_max:g} HU in the scan: "
                "not cropped, the MIP is empty; check the HU window and that the file "
                "holds a CT in HU",
            ),
        )
    mid_x = float(np.nanmedian(mid))
    ev["midline_x"] = round(mid_x, 1)
    offset = np.inf
    if len(zf):
        mz = np.where(np.isnan(mid[zf]), mid_x, mid[zf])
        offset = float(np.median(np.abs(centres[zf, 2] - mz)) * sx)
        ev["midline_offset_mm"] = round(offset, 1)

    def midline_box(reason: str, orientation: str = "unknown") -> CropDecision:
        half = (params.crop_margin_lr_mm + _FALLBACK_MIDLINE_EXTRA_MM) / sx
        x0 = max(0, int(np.floor(mid_x - half)))
        x1 = min(nx, int(np.ceil(mid_x + half)) + 1)
        box = ((0, nz), (0, ny), (x0, x1))
        note = (
            f"spine crop not trusted ({reason}); kept the whole anterior-posterior range "
            f"and {half * sx:.0f} mm either side of the bony midline instead"
        )
        return CropDecision(box, "fallback-midline", reason, orientation, ev, (note,))

    if len(zf) == 0:
        return midline_box("no spinal canal found on any slice")
    if offset > params.crop_max_midline_offset_mm:
        return midline_box(
            f"the canal track lies {offset:.0f} mm from the bony midline "
            f"(at most {params.crop_max_midline_offset_mm:g} mm expected): "
            "it likely follows something other than the spine, such as a hole of a hip bone"
        )

    ratio, ant, post = _orientation_ratio(windowed, centres, zf)
    ev["bone_front_behind_ratio"] = round(ratio, 2)
    warnings: list[str] = []
    orientation = "ok"
    if ant + post > 0 and ratio < _ORIENT_MIN_RATIO:
        orientation = "doubt"
        warnings.append(
            "the anatomy contradicts the header: there is more bone behind the spinal "
            f"canal than in front of it ({ratio:.2f} times as much in front), so the "
            "vertebral bodies seem to lie posterior; was the patient prone with the "
            "header left at supine? The MIP's column 0 may then be posterior; check "
            "the file's direction (not corrected here)."
        )

    need_mm = min(params.crop_min_track_mm, 0.5 * scan_mm)
    if len(zf) < params.crop_min_found_slices or track_mm < need_mm:
        reason = (
            f"the canal was found on {len(zf)} slices over {track_mm:.0f} mm of a "
            f"{scan_mm:.0f} mm scan (at least {params.crop_min_found_slices} slices over "
            f"{need_mm:.0f} mm needed)"
        )
        half = (params.crop_margin_lr_mm + _FALLBACK_TRACK_EXTRA_MM) / sx
        xs = centres[zf, 2]
        x0 = max(0, int(np.floor(xs.min() - half)))
        x1 = min(nx, int(np.ceil(xs.max() + half)) + 1)
        warnings.insert(
            0,
            f"spine crop not trusted ({reason}); cropped only left-right, "
            f"{half * sx:.0f} mm either side of the track, and kept the whole "
            "anterior-posterior range",
        )
        return CropDecision(
            ((0, nz), (0, ny), (x0, x1)),
            "fallback-track-x",
            reason,
            orientation,
            ev,
            tuple(warnings),
        )

    if orientation == "doubt":
        m = max(params.crop_margin_anterior_mm, params.crop_margin_posterior_mm)
        params = params.replace(crop_margin_anterior_mm=m, crop_margin_posterior_mm=m)
    box = crop_spine(centres, found, windowed.shape, windowed.spacing, params)
    box, grow_a, grow_p = _keep_bone_around_track(windowed, centres, zf, box)
    ev["grown_anterior_mm"] = round(grow_a, 1)
    ev["grown_posterior_mm"] = round(grow_p, 1)
    reason = (
        f"canal found on {len(zf)} slices over {track_mm:.0f} mm, "
        f"{offset:.0f} mm from the bony midline"
    )
    if orientation == "doubt":
        reason += f"; {m:g} mm on both sides in y (orientation doubt)"
    if grow_a or grow_p:
        reason += (
            f"; box widened {grow_a:.0f} mm in front and {grow_p:.0f} mm behind where it "
            "cut bone beside the canal"
        )
    return CropDecision(box, "kmeans", reason, orientation, ev, tuple(warnings))


def apply_crop(volume: Volume, box: CropBox) -> Volume:
    """The sub-volume inside ``box`` with its origin moved to the box's first voxel."""
    (z0, z1), (y0, y1), (x0, x1) = box
    arr = volume.array[z0:z1, y0:y1, x0:x1]
    if arr.size == 0:
        raise ValueError(f"crop box {box} is empty for a volume of shape {volume.shape}")
    origin = volume.index_to_physical(np.array([z0, y0, x0], float))
    return Volume(
        array=arr,
        spacing=volume.spacing,
        origin=tuple(origin),
        direction=volume.direction,
        warnings=volume.warnings,
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
