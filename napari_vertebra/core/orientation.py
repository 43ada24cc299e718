"""Anatomy against the header: the patient's orientation checked on every axis.

After the resample step the grid's axes are the header's: x right to left, y anterior
to posterior, z inferior to superior. :func:`check_orientation` compares them with the
anatomy and gives each axis a verdict, "ok" (the anatomy agrees), "doubt" (it
contradicts the header: a warning that names the axis) or "unknown" (too little
evidence, as on a short partial scan; never a warning):

- **anterior-posterior** and **roll**, from the bone around the spinal canal in the
  axial plane (12-45 mm from the canal centre, holes filled, on up to 40 slices where
  the canal was found): the vertebral bodies outweigh the rest and lie in front of the
  canal in a supine LPS scan. Behind it means the anterior-posterior axis is flipped (a
  prone patient stored as supine); to its left or right means the patient lies on the
  side (rolled 90 degrees) and the MIP is a coronal view.
- **head-feet**, from three cues that each agree, contradict or stay silent: the size of
  the vertebral bodies along the track (they grow towards the sacrum), a pelvis (much
  bone far from the canal, little air) beyond one end of the track (below it), and the
  air of the lungs (in the upper half of the scan, not the lower).

Arrays are (z, y, x) voxels of the isotropic LPS grid. The header stays the source of
truth for the physical mapping: nothing is flipped here. See ``docs/preprocessing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .volume import Volume

__all__ = ["ORIENTATION_AXES", "OrientationCheck", "check_orientation", "fill_holes_2d"]

#: The axes :func:`check_orientation` judges, in the order of its verdicts.
ORIENTATION_AXES = ("anterior-posterior", "roll", "head-feet")

#: Bone around the canal: counted from this distance from the centre to that one (mm),
#: within this half-width across (mm), on at most this many found slices, after the
#: holes of a square patch of this half-size (mm) round the centre are filled.
_NEAR_MM, _FAR_MM, _HALF_WIDTH_MM, _MAX_SLICES, _PATCH_MM = 12.0, 45.0, 15.0, 40, 60.0
#: Bone in front of the canal over bone behind it below this ratio: the bodies lie
#: posterior (anterior-posterior axis contradicted).
_MIN_FRONT_RATIO = 0.7
#: Bone beside the canal (left or right) at least this many times the bone in front of
#: or behind it: the patient is rolled; the bone in front of or behind it at least this
#: many times the bone beside it: not rolled.
_ROLL_RATIO, _NOT_ROLLED_RATIO = 1.5, 1.2

#: Body size cue: a track of at least this length (mm); at most this many slices, each
#: measured in a box from the canal's wall to this depth (mm) and this half-width (mm)
#: towards the bodies; the largest over this length (mm) per slice (no disc dips);
#: lowest third over highest third of the track outside 1 / ratio .. ratio to count,
#: below this ratio it decides alone.
_SIZE_MIN_TRACK_MM, _SIZE_MAX_SLICES = 100.0, 100
_SIZE_DEPTH_MM, _SIZE_HALF_WIDTH_MM, _SIZE_RUN_MM = 75.0, 40.0, 30.0
_SIZE_RATIO, _SIZE_ALONE_RATIO, _SIZE_ALONE_TRACK_MM = 1.1, 0.7, 150.0
#: Pelvis cue: bone farther than this from the canal centre (mm), per slice, on at most
#: this many slices; a part beyond an end of the track at least this long (mm) whose
#: median is at least this area (mm^2) and this many times the track's, with at most
#: this much enclosed air (mm^2), is a pelvis.
_OUTER_RADIUS_MM, _PROFILE_SLICES = 60.0, 80
_PELVIS_MIN_MM, _PELVIS_MIN_AREA_MM2, _PELVIS_TRACK_FACTOR = 30.0, 2500.0, 2.0
_PELVIS_MAX_AIR_MM2 = 1000.0
#: Lung cue: air enclosed by the body (below -400 HU inside the outline of voxels above
#: -300 HU) on scans at least this long (mm); one half of the scan holding at least
#: this many times the other's, with at least this length (mm) of slices of at least
#: this area (mm^2, lungs rather than bowel gas).
_LUNG_MIN_SCAN_MM, _LUNG_HALF_RATIO = 100.0, 3.0
_LUNG_MIN_RUN_MM, _LUNG_MIN_AREA_MM2 = 20.0, 2500.0
_AIR_HU, _BODY_HU = -400.0, -300.0

#: Sides of the canal (anterior: -y, posterior: +y, right: -x, left: +x) and the quarter
#: turns (``np.rot90``) that bring each to the top of a (y, x) patch.
_SIDES = {"anterior": 0, "posterior": 2, "right": -1, "left": 1}


@dataclass(frozen=True)
class OrientationCheck:
    """The verdict per axis (:data:`ORIENTATION_AXES` -> "ok", "doubt" or "unknown").

    ``body_side`` is where the vertebral bodies lie around the canal ("anterior",
    "posterior", "right", "left"; "" when unknown); ``evidence`` the measured figures;
    ``warnings`` one plain-language note per contradicted axis.
    """

    axes: dict[str, str]
    body_side: str = ""
    evidence: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """ "doubt" when any axis is contradicted, else "ok" when any agrees, else "unknown"."""
        values = set(self.axes.values())
        return "doubt" if "doubt" in values else "ok" if "ok" in values else "unknown"

    def doubts(self, axis: str) -> bool:
        """True when the anatomy contradicts the header on ``axis``."""
        return self.axes.get(axis) == "doubt"


def check_orientation(
    windowed: Volume,
    centres: np.ndarray,
    zf: np.ndarray,
    resampled: Volume | None = None,
) -> OrientationCheck:
    """Check the header's axes against the anatomy (see the module's description).

    ``windowed`` is the HU-windowed isotropic grid (bone > 0), ``centres`` the canal
    centre per slice, ``zf`` the slices of a canal track trusted to follow the spine
    (empty: only the lung cue can speak), ``resampled`` the same grid in HU (without it
    the lung cue and the pelvis' air test are silent).
    """
    ev: dict[str, float] = {}
    sides = _bone_around_canal(windowed, centres, zf)
    ap, roll, body = _around_verdicts(sides, ev)
    air = _air_profile(resampled) if resampled is not None else None
    hf, reasons = _head_feet(windowed, centres, zf, body, air, ev)
    axes = {"anterior-posterior": ap, "roll": roll, "head-feet": hf}
    warnings = []
    if ap == "doubt":
        warnings.append(
            "the anatomy contradicts the header's anterior-posterior axis: there is more "
            "bone behind the spinal canal than in front of it "
            f"({ev['bone_front_behind_ratio']:.2f} times as much in front), so the "
            "vertebral bodies seem to lie posterior; was the patient prone with the "
            "header left at supine? The MIP's column 0 may then be posterior; check the "
            "file's direction (not corrected here)."
        )
    if roll == "doubt":
        warnings.append(
            "the anatomy contradicts the header's left-right and anterior-posterior axes: "
            f"the vertebral bodies lie to the patient's {body} of the spinal canal, not in "
            f"front of it ({ev['bone_side_front_ratio']:.1f} times the bone in front or "
            "behind), so the patient seems to lie on the side (rolled 90 degrees) with the "
            "header left at supine. The MIP is then a coronal (front) view, not a sagittal "
            "one; check the file's direction (not corrected here)."
        )
    if hf == "doubt":
        warnings.append(
            "the anatomy contradicts the header's head-feet (superior-inferior) axis: "
            + "; ".join(reasons)
            + ". The scan seems stored upside down (feet first with the header left at "
            "head first?): the MIP then shows the sacrum at the top and the vertebrae in "
            "reverse order; check the file's direction (not corrected here)."
        )
    return OrientationCheck(axes, body, ev, tuple(warnings))


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes (background not 4-connected to the border) filled, in one
    labelling pass (faster than scipy's iterative ``binary_fill_holes``)."""
    lab, n = ndi.label(~mask)
    if n == 0:
        return mask
    border = np.zeros(n + 1, bool)
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        border[edge] = True
    border[0] = True  # label 0 is the mask itself
    return mask | ~border[lab]


def _patch(plane: np.ndarray, cy: int, cx: int, half: int) -> np.ndarray:
    """The (2 half + 1)^2 square of ``plane`` centred on (cy, cx), zero outside it."""
    out = np.zeros((2 * half + 1, 2 * half + 1), plane.dtype)
    ny, nx = plane.shape
    y0, y1 = max(0, cy - half), min(ny, cy + half + 1)
    x0, x1 = max(0, cx - half), min(nx, cx + half + 1)
    if y0 < y1 and x0 < x1:
        out[y0 - cy + half : y1 - cy + half, x0 - cx + half : x1 - cx + half] = plane[y0:y1, x0:x1]
    return out


def _spread(zs: np.ndarray, most: int) -> np.ndarray:
    """At most ``most`` of the slices ``zs``, evenly spread."""
    if len(zs) <= most:
        return zs
    return zs[np.linspace(0, len(zs) - 1, most).round().astype(int)]


def _bone_around_canal(windowed: Volume, centres: np.ndarray, zf: np.ndarray) -> dict[str, int]:
    """Bone voxels 12-45 mm from the canal centre on each side (holes filled first).

    Per slice the bone mask of a patch round the canal centre is hole-filled first, so
    that a vertebral body whose marrow is below the window (osteoporosis: only the
    cortical shell is bone) counts as the solid block it is.
    """
    arr, s = windowed.array, windowed.spacing[1]
    half, near, far = round(_PATCH_MM / s), round(_NEAR_MM / s), round(_FAR_MM / s)
    hw = round(_HALF_WIDTH_MM / s)
    counts = dict.fromkeys(_SIDES, 0)
    for z in _spread(zf, _MAX_SLICES):
        cy, cx = round(centres[z, 1]), round(centres[z, 2])
        patch = fill_holes_2d(_patch(arr[z] > 0, cy, cx, half))
        for side, k in _SIDES.items():
            turned = np.rot90(patch, k)  # that side at the top
            band = turned[half - far : half - near, half - hw : half + hw + 1]
            counts[side] += int(np.count_nonzero(band))
    return counts


def _around_verdicts(sides: dict[str, int], ev: dict[str, float]) -> tuple[str, str, str]:
    """(anterior-posterior, roll, body side) from the bone around the canal."""
    front, back = sides["anterior"], sides["posterior"]
    side = max(sides["right"], sides["left"])
    if front + back + side == 0:
        return "unknown", "unknown", ""
    ratio = front / max(back, 1)
    ev["bone_front_behind_ratio"] = round(ratio, 2)
    ev["bone_side_front_ratio"] = round(side / max(front, back, 1), 2)
    if side >= _ROLL_RATIO * max(front, back):
        return "unknown", "doubt", "right" if sides["right"] >= sides["left"] else "left"
    roll = "ok" if max(front, back) >= _NOT_ROLLED_RATIO * side else "unknown"
    if ratio < _MIN_FRONT_RATIO:
        return "doubt", roll, "posterior"
    return "ok", roll, "anterior"


def _head_feet(
    windowed: Volume,
    centres: np.ndarray,
    zf: np.ndarray,
    body: str,
    air: tuple[np.ndarray, np.ndarray] | None,
    ev: dict[str, float],
) -> tuple[str, list[str]]:
    """The head-feet verdict from the three cues and, when contradicted, why."""
    cues = {
        "size": _size_cue(windowed, centres, zf, body, ev),
        "pelvis": _pelvis_cue(windowed, centres, zf, air, ev),
        "lungs": _lung_cue(windowed, air, ev),
    }
    for name, value in cues.items():
        ev[f"head_feet_{name}"] = float(value)
    votes = set(cues.values())
    if 1 in votes or -1 not in votes:
        return ("ok" if 1 in votes and -1 not in votes else "unknown"), []
    against = [name for name, v in cues.items() if v < 0]
    strong_size = (
        ev.get("body_size_low_high_ratio", 1.0) <= _SIZE_ALONE_RATIO
        and ev.get("body_size_track_mm", 0.0) >= _SIZE_ALONE_TRACK_MM
    )
    if len(against) < 2 and "pelvis" not in against and not strong_size:
        return "unknown", []
    why = {
        "size": "the vertebral bodies shrink towards the bottom of the scan (the lowest "
        f"third of the track {ev.get('body_size_low_high_ratio', 0):.2f} times the size of "
        "the highest; they grow towards the sacrum)",
        "pelvis": "a pelvis (bone far from the canal, no lungs) lies above the spine's "
        "upper end, none below its lower end",
        "lungs": "the lungs' air lies in the lower half of the scan "
        f"({ev.get('air_low_high_ratio', 0):.1f} times the upper half's)",
    }
    return "doubt", [why[name] for name in against]


def _size_cue(
    windowed: Volume, centres: np.ndarray, zf: np.ndarray, body: str, ev: dict[str, float]
) -> int:
    """+1 when the bodies grow towards z = 0 (inferior), -1 when towards the top, else 0.

    Per slice of the track: the area of the bone (holes filled) connected to a seed just
    in front of the canal (towards ``body``), in a box from the canal's wall to 75 mm
    deep and 40 mm either side; the largest over 30 mm of the track (so that the discs'
    slices do not count); the lowest third's median over the highest third's.
    """
    if len(zf) == 0 or body == "":
        return 0
    sz, s = windowed.spacing[0], windowed.spacing[1]
    track_mm = float((zf[-1] - zf[0]) * sz)
    if track_mm < _SIZE_MIN_TRACK_MM:
        return 0
    zs = _spread(np.arange(zf[0], zf[-1] + 1), _SIZE_MAX_SLICES)
    half = round(_SIZE_DEPTH_MM / s)
    wall, hw = round(8.0 / s), round(_SIZE_HALF_WIDTH_MM / s)
    seed_rows = slice(half - round(35.0 / s), half - round(10.0 / s))
    seed_cols = slice(hw - round(8.0 / s), hw + round(8.0 / s) + 1)
    k = _SIDES[body]
    areas = np.zeros(len(zs))
    for i, z in enumerate(zs):
        cy, cx = round(centres[z, 1]), round(centres[z, 2])
        turned = np.rot90(_patch(windowed.array[z] > 0, cy, cx, half), k)
        box = fill_holes_2d(turned[: half + round(10.0 / s), half - hw : half + hw + 1])
        lab, n = ndi.label(box)
        seeds = np.unique(lab[seed_rows, seed_cols])
        seeds = seeds[seeds > 0]
        if n and len(seeds):
            areas[i] = np.count_nonzero(np.isin(lab[: half - wall], seeds)) * s * s
    step = track_mm / max(1, len(zs) - 1)
    run = ndi.maximum_filter1d(areas, max(1, round(_SIZE_RUN_MM / step)))
    third = max(1, len(run) // 3)
    low, high = float(np.median(run[:third])), float(np.median(run[-third:]))
    if low <= 0 or high <= 0:
        return 0
    ratio = low / high
    ev["body_size_low_high_ratio"] = round(ratio, 2)
    ev["body_size_track_mm"] = round(track_mm, 1)
    if ratio >= _SIZE_RATIO:
        return 1
    return -1 if ratio <= 1 / _SIZE_RATIO else 0


def _outer_bone(windowed: Volume, centres: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Bone area (mm^2) farther than 60 mm from the canal centre on slices ``zs``."""
    arr = windowed.array
    _, sy, sx = windowed.spacing
    ny, nx = arr.shape[1:]
    yy = (np.arange(0, ny, 2) * sy)[:, None]
    xx = (np.arange(0, nx, 2) * sx)[None, :]
    out = np.zeros(len(zs))
    for i, z in enumerate(zs):
        far = (yy - centres[z, 1] * sy) ** 2 + (xx - centres[z, 2] * sx) ** 2 > _OUTER_RADIUS_MM**2
        out[i] = np.count_nonzero((arr[z, ::2, ::2] > 0) & far) * 4 * sy * sx
    return out


def _pelvis_cue(
    windowed: Volume,
    centres: np.ndarray,
    zf: np.ndarray,
    air: tuple[np.ndarray, np.ndarray] | None,
    ev: dict[str, float],
) -> int:
    """+1 when a pelvis lies beyond the track's lower end only, -1 beyond its upper end only."""
    if len(zf) == 0:
        return 0
    nz, sz = windowed.shape[0], windowed.spacing[0]
    zs = _spread(np.arange(nz), _PROFILE_SLICES)
    outer = _outer_bone(windowed, centres, zs)
    on_track = (zs >= zf[0]) & (zs <= zf[-1])
    track = float(np.median(outer[on_track])) if on_track.any() else 0.0
    found = {}
    for end, part, length in (
        ("below", zs < zf[0], zf[0] * sz),
        ("above", zs > zf[-1], (nz - 1 - zf[-1]) * sz),
    ):
        if length < _PELVIS_MIN_MM or not part.any():
            found[end] = False
            continue
        area = float(np.median(outer[part]))
        ev[f"outer_bone_{end}_mm2"] = round(area, 0)
        airy = (
            air is not None and float(np.median(np.interp(zs[part], *air))) > _PELVIS_MAX_AIR_MM2
        )
        found[end] = (
            area >= _PELVIS_MIN_AREA_MM2 and area >= _PELVIS_TRACK_FACTOR * track and not airy
        )
    ev["outer_bone_track_mm2"] = round(track, 0)
    if found["below"] == found["above"]:
        return 0
    return 1 if found["below"] else -1


def _air_profile(resampled: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(z, area mm^2) of the air enclosed by the body on at most 80 slices.

    The body is the largest component of the voxels above -300 HU (every second voxel in
    y and x); its holes below -400 HU are lungs, airways and bowel gas.
    """
    arr = resampled.array
    _, sy, sx = resampled.spacing
    zs = _spread(np.arange(arr.shape[0]), _PROFILE_SLICES)
    area = np.zeros(len(zs))
    for i, z in enumerate(zs):
        plane = arr[z, ::2, ::2]
        lab, n = ndi.label(plane > _BODY_HU)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        hull = fill_holes_2d(lab == int(np.argmax(sizes)))
        area[i] = np.count_nonzero(hull & (plane < _AIR_HU)) * 4 * sy * sx
    return zs.astype(float), area


def _lung_cue(
    windowed: Volume, air: tuple[np.ndarray, np.ndarray] | None, ev: dict[str, float]
) -> int:
    """+1 when the lungs' air lies in the upper half of the scan, -1 in the lower, else 0."""
    if air is None:
        return 0
    nz, sz = windowed.shape[0], windowed.spacing[0]
    if nz * sz < _LUNG_MIN_SCAN_MM:
        return 0
    zs, area = air
    low = zs < (nz - 1) / 2
    lo, hi = float(area[low].sum()), float(area[~low].sum())
    if lo + hi == 0:
        return 0
    step = nz * sz / len(zs)
    ev["air_low_high_ratio"] = round(lo / max(hi, 1.0), 2)
    for sign, rich, other, part in ((1, hi, lo, ~low), (-1, lo, hi, low)):
        lungs = np.count_nonzero(area[part] >= _LUNG_MIN_AREA_MM2) * step
        if rich >= _LUNG_HALF_RATIO * max(other, 1.0) and lungs >= _LUNG_MIN_RUN_MM:
            return sign
    return 0
