"""A header's grid: voxel spacing and direction checked before the voxels are trusted.

SimpleITK reads what a header says and places the voxels accordingly, even when it
cannot be right: a negative spacing silently flips the axis, a direction matrix of
2 x identity doubles the grid, a sheared one places the voxels off a rectangular grid,
a zero or singular one fails with ITK's own text. :func:`check_grid` refuses each with
a :class:`~.errors.CTReadError` that names the header field and how to fix it. See
``docs/reading.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CTReadError

__all__ = ["GridFields", "check_grid", "direction_problem", "grid_fields"]

#: Largest deviation of a direction matrix's D^T D from the identity still taken as
#: orthonormal (rounding of printed direction cosines).
ORTHONORMAL_TOL = 1e-3
_AXES = ("first (i, x)", "second (j, y)", "third (k, z)")


@dataclass(frozen=True)
class GridFields:
    """The header fields that hold the spacing and the direction in a format, and an
    example of a direction written right (empty where the format has none to show)."""

    spacing: str
    direction: str
    example: str = ""


_FIELDS = {
    "metaimage": GridFields(
        "ElementSpacing", "TransformMatrix", "TransformMatrix = 1 0 0 0 1 0 0 0 1"
    ),
    "nrrd": GridFields(
        "space directions (or spacings)",
        "space directions",
        "space directions: (1,0,0) (0,1,0) (0,0,1) times the voxel size",
    ),
    "nifti": GridFields(
        "pixdim[1..3]", "sform (srow_x, srow_y, srow_z) or qform (quatern_b/c/d)", ""
    ),
    "dicom": GridFields(
        "PixelSpacing (0028,0030) and the slice positions (0020,0032)",
        "ImageOrientationPatient (0020,0037)",
        "",
    ),
    "other": GridFields("voxel spacing", "direction", ""),
}


def grid_fields(path: str | os.PathLike) -> GridFields:
    """The fields of ``path``'s format (by its suffix; a folder is a DICOM series)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir():
        return _FIELDS["dicom"]
    for fmt, suffixes in (
        ("metaimage", (".mha", ".mhd")),
        ("nrrd", (".nrrd", ".nhdr")),
        ("nifti", (".nii", ".nii.gz")),
    ):
        if name.endswith(suffixes):
            return _FIELDS[fmt]
    return _FIELDS["other"]


def check_grid(
    path: str | os.PathLike, spacing: tuple[float, ...], direction: tuple[float, ...]
) -> None:
    """Refuse a header whose spacing is not positive or whose direction is not a rotation.

    ``spacing`` (x, y, z) and ``direction`` (row-major 3 x 3) as the header gives them
    (SimpleITK's ``ImageFileReader.ReadImageInformation``). Raises
    :class:`~.errors.CTReadError` naming the field: a zero, negative or non-finite
    spacing; a direction that is singular, scaled (columns not of unit length) or
    sheared (columns not perpendicular).
    """
    f = grid_fields(path)
    sp = np.asarray(spacing, float)[:3]
    bad = [k for k, s in enumerate(sp) if not np.isfinite(s) or s <= 0]
    if bad:
        k = bad[0]
        what = "zero" if sp[k] == 0 else "negative" if sp[k] < 0 else "not a number"
        raise CTReadError(
            f"{path}: the header's voxel spacing ({f.spacing}: {_fmt(sp)}) is {what} "
            f"along the {_AXES[k]} axis: a spacing is the size of a voxel in mm and must be "
            f"positive{'; ITK would silently flip that axis' if sp[k] < 0 else ''}. Set "
            f"{f.spacing} to the scan's voxel size in mm (a flipped axis belongs in "
            f"{f.direction}) and read it again"
        )
    d = np.asarray(direction, float).reshape(3, 3)
    problem = direction_problem(d)
    if problem:
        example = f" (e.g. {f.example} for an axis-aligned scan)" if f.example else ""
        raise CTReadError(
            f"{path}: the header's direction ({f.direction}) {problem}. Set {f.direction} "
            f"to the direction cosines of the scan's axes{example}, with the voxel size in "
            f"{f.spacing}, and read it again"
        )


def direction_problem(d: np.ndarray) -> str:
    """What is wrong with a 3 x 3 direction matrix as a rotation ("" when nothing)."""
    if not np.all(np.isfinite(d)):
        return "holds values that are not numbers"
    norms = np.linalg.norm(d, axis=0)
    if abs(np.linalg.det(d)) < 1e-6 or np.any(norms < 1e-6):
        return (
            "is singular (determinant 0: an axis has no direction, or two axes point the "
            f"same way; columns {_fmt_matrix(d)}), so the grid cannot be placed in space"
        )
    if np.max(np.abs(d.T @ d - np.eye(3))) <= ORTHONORMAL_TOL:
        return ""
    unit = d / norms
    cos = unit.T @ unit - np.eye(3)
    if np.max(np.abs(cos)) > ORTHONORMAL_TOL:
        i, j = np.unravel_index(np.argmax(np.abs(cos)), cos.shape)
        angle = float(np.degrees(np.arccos(np.clip(unit[:, i] @ unit[:, j], -1, 1))))
        return (
            f"is not orthogonal: the {_AXES[i].split()[0]} and {_AXES[j].split()[0]} axes are "
            f"{angle:.1f} degrees apart instead of 90 (a shear; columns {_fmt_matrix(d)}), so "
            "the voxels do not lie on a rectangular grid. If the scan really is sheared, "
            "resample it onto a rectangular grid first"
        )
    return (
        f"scales the grid: its columns have lengths {_fmt(norms)} instead of 1, so SimpleITK "
        f"would place the voxels {_fmt(norms)} times as far apart as the spacing says"
    )


def _fmt(v: np.ndarray) -> str:
    return ", ".join(f"{x:.4g}" for x in v)


def _fmt_matrix(d: np.ndarray) -> str:
    return " ".join("(" + _fmt(d[:, j]) + ")" for j in range(3))
