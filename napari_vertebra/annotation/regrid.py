"""Polygons of a MIP carried onto the MIP of a re-run with other parameters.

A MIP pixel (row, col) is a point of the CT: row ``r`` is slice ``z1 - 1 - r`` and column
``c`` is row ``y0 + c`` of the resampled grid inside the crop box
(:meth:`~napari_vertebra.core.pipeline.PipelineResult.mip_to_volume_index`). When
"Preprocess CT" runs again with another crop margin or voxel size, the MIP gets another
grid (another size or offset) and the same anatomy lies elsewhere on it.
:func:`mip_grid` describes a MIP's grid (JSON, stored with a project image), and
:func:`carry_annotations` moves polygons with the anatomy: each vertex goes through its
position in mm onto the new grid, is clipped to the new image, and a polygon the new crop
leaves out is dropped (and named).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .polygons import polygon_area
from .types import VertebraAnnotation

__all__ = ["Carried", "carry_annotations", "map_mip_points", "mip_grid", "mip_pixel_spacing"]

#: A polygon of which less than this fraction of its area lies on the new MIP is dropped.
MIN_KEPT_FRACTION = 0.1


def mip_grid(result: Any) -> dict:
    """The grid of a PipelineResult's MIP as JSON: its ``shape``, the slices (``z``) and
    rows (``y``) of the resampled grid it covers, and that grid's ``spacing`` /
    ``origin`` / ``direction``. Two MIPs with equal grids put the anatomy on the same
    pixels (the x range of the crop box changes what the MIP shows, not where)."""
    (z0, z1), (y0, y1), _ = result.crop_box
    vol = result.resampled
    return {
        "shape": [int(n) for n in np.shape(result.mip)],
        "z": [int(z0), int(z1)],
        "y": [int(y0), int(y1)],
        "spacing": [round(float(s), 6) for s in vol.spacing],
        "origin": [round(float(o), 4) for o in vol.origin],
        "direction": [round(float(d), 6) for d in np.asarray(vol.direction).ravel()],
    }


def mip_pixel_spacing(grid: Any) -> list[float] | None:
    """[row mm, col mm] of the MIP that :func:`mip_grid` describes (its rows are the
    resampled grid's z, its columns y), or None when ``grid`` holds no valid spacing."""
    try:
        z, y, _ = (float(s) for s in grid["spacing"])
    except (KeyError, TypeError, ValueError):
        return None
    ok = all(np.isfinite(v) and v > 0 for v in (z, y))
    return [z, y] if ok else None


def map_mip_points(points_rc: np.ndarray, old: Any, new: Any) -> np.ndarray:
    """(N, 2) float (row, col) on ``new``'s MIP of the points (row, col) of ``old``'s MIP
    (two PipelineResults of the same CT), through their position in mm."""
    rc = np.asarray(points_rc, float).reshape(-1, 2)
    (_, z1), (y0, _), (x0, x1) = old.crop_box
    zyx = np.stack([z1 - 1 - rc[:, 0], y0 + rc[:, 1], np.full(len(rc), (x0 + x1 - 1) / 2)], 1)
    moved = new.resampled.physical_to_index(old.resampled.index_to_physical(zyx))
    (_, nz1), (ny0, _), _ = new.crop_box
    return np.stack([nz1 - 1 - moved[:, 0], moved[:, 1] - ny0], axis=1)


@dataclass
class Carried:
    """What :func:`carry_annotations` made: the ``annotations`` on the new grid, the mean
    move of the vertices in pixels (``shift``: rows, cols), the vertebrae the new MIP
    cuts (``clipped``) and those it leaves out (``dropped``)."""

    annotations: list[VertebraAnnotation]
    shift: tuple[float, float] = (0.0, 0.0)
    clipped: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def carry_annotations(annotations: Sequence[VertebraAnnotation], old: Any, new: Any) -> Carried:
    """``annotations`` of ``old``'s MIP moved onto ``new``'s MIP (see the module doc)."""
    h, w = np.shape(new.mip)
    out: list[VertebraAnnotation] = []
    moves: list[np.ndarray] = []
    clipped: list[str] = []
    dropped: list[str] = []
    for a in annotations:
        polys = []
        cut = False
        for p in a.polygons:
            p = np.asarray(p, float).reshape(-1, 2)
            mapped = map_mip_points(p, old, new)
            moves.append(mapped - p)
            inside = np.stack(
                [np.clip(mapped[:, 0], 0, h - 1), np.clip(mapped[:, 1], 0, w - 1)], 1
            )
            full, kept = polygon_area(mapped), polygon_area(inside)
            if kept < 1.0 or kept < MIN_KEPT_FRACTION * full:
                cut = True
                continue
            cut = cut or kept < 0.99 * full
            polys.append(inside)
        if not polys:
            dropped.append(a.name)
            continue
        if cut:
            clipped.append(a.name)
        out.append(dataclasses.replace(a, polygons=polys))
    shift = np.concatenate(moves).mean(axis=0) if moves else np.zeros(2)
    return Carried(out, (float(shift[0]), float(shift[1])), clipped, dropped)
