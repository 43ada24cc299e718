"""The crop around the spine: the paper's box from the canal track, or a safe fallback.

:func:`decide_crop` chooses the box and says why (:class:`CropDecision`), checking the
track against the bony midline and the header's anterior-posterior axis against the
anatomy; :func:`apply_crop` cuts it out. Arrays are (z, y, x) voxels of the windowed,
isotropic LPS grid. See ``docs/preprocessing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ._slices import by_slices
from .canal import CanalDetection, midline_of_columns
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

    by_slices(count, nz)
    return midline_of_columns(cols, 1)


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
    e = _measure(windowed, canal)
    if np.isnan(e.mid_x):
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
    if len(e.zf) == 0:
        return _midline_box(windowed, e, params, "no spinal canal found on any slice")
    if e.offset > params.crop_max_midline_offset_mm:
        return _midline_box(
            windowed,
            e,
            params,
            f"the canal track lies {e.offset:.0f} mm from the bony midline "
            f"(at most {params.crop_max_midline_offset_mm:g} mm expected): "
            "it likely follows something other than the spine, such as a hole of a hip bone",
        )
    warnings = _orientation_warnings(windowed, canal.centres, e)
    need_mm = min(params.crop_min_track_mm, 0.5 * e.scan_mm)
    if len(e.zf) < params.crop_min_found_slices or e.track_mm < need_mm:
        reason = (
            f"the canal was found on {len(e.zf)} slices over {e.track_mm:.0f} mm of a "
            f"{e.scan_mm:.0f} mm scan (at least {params.crop_min_found_slices} slices over "
            f"{need_mm:.0f} mm needed)"
        )
        return _track_x_box(windowed, canal.centres, e, params, reason, warnings)
    return _paper_box(windowed, canal, e, params, warnings)


def _midline_box(
    windowed: Volume, e: _Evidence, params: PreprocessParams, reason: str
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
    return CropDecision(box, "fallback-midline", reason, "unknown", e.figures, (note,))


def _orientation_warnings(windowed: Volume, centres: np.ndarray, e: _Evidence) -> list[str]:
    """The orientation check's warning (none when the anatomy agrees with the header).

    Adds the bone ratio to the evidence.
    """
    ratio, ant, post = _orientation_ratio(windowed, centres, e.zf)
    e.figures["bone_front_behind_ratio"] = round(ratio, 2)
    if ant + post == 0 or ratio >= _ORIENT_MIN_RATIO:
        return []
    return [
        "the anatomy contradicts the header: there is more bone behind the spinal "
        f"canal than in front of it ({ratio:.2f} times as much in front), so the "
        "vertebral bodies seem to lie posterior; was the patient prone with the "
        "header left at supine? The MIP's column 0 may then be posterior; check "
        "the file's direction (not corrected here)."
    ]


def _track_x_box(
    windowed: Volume,
    centres: np.ndarray,
    e: _Evidence,
    params: PreprocessParams,
    reason: str,
    warnings: list[str],
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
        "doubt" if warnings else "ok",
        e.figures,
        (note, *warnings),
    )


def _paper_box(
    windowed: Volume,
    canal: CanalDetection,
    e: _Evidence,
    params: PreprocessParams,
    warnings: list[str],
) -> CropDecision:
    """ "kmeans": :func:`crop_spine`'s box, its y faces moved out where they cut bone.

    With an orientation doubt (``warnings``) both y margins take the larger of the two.
    """
    doubt = bool(warnings)
    if doubt:
        m = max(params.crop_margin_anterior_mm, params.crop_margin_posterior_mm)
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
        reason += f"; {m:g} mm on both sides in y (orientation doubt)"
    if grow_a or grow_p:
        reason += (
            f"; box widened {grow_a:.0f} mm in front and {grow_p:.0f} mm behind where it "
            "cut bone beside the canal"
        )
    orientation = "doubt" if doubt else "ok"
    return CropDecision(box, "kmeans", reason, orientation, e.figures, tuple(warnings))


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
