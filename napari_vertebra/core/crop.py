"""The crop around the spine: the paper's box from the canal track, or a safe fallback.

:func:`decide_crop` chooses the box and says why (:class:`CropDecision`), checking the
track against the bony midline and the header's axes against the anatomy
(:func:`~.orientation.check_orientation`); :func:`apply_crop` cuts it out. Arrays are
(z, y, x) voxels of the windowed, isotropic LPS grid. See ``docs/preprocessing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._slices import by_slices
from .canal import CanalDetection, midline_of_columns
from .orientation import OrientationCheck, check_orientation
from .params import PreprocessParams
from .volume import Volume

__all__ = [
    "CROP_KINDS",
    "CropBox",
    "CropDecision",
    "apply_crop",
    "bony_midline",
    "crop_spine",
    "decide_crop",
]

#: ((z0, z1), (y0, y1), (x0, x1)), half-open voxel ranges.
CropBox = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


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
    ``orientation`` is the verdict of ``orientation_check`` (the anatomy against the
    header on every axis, :class:`~.orientation.OrientationCheck`): "ok", "doubt"
    (contradicted on an axis) or "unknown"; ``evidence`` holds the measured figures;
    ``warnings`` the plain-language notes for the user (empty when the paper's box was
    used and the anatomy agrees).
    """

    box: CropBox
    kind: str
    reason: str
    orientation: str = "unknown"
    evidence: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    orientation_check: OrientationCheck | None = None


def bony_midline(windowed: Volume) -> np.ndarray:
    """Left-right middle of the bone on each axial slice: (N,) x voxel, NaN without bone.

    Half-way between the first and third quartiles of the x of the bone voxels
    (windowed > 0) of each slice: the bones of a slice (spine, ribs, hips) are about
    symmetric about the body's midline, and the quartiles' middle stays there even when
    no bone lies on the midline itself. The canal step computes the same from its
    pooled bone mask (``CanalDetection.midline``) at no extra cost.
    """
    return _bone_middle(windowed, 2)


def _bone_middle(windowed: Volume, axis: int) -> np.ndarray:
    """Quartiles' middle of the bone's y (``axis`` 1) or x (2) per axial slice (voxels)."""
    arr = windowed.array
    nz = arr.shape[0]
    cols = np.zeros((nz, arr.shape[axis]), np.int64)

    def count(z0: int, z1: int) -> None:
        cols[z0:z1] = np.count_nonzero(arr[z0:z1] > 0, axis=3 - axis)

    by_slices(count, nz)
    return midline_of_columns(cols, 1)


def _check_orientation(
    windowed: Volume,
    canal: CanalDetection,
    e: _Evidence,
    params: PreprocessParams,
    resampled: Volume | None,
) -> tuple[bool, OrientationCheck]:
    """Whether the track is trusted to follow the spine, and the anatomy against the header.

    A track within ``crop_max_midline_offset_mm`` of the bony midline is trusted. One
    farther off is trusted still when it lies that close to the middle of the bone along
    y and the vertebral bodies lie beside it: the patient is rolled (lying on the side),
    so the header's y axis runs left-right through the patient and x front to back.
    The anterior-posterior bone ratio joins ``e.figures``.
    """
    limit = params.crop_max_midline_offset_mm
    trusted = len(e.zf) > 0 and e.offset <= limit
    check = None
    if len(e.zf) and not trusted:
        mid_y = _bone_middle(windowed, 1)[e.zf]
        ok = ~np.isnan(mid_y)
        if ok.any():
            dy = np.abs(canal.centres[e.zf[ok], 1] - mid_y[ok]) * windowed.spacing[1]
            e.figures["midline_offset_y_mm"] = round(float(np.median(dy)), 1)
            if e.figures["midline_offset_y_mm"] <= limit:
                rolled = check_orientation(windowed, canal.centres, e.zf, resampled)
                trusted, check = rolled.doubts("roll"), rolled
    if check is None or not trusted:
        zf = e.zf if trusted else e.zf[:0]
        check = check_orientation(windowed, canal.centres, zf, resampled)
    if "bone_front_behind_ratio" in check.evidence:
        e.figures["bone_front_behind_ratio"] = check.evidence["bone_front_behind_ratio"]
    return trusted, check


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


@dataclass
class _Evidence:
    """What :func:`decide_crop` measures before it chooses.

    ``zf`` are the slices where the canal was found; ``mid_x`` is the median bony
    midline (x voxel; NaN without bone) and ``offset`` the track's median distance to
    it (mm; inf without a track); ``figures`` the evidence dict of the decision.
    """

    zf: np.ndarray
    scan_mm: float
    track_mm: float
    mid_x: float
    offset: float
    figures: dict[str, float]


def _measure(windowed: Volume, canal: CanalDetection) -> _Evidence:
    """The track's extent and its distance to the bony midline (see :class:`_Evidence`)."""
    nz = windowed.shape[0]
    sz, _, sx = windowed.spacing
    zf = np.nonzero(canal.found)[0]
    scan_mm = nz * sz
    track_mm = float((zf[-1] - zf[0] + 1) * sz) if len(zf) else 0.0
    ev: dict[str, float] = {
        "found_slices": len(zf),
        "track_mm": round(track_mm, 1),
        "scan_mm": round(scan_mm, 1),
    }
    mid = canal.midline
    if mid is None or len(mid) != nz:
        mid = bony_midline(windowed)
    if np.all(np.isnan(mid)):
        return _Evidence(zf, scan_mm, track_mm, np.nan, np.inf, ev)
    mid_x = float(np.nanmedian(mid))
    ev["midline_x"] = round(mid_x, 1)
    offset = np.inf
    if len(zf):
        mz = np.where(np.isnan(mid[zf]), mid_x, mid[zf])
        offset = float(np.median(np.abs(canal.centres[zf, 2] - mz)) * sx)
        ev["midline_offset_mm"] = round(offset, 1)
    return _Evidence(zf, scan_mm, track_mm, mid_x, offset, ev)


def decide_crop(
    windowed: Volume,
    canal: CanalDetection,
    params: PreprocessParams = PreprocessParams(),  # noqa: B008
    resampled: Volume | None = None,
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
    no bone at all gives the whole volume ("fallback-none"). The anatomy is checked
    against the header on every axis (:func:`~.orientation.check_orientation`, on the
    track's slices when it is at the midline; ``resampled``, the grid in HU, adds the
    lungs' air): a contradicted axis gives a warning; with the bodies behind the canal
    (anterior-posterior doubt) both y margins take the larger of the two, with the
    bodies beside it (roll doubt) every margin takes the largest.
    """
    e = _measure(windowed, canal)
    if np.isnan(e.mid_x):
        return _no_bone_box(windowed, e, params)
    trusted, check = _check_orientation(windowed, canal, e, params, resampled)
    if len(e.zf) == 0:
        return _midline_box(windowed, e, params, "no spinal canal found on any slice", check)
    if not trusted:
        return _midline_box(
            windowed,
            e,
            params,
            f"the canal track lies {e.offset:.0f} mm from the bony midline "
            f"(at most {params.crop_max_midline_offset_mm:g} mm expected): "
            "it likely follows something other than the spine, such as a hole of a hip bone",
            check,
        )
    need_mm = min(params.crop_min_track_mm, 0.5 * e.scan_mm)
    if len(e.zf) < params.crop_min_found_slices or e.track_mm < need_mm:
        reason = (
            f"the canal was found on {len(e.zf)} slices over {e.track_mm:.0f} mm of a "
            f"{e.scan_mm:.0f} mm scan (at least {params.crop_min_found_slices} slices over "
            f"{need_mm:.0f} mm needed)"
        )
        return _track_x_box(windowed, canal.centres, e, params, reason, check)
    return _paper_box(windowed, canal, e, params, check)


def _no_bone_box(windowed: Volume, e: _Evidence, params: PreprocessParams) -> CropDecision:
    """ "fallback-none": the whole volume, with the warning that there is no bone."""
    nz, ny, nx = windowed.shape
    window = f"between {params.hu_min:g} and {params.hu_max:g} HU"
    return CropDecision(
        ((0, nz), (0, ny), (0, nx)),
        "fallback-none",
        f"no bone {window}: nothing to crop on",
        evidence=e.figures,
        warnings=(
            f"no bone {window} in the scan: not cropped, the MIP is empty; check the "
            "HU window and that the file holds a CT in HU",
        ),
    )


def _midline_box(
    windowed: Volume,
    e: _Evidence,
    params: PreprocessParams,
    reason: str,
    check: OrientationCheck,
) -> CropDecision:
    """ "fallback-midline": x within the margin + 40 mm of the bony midline, y and z whole."""
    nz, ny, nx = windowed.shape
    sx = windowed.spacing[2]
    half = (params.crop_margin_lr_mm + _FALLBACK_MIDLINE_EXTRA_MM) / sx
    x0 = max(0, int(np.floor(e.mid_x - half)))
    x1 = min(nx, int(np.ceil(e.mid_x + half)) + 1)
    note = (
        f"spine crop not trusted ({reason}); kept the whole anterior-posterior range "
        f"and {half * sx:.0f} mm either side of the bony midline instead"
    )
    box = ((0, nz), (0, ny), (x0, x1))
    warnings = (note, *check.warnings)
    return CropDecision(box, "fallback-midline", reason, check.verdict, e.figures, warnings, check)


def _track_x_box(
    windowed: Volume,
    centres: np.ndarray,
    e: _Evidence,
    params: PreprocessParams,
    reason: str,
    check: OrientationCheck,
) -> CropDecision:
    """ "fallback-track-x": x within the margin + 15 mm of the found centres, y whole."""
    nz, ny, nx = windowed.shape
    sx = windowed.spacing[2]
    half = (params.crop_margin_lr_mm + _FALLBACK_TRACK_EXTRA_MM) / sx
    xs = centres[e.zf, 2]
    x0 = max(0, int(np.floor(xs.min() - half)))
    x1 = min(nx, int(np.ceil(xs.max() + half)) + 1)
    note = (
        f"spine crop not trusted ({reason}); cropped only left-right, "
        f"{half * sx:.0f} mm either side of the track, and kept the whole "
        "anterior-posterior range"
    )
    return CropDecision(
        ((0, nz), (0, ny), (x0, x1)),
        "fallback-track-x",
        reason,
        check.verdict,
        e.figures,
        (note, *check.warnings),
        check,
    )


def _paper_box(
    windowed: Volume,
    canal: CanalDetection,
    e: _Evidence,
    params: PreprocessParams,
    check: OrientationCheck,
) -> CropDecision:
    """ "kmeans": :func:`crop_spine`'s box, its y faces moved out where they cut bone.

    With the bodies behind the canal (anterior-posterior doubt) both y margins take the
    larger of the two; with the bodies beside it (roll doubt) every margin the largest.
    """
    roll = check.doubts("roll")
    doubt = roll or check.doubts("anterior-posterior")
    if doubt:
        m = max(params.crop_margin_anterior_mm, params.crop_margin_posterior_mm)
        if roll:
            m = max(m, params.crop_margin_lr_mm)
            params = params.replace(crop_margin_lr_mm=m)
        params = params.replace(crop_margin_anterior_mm=m, crop_margin_posterior_mm=m)
    box = crop_spine(canal.centres, canal.found, windowed.shape, windowed.spacing, params)
    box, grow_a, grow_p = _keep_bone_around_track(windowed, canal.centres, e.zf, box)
    e.figures["grown_anterior_mm"] = round(grow_a, 1)
    e.figures["grown_posterior_mm"] = round(grow_p, 1)
    reason = (
        f"canal found on {len(e.zf)} slices over {e.track_mm:.0f} mm, "
        f"{e.offset:.0f} mm from the bony midline"
    )
    if doubt:
        both = "in x and y" if roll else "in y"
        reason += f"; {m:g} mm on both sides {both} (orientation doubt)"
    if grow_a or grow_p:
        reason += (
            f"; box widened {grow_a:.0f} mm in front and {grow_p:.0f} mm behind where it "
            "cut bone beside the canal"
        )
    return CropDecision(box, "kmeans", reason, check.verdict, e.figures, check.warnings, check)


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
