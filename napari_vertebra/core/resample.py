"""Resampling to isotropic voxels on an axis-aligned LPS grid (the pipeline's first step).

Arrays are (z, y, x); the output grid has the identity direction (x right to left, y
anterior to posterior, z inferior to superior) whatever the input's direction. See
``docs/reading.md`` for the grid and edge rules.
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from ._slices import by_slices
from .volume import Volume

__all__ = ["resample_isotropic", "resample_labels"]

_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


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

    by_slices(fill_slabs, nz)


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

    Trilinear interpolation is separable: three 1D passes (z, y, x) per output slice, in
    float and rounded to the nearest integer for integer voxel types; one slice at a time
    keeps the passes' temporaries in the CPU's cache. About half the CPU time of
    ``sitk.Resample`` (on all cores) for the 512 x 512 x 600 benchmark, and no copy of
    the input (``benchmarks/preprocess.py`` prints both).
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

    by_slices(run, len(tz), chunk=1)
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
