"""3D augmentation of a CT and its label map, before the pipeline projects them.

A real scan seen through the pipeline gives one MIP. The same scan, changed the way
clinical scans differ from each other, gives many that look like other patients'
MIPs: :func:`augment_scan` draws one such change and applies it to the CT and its
label map together, so the projected polygons stay on the anatomy.

- **Position**: the patient rolled (about the head-feet axis), tilted (bent forward or
  back) and leaning sideways, each within ``rotate_deg``, and scaled (patient size).
  Only the volumes' geometry changes (direction, spacing, origin); the pipeline's
  resampling to its 1 mm LPS grid does the interpolation, CT and labels alike.
- **Field of view**: the scan starts and ends anywhere along the spine (a vertebra cut
  in the middle), and now and then a small in-plane field of view.
- **Slices**: thick slices (``slice_mm``) averaged and spaced as a scanner would.
- **Intensities**: HU gain and shift, noise, bone density per vertebra (osteoporotic
  to dense) and, where the label map names them (TotalSegmentator), contrast in the
  heart and vessels from none to arterial (a bright aorta runs in front of the spine on
  contrast scans), ribs and sternum denser or lighter. Intensities stay HU, so the
  pipeline's window decides what is bone, as on a real scan.

Pure numpy / scipy; arrays (z, y, x) as :class:`~napari_vertebra.core.volume.Volume`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .volume import Volume

__all__ = ["ScanAugmentation", "augment_scan", "rotation_matrix"]

#: TotalSegmentator v2 ("total") ids of the heart and the great vessels (contrast), and
#: of the ribs, sternum and costal cartilages (bone outside the spine).
TOTALSEG_VESSELS = tuple(range(51, 69))
TOTALSEG_RIB_CAGE = (*tuple(range(92, 117)), 118)
#: Air (HU): voxels at or below it are left as they are (noise in air changes nothing).
_AIR_HU = -1000.0


@dataclass(frozen=True)
class ScanAugmentation:
    """How far :func:`augment_scan` may change a scan (every range is drawn uniformly).

    Angles in degrees, lengths in mm, intensities in HU; a value of 0 turns that part
    off. ``fov_prob``: probability that the scan is cut along z to a random length of at
    least ``fov_min_mm`` (and, a quarter of those times, in-plane to at least
    ``fov_min_inplane_mm`` around the spine). ``vertebra_density``: bone HU above 100
    scaled per scan by a factor in 1 +- this. ``contrast_hu``: range of the mean HU
    given to the heart and vessels (TotalSegmentator labels only).
    """

    rotate_deg: tuple[float, float, float] = (15.0, 15.0, 10.0)  # roll, tilt, lean
    scale: float = 0.1
    fov_prob: float = 0.6
    fov_min_mm: float = 60.0
    fov_min_inplane_mm: float = 70.0
    slice_mm: tuple[float, float] = (1.0, 5.0)
    hu_gain: float = 0.08
    hu_shift: float = 40.0
    noise_hu: float = 25.0
    vertebra_density: float = 0.3
    rib_density: float = 0.3
    contrast_hu: tuple[float, float] = (40.0, 450.0)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return asdict(self)


def rotation_matrix(roll: float, tilt: float, lean: float) -> np.ndarray:
    """3x3 rotation of LPS space (degrees): ``roll`` about z (head-feet), ``tilt`` about
    x (left-right: bending forward or back), ``lean`` about y (front-back: sideways)."""
    a, b, c = np.deg2rad([roll, tilt, lean])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def augment_scan(
    ct: Volume,
    labels: Volume,
    rng: np.random.Generator,
    params: ScanAugmentation = ScanAugmentation(),
    vertebra_ids: tuple[int, ...] = (),
    totalsegmentator: bool = False,
) -> tuple[Volume, Volume, dict[str, Any]]:
    """One random change of ``ct`` (HU) and ``labels`` (same grid); see the module doc.

    ``vertebra_ids``: the label ids of vertebrae (their bone density is varied, and the
    field-of-view cuts keep at least one of them). ``totalsegmentator``: the label map
    uses TotalSegmentator ids, so the heart, vessels and rib cage are known. Returns the
    new CT, the new labels (one grid) and a dict of what was drawn.
    """
    if not labels.same_grid(ct):
        raise ValueError("augment_scan needs the CT and its label map on one grid")
    drawn: dict[str, Any] = {}
    arr, lab = ct.array, labels.array
    z0, z1, y0, y1, x0, x1 = _field_of_view(lab, ct.spacing, rng, params, vertebra_ids, drawn)
    arr = arr[z0:z1, y0:y1, x0:x1].astype(np.float32)
    lab = lab[z0:z1, y0:y1, x0:x1]
    arr = _intensities(arr, lab, rng, params, vertebra_ids, totalsegmentator, drawn)
    origin = ct.index_to_physical(np.array([z0, y0, x0], float))
    arr, lab, sz = _thick_slices(arr, lab, ct.spacing[0], rng, params, drawn)
    spacing = (sz, *ct.spacing[1:])
    out_ct = Volume(_to_dtype(arr, ct.array.dtype), spacing, tuple(origin), ct.direction)
    out_lab = Volume(np.ascontiguousarray(lab), spacing, tuple(origin), ct.direction)
    out_ct, out_lab = _position(out_ct, out_lab, rng, params, vertebra_ids, drawn)
    return replace(out_ct, warnings=ct.warnings), out_lab, drawn


def _field_of_view(
    lab: np.ndarray,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
    params: ScanAugmentation,
    vertebra_ids: tuple[int, ...],
    drawn: dict[str, Any],
) -> tuple[int, int, int, int, int, int]:
    """Index ranges (z0, z1, y0, y1, x0, x1) of a random field of view that keeps
    at least part of a vertebra (the whole scan when not drawn)."""
    nz, ny, nx = lab.shape
    box = [0, nz, 0, ny, 0, nx]
    if rng.random() >= params.fov_prob:
        return tuple(box)  # type: ignore[return-value]
    spine = np.isin(lab, vertebra_ids) if vertebra_ids else lab > 0
    zs = np.nonzero(spine.any(axis=(1, 2)))[0]
    if len(zs) == 0:
        return tuple(box)  # type: ignore[return-value]
    min_len = min(nz, max(2, round(params.fov_min_mm / spacing[0])))
    length = int(rng.integers(min_len, nz + 1))
    # the cut window must overlap the spine's extent along z
    lo, hi = max(0, zs[0] - length + 1), min(nz - length, zs[-1])
    start = int(rng.integers(lo, hi + 1)) if hi >= lo else 0
    box[0:2] = [start, start + length]
    drawn["fov_z_mm"] = round(length * spacing[0], 1)
    if rng.random() < 0.25:  # a small in-plane field of view around the spine
        _, ys, xs = np.nonzero(spine[start : start + length])
        if len(ys):
            for axis, (coords, n, s) in enumerate(((ys, ny, spacing[1]), (xs, nx, spacing[2]))):
                half = max(params.fov_min_inplane_mm / 2, rng.uniform(35.0, 120.0)) / s
                c = (coords.min() + coords.max()) / 2
                box[2 + 2 * axis] = int(max(0, c - half))
                box[3 + 2 * axis] = int(min(n, c + half + 1))
            drawn["fov_inplane_mm"] = [
                round((box[3] - box[2]) * spacing[1], 1),
                round((box[5] - box[4]) * spacing[2], 1),
            ]
    return tuple(box)  # type: ignore[return-value]


def _intensities(
    arr: np.ndarray,
    lab: np.ndarray,
    rng: np.random.Generator,
    params: ScanAugmentation,
    vertebra_ids: tuple[int, ...],
    totalsegmentator: bool,
    drawn: dict[str, Any],
) -> np.ndarray:
    """Bone density, contrast, HU gain and shift, noise (float32 HU, in place)."""
    if params.vertebra_density and vertebra_ids:
        f = 1.0 + rng.uniform(-params.vertebra_density, params.vertebra_density)
        _scale_bone(arr, np.isin(lab, vertebra_ids), f)
        drawn["vertebra_density"] = round(f, 3)
    if totalsegmentator:
        if params.rib_density:
            f = 1.0 + rng.uniform(-params.rib_density, params.rib_density)
            _scale_bone(arr, np.isin(lab, TOTALSEG_RIB_CAGE), f)
            drawn["rib_density"] = round(f, 3)
        vessels = np.isin(lab, TOTALSEG_VESSELS)
        if vessels.any() and params.contrast_hu[1] > params.contrast_hu[0]:
            target = rng.uniform(*params.contrast_hu)
            v = arr[vessels]
            arr[vessels] = v - float(np.median(v)) + target
            drawn["contrast_hu"] = round(target, 1)
    gain = 1.0 + rng.uniform(-params.hu_gain, params.hu_gain)
    shift = rng.uniform(-params.hu_shift, params.hu_shift)
    body = arr > _AIR_HU
    arr[body] = arr[body] * gain + shift
    if params.noise_hu > 0:
        sd = rng.uniform(0.0, params.noise_hu)
        arr[body] += rng.normal(0.0, sd, int(body.sum())).astype(np.float32)
        drawn["noise_hu"] = round(sd, 1)
    drawn.update(hu_gain=round(gain, 3), hu_shift=round(shift, 1))
    return arr


def _scale_bone(arr: np.ndarray, where: np.ndarray, factor: float) -> None:
    """Scale the HU above 100 (bone) of the voxels ``where`` by ``factor`` (in place)."""
    v = arr[where]
    bone = v > 100.0
    v[bone] = 100.0 + (v[bone] - 100.0) * factor
    arr[where] = v


def _thick_slices(
    arr: np.ndarray,
    lab: np.ndarray,
    sz: float,
    rng: np.random.Generator,
    params: ScanAugmentation,
    drawn: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, float]:
    """Slices of a random thickness: k source slices averaged (the CT) and every k-th
    kept (k = thickness / spacing, rounded); the labels take the middle slice of each."""
    lo, hi = params.slice_mm
    t = rng.uniform(lo, hi) if hi > lo else lo
    k = round(t / sz)
    if k <= 1 or arr.shape[0] < 3 * k:
        return arr, lab, sz
    arr = ndi.uniform_filter1d(arr, k, axis=0, mode="nearest")
    start = k // 2
    drawn["slice_mm"] = round(k * sz, 2)
    return arr[start::k], lab[start::k], k * sz


def _position(
    ct: Volume,
    labels: Volume,
    rng: np.random.Generator,
    params: ScanAugmentation,
    vertebra_ids: tuple[int, ...],
    drawn: dict[str, Any],
) -> tuple[Volume, Volume]:
    """Rotate and scale the patient about the spine's centre (geometry only)."""
    angles = [rng.uniform(-a, a) if a > 0 else 0.0 for a in params.rotate_deg]
    s = 1.0 + rng.uniform(-params.scale, params.scale) if params.scale > 0 else 1.0
    spine = np.isin(labels.array, vertebra_ids) if vertebra_ids else labels.array > 0
    idx = np.argwhere(spine)
    centre_zyx = idx.mean(axis=0) if len(idx) else (np.array(labels.shape) - 1) / 2
    centre = ct.index_to_physical(centre_zyx)
    r = rotation_matrix(*angles)
    direction = r @ ct.direction
    origin = centre + s * (r @ (np.asarray(ct.origin) - centre))
    spacing = tuple(v * s for v in ct.spacing)
    drawn.update(roll_tilt_lean_deg=[round(a, 1) for a in angles], scale=round(s, 3))
    moved = [Volume(v.array, spacing, tuple(origin), direction) for v in (ct, labels)]
    return moved[0], moved[1]


def _to_dtype(arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``arr`` (float HU) in the CT's voxel type (rounded and clipped for integers)."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(arr), info.min, info.max).astype(dtype)
    return arr.astype(dtype, copy=False)
