"""The public spine datasets' folder layouts, read as they are downloaded.

- **VerSe** (Sekuboyina et al. 2021; BIDS-like): ``rawdata/sub-X/sub-X[_...]_ct.nii.gz``
  with ``derivatives/sub-X/sub-X[_...]_seg-vert_msk.nii.gz`` (VerSe ids) and
  ``..._seg-subreg_ctd.json`` (vertebra centroids in voxels; used to check the mask).
  Any folder above ``rawdata`` / ``derivatives`` (e.g. ``dataset-verse20training``,
  or a folder holding several such datasets) is searched.
- **TotalSegmentator** (Wasserthal et al. 2023): ``sXXXX/ct.nii.gz`` with one mask per
  structure in ``sXXXX/segmentations/`` (``vertebrae_L1.nii.gz``, ``sacrum.nii.gz``,
  ``rib_left_1.nii.gz``, ``aorta.nii.gz``, ...), combined here into one label map with
  TotalSegmentator's v2 ids (:data:`TOTALSEG_IDS`).

:func:`find_pairs` returns the scans as :class:`~napari_vertebra.annotation.dataset.
CTLabelPair` (the ``labels`` of a TotalSegmentator scan is its ``segmentations``
folder); :func:`read_label_source` reads either kind of label source onto the CT's grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from napari_vertebra.core.io import CTReadError, read_labels
from napari_vertebra.core.volume import Volume

__all__ = [
    "TOTALSEG_IDS",
    "find_pairs",
    "read_label_source",
    "read_totalseg_masks",
    "read_verse_centroids",
    "verse_centroid_problems",
]

#: TotalSegmentator v2 ("total" task) ids of the structures used here: the spine, the rib
#: cage, the heart and the great vessels (the ids of its ``--ml`` label map).
TOTALSEG_IDS: dict[str, int] = {
    "sacrum": 25,
    "vertebrae_S1": 26,
    **{f"vertebrae_L{i}": 32 - i for i in range(1, 6)},
    **{f"vertebrae_T{i}": 44 - i for i in range(1, 13)},
    **{f"vertebrae_C{i}": 51 - i for i in range(1, 8)},
    "heart": 51,
    "aorta": 52,
    "pulmonary_vein": 53,
    "brachiocephalic_trunk": 54,
    "subclavian_artery_right": 55,
    "subclavian_artery_left": 56,
    "common_carotid_artery_right": 57,
    "common_carotid_artery_left": 58,
    "superior_vena_cava": 62,
    "inferior_vena_cava": 63,
    "iliac_artery_left": 65,
    "iliac_artery_right": 66,
    "hip_left": 77,
    "hip_right": 78,
    "spinal_cord": 79,
    **{f"rib_left_{i}": 91 + i for i in range(1, 13)},
    **{f"rib_right_{i}": 103 + i for i in range(1, 13)},
    "sternum": 116,
    "costal_cartilages": 118,
}


def find_pairs(folder: str | os.PathLike) -> list:
    """Every CT with its vertebra labels in a VerSe or TotalSegmentator folder.

    Returns :class:`~napari_vertebra.annotation.dataset.CTLabelPair` objects sorted by
    scan name, with the convention set ("verse" / "totalsegmentator"). ValueError when
    the folder holds neither layout, or a CT of it has no labels (named)."""
    from .dataset import CTLabelPair

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    pairs = _verse_pairs(root) or _totalseg_pairs(root)
    if not pairs:
        raise ValueError(
            f"{root}: neither a VerSe folder (rawdata/sub-*/*_ct.nii.gz with "
            "derivatives/sub-*/*_seg-vert_msk.nii.gz) nor a TotalSegmentator one "
            "(s*/ct.nii.gz with s*/segmentations/*.nii.gz); give a pairs CSV instead"
        )
    return [CTLabelPair(ct, lab, conv, scan) for scan, ct, lab, conv in sorted(pairs)]


def _verse_pairs(root: Path) -> list[tuple[str, Path, Path, str]]:
    out, missing = [], []
    for ct in sorted(root.rglob("rawdata/sub-*/**/*_ct.nii.gz")):
        rel = ct.relative_to(_above(ct, "rawdata") / "rawdata")
        stem = ct.name[: -len("_ct.nii.gz")]
        mask = _above(ct, "rawdata") / "derivatives" / rel.parent / f"{stem}_seg-vert_msk.nii.gz"
        if mask.is_file():
            out.append((stem, ct, mask, "verse"))
        else:
            missing.append(str(ct))
    if missing and out:
        raise ValueError(
            f"{len(missing)} VerSe CT(s) have no derivatives/..._seg-vert_msk.nii.gz "
            f"(first: {missing[0]}); remove them or add their masks"
        )
    return out


def _above(path: Path, name: str) -> Path:
    """The folder that holds the nearest ancestor of ``path`` called ``name``."""
    for parent in path.parents:
        if parent.name == name:
            return parent.parent
    raise ValueError(f"{path} is not inside a {name!r} folder")


def _totalseg_pairs(root: Path) -> list[tuple[str, Path, Path, str]]:
    out = []
    for ct in sorted(root.glob("*/ct.nii.gz")) + sorted(root.glob("ct.nii.gz")):
        seg = ct.parent / "segmentations"
        if seg.is_dir() and any(seg.glob("vertebrae_*.nii.gz")):
            out.append((ct.parent.name, ct, seg, "totalsegmentator"))
    return out


def read_totalseg_masks(folder: str | os.PathLike, like: Volume) -> Volume:
    """One label map (TotalSegmentator v2 ids, :data:`TOTALSEG_IDS`) from a folder of
    per-structure masks on ``like``'s grid; masks of other structures are left out. A
    voxel in two masks takes the later one in :data:`TOTALSEG_IDS` order."""
    folder = Path(folder)
    out = np.zeros(like.shape, np.uint8)
    used = []
    for name, sid in TOTALSEG_IDS.items():
        path = folder / f"{name}.nii.gz"
        if not path.is_file():
            continue
        mask = read_labels(path, like=like).array > 0
        out[mask] = sid
        used.append(name)
    if not any(n.startswith(("vertebrae_", "sacrum")) for n in used):
        raise CTReadError(f"{folder}: no vertebrae_*.nii.gz mask (TotalSegmentator layout)")
    return Volume(out, like.spacing, like.origin, like.direction)


def read_label_source(path: str | os.PathLike, like: Volume) -> Volume:
    """A label map file, or a TotalSegmentator ``segmentations`` folder, on ``like``'s
    grid; a VerSe mask is checked against its ``_ctd.json`` centroids when beside it
    (what disagrees is in ``Volume.warnings``)."""
    p = Path(path)
    if p.is_dir() and any(p.glob("*.nii.gz")) and not any(p.glob("*.dcm")):
        return read_totalseg_masks(p, like)
    labels = read_labels(p, like=like)
    ctd = _centroid_file(p)
    if ctd is not None:
        notes = verse_centroid_problems(labels, read_verse_centroids(ctd))
        if notes:
            from dataclasses import replace

            labels = replace(labels, warnings=labels.warnings + tuple(notes))
    return labels


def _centroid_file(mask: Path) -> Path | None:
    name = mask.name
    if not name.endswith("_seg-vert_msk.nii.gz"):
        return None
    ctd = mask.with_name(name.replace("_seg-vert_msk.nii.gz", "_seg-subreg_ctd.json"))
    return ctd if ctd.is_file() else None


def read_verse_centroids(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """{VerSe label: (3,) centroid in voxels of the mask file (x, y, z index order, as
    the file gives them)} of a ``_ctd.json`` file; ValueError when it is not one."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: not a VerSe centroid file ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{p}: not a VerSe centroid file (expected a JSON list)")
    out = {}
    for entry in data:
        if isinstance(entry, dict) and {"label", "X", "Y", "Z"} <= set(entry):
            out[int(entry["label"])] = np.array([entry["X"], entry["Y"], entry["Z"]], float)
    return out


def verse_centroid_problems(labels: Volume, centroids: dict[int, np.ndarray]) -> list[str]:
    """What a VerSe mask and its centroid file disagree on: a centroid's label missing
    from the mask, or a mask label without a centroid (sacrum and coccyx, 26 and 27,
    have none in VerSe). Centroids are voxel indices of the file's own grid, which
    reading may have permuted: only the labels are compared."""
    present = {int(v) for v in np.unique(labels.array) if v > 0}
    notes = []
    lost = sorted(set(centroids) - present)
    if lost:
        notes.append(f"the centroid file names labels {lost} that the mask does not hold")
    unlisted = sorted(present - set(centroids) - {26, 27})
    if centroids and unlisted:
        notes.append(f"the mask holds labels {unlisted} that the centroid file does not list")
    return notes
