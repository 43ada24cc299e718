"""Whether a 3D label map fits its label convention: one check for every path that turns
a label map into polygons (``labels-to-coco``, ``dataset build --ct-labels``/``--pairs``
and the Annotate widget's "Labels from 3D", all through
:func:`~napari_vertebra.annotation.from3d.labels_to_annotations`).

:func:`check_label_fit` looks at the label map on the pipeline's resampled grid (1 mm by
default, z running inferior to superior) with the CT's HU and the tracked spinal canal,
and refuses (:class:`LabelMapError`, nothing written) a map that

* holds no label at all, or no id that the convention reads as a vertebra level;
* has an id read as a vertebra that is not vertebra-like: its median HU below
  :data:`BONE_HU` (not bone), larger than :data:`MAX_VOLUME_ML` or taller than
  :data:`MAX_HEIGHT_MM` (the sacrum has its own limits), or, for a label of at least
  :data:`JUDGED_NEAR_CANAL_ML`, its centre farther than :data:`MAX_CANAL_MM` from the
  spinal canal in the axial plane (only where the canal was found on enough slices);
* has levels out of anatomical order: from head to feet the levels must come as the
  class set orders them (T1 above T2 ...); all reversed is named as a head-feet flip.

Labels under :data:`MIN_JUDGED_ML` (a stray voxel, a sliver cut by the scan edge) are
not judged. The error names the ids, what they were read as and why, the ids the
convention does not define, and the convention under which the map does fit ("try
'totalsegmentator'"), when one does. A map that fits but holds ids its convention does
not define gets a warning naming them (returned, see :func:`check_label_fit`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from napari_vertebra.core.labels import (
    CONVENTION_IDS,
    EXTENDED,
    ClassSet,
    level_name,
    load_convention,
)

__all__ = [
    "BONE_HU",
    "JUDGED_NEAR_CANAL_ML",
    "MAX_CANAL_MM",
    "MAX_HEIGHT_MM",
    "MAX_VOLUME_ML",
    "MIN_JUDGED_ML",
    "LabelMapError",
    "check_label_fit",
]

Convention = str | os.PathLike | Mapping

#: A vertebra label's median HU is at least this (whole vertebrae measure 130..250 HU on
#: the samples; organs -800..50, the spinal cord 20).
BONE_HU = 60.0
#: Largest plausible vertebra (mL) and height (mm, head-feet extent); the sacrum (S1)
#: gets the second values.
MAX_VOLUME_ML = (250.0, 600.0)
MAX_HEIGHT_MM = (100.0, 200.0)
#: A vertebra's centre lies within this distance (mm) of the spinal canal in the axial
#: plane (4..20 mm on the samples; the aorta 57, kidneys and ribs farther).
MAX_CANAL_MM = 50.0
#: Labels below this volume (mL) are not judged at all; below the second, not by their
#: distance to the canal (a vertebra cut by the scan edge may be its spinous process).
MIN_JUDGED_ML = 0.5
JUDGED_NEAR_CANAL_ML = 10.0
#: The canal is used only when it was found on at least this many axial slices.
_MIN_CANAL_SLICES = 5
#: Conventions tried for the "try ..." hint, in this order.
_ALTERNATIVES = ("totalsegmentator", "verse", "class ids")


class LabelMapError(ValueError):
    """A label map that does not fit its convention (the message says why and what to try)."""


@dataclass(frozen=True)
class _Label:
    """Measures of one source id on the resampled grid."""

    source: int
    class_id: int
    volume_ml: float
    z_centre: float  # voxels, z up = superior
    height_mm: float
    median_hu: float
    canal_mm: float | None  # None when the canal cannot be used

    def problems(self) -> list[str]:
        """Why this label is not vertebra-like ([] when it is)."""
        sacrum = int(level_name(self.class_id) == "S1")
        out = []
        if self.median_hu < BONE_HU:
            out.append(f"median {self.median_hu:.0f} HU, not bone")
        if self.volume_ml > MAX_VOLUME_ML[sacrum]:
            out.append(f"{self.volume_ml:.0f} mL")
        if self.height_mm > MAX_HEIGHT_MM[sacrum]:
            out.append(f"{self.height_mm:.0f} mm high")
        if self.canal_mm is not None and self.canal_mm > MAX_CANAL_MM:
            if self.volume_ml >= JUDGED_NEAR_CANAL_ML:
                out.append(f"{self.canal_mm:.0f} mm from the spinal canal")
        return out


@dataclass(frozen=True)
class _Fit:
    """How a label map reads under one convention."""

    name: str
    labels: list[_Label]  # the judged labels read as levels
    n_levels: int  # ids read as levels present (judged or not)
    unknown: list[int]  # ids present that the convention does not define
    order: str | None  # the order problem, None when in order

    @property
    def bad(self) -> list[_Label]:
        return [lab for lab in self.labels if lab.problems()]

    @property
    def fits(self) -> bool:
        return self.n_levels > 0 and not self.bad and self.order is None


def check_label_fit(
    result,
    convention: Convention,
    class_set: str | ClassSet | None = None,
    name: str | None = None,
) -> list[str]:
    """Check that the label map of a pipeline ``result`` (run with labels) fits
    ``convention`` for ``class_set`` (the rules of the module doc).

    ``name`` (a file or layer name) starts the messages. Returns warnings (ids the
    convention does not define); raises :class:`LabelMapError` when the map does not fit.
    """
    where = f"{name}: " if name else ""
    labels = np.asarray(result.labels_resampled.array)
    counts = _id_counts(labels)
    if not counts:
        raise LabelMapError(
            f"{where}the label map holds no label (every voxel is 0): choose the label map "
            "of this CT"
        )
    context = _Context(result, labels, counts)
    fit = context.fit(convention, class_set)
    if fit.fits and not fit.unknown:
        return []
    best = _alternative(context, convention, class_set)
    if fit.fits and (best is None or best.n_levels < fit.n_levels):
        return [
            f"{where}ids {_ids_text(fit.unknown)} are not labels of the {fit.name} "
            "convention: ignored"
        ]
    raise LabelMapError(where + _refusal(fit, counts) + _hint(best))


def _id_counts(labels: np.ndarray) -> dict[int, int]:
    """{id: voxels} of the positive ids of a label array."""
    flat = labels.ravel()
    if flat.size == 0:
        return {}
    hi = int(flat.max())
    if hi <= 0:
        return {}
    if hi < 1 << 20:
        n = np.bincount(np.clip(flat, 0, None).astype(np.intp), minlength=hi + 1)
        return {int(i): int(n[i]) for i in np.flatnonzero(n) if i > 0}
    ids, n = np.unique(flat[flat > 0], return_counts=True)
    return dict(zip(ids.tolist(), n.tolist(), strict=True))


class _Context:
    """The label map, HU and canal of a pipeline result, with measures cached by id."""

    def __init__(self, result, labels: np.ndarray, counts: dict[int, int]):
        self.labels = labels
        self.counts = counts
        self.hu = np.asarray(result.resampled.array)
        self.spacing = float(result.params.spacing_mm)
        found = np.asarray(result.canal_found, bool)
        self.canal = (
            np.asarray(result.canal_centres, float) if found.sum() >= _MIN_CANAL_SLICES else None
        )
        self._measured: dict[int, tuple[float, float, float, float | None]] = {}

    def fit(self, convention: Convention, class_set: str | ClassSet | None) -> _Fit:
        """How the map reads under ``convention`` (levels of ``class_set``)."""
        table = load_convention(convention, class_set)
        present = [i for i in self.counts if i in table]
        voxel_ml = self.spacing**3 / 1000.0
        judged = [i for i in present if self.counts[i] * voxel_ml >= MIN_JUDGED_ML]
        self._measure([i for i in judged if i not in self._measured])
        labels = [self._label(i, table[i]) for i in judged]
        known = (
            CONVENTION_IDS.get(str(convention).lower()) if isinstance(convention, str) else None
        )
        unknown = sorted(i for i in self.counts if known is not None and i not in known)
        return _Fit(_name(convention), labels, len(present), unknown, _order_problem(labels))

    def _label(self, source: int, class_id: int) -> _Label:
        z, height, hu, canal = self._measured[source]
        volume = self.counts[source] * self.spacing**3 / 1000.0
        return _Label(source, class_id, volume, z, height, hu, canal)

    def _measure(self, ids: Sequence[int]) -> None:
        """Centre z, height (mm), median HU and canal distance (mm) of each of ``ids``,
        in one pass over the label map."""
        if not ids:
            return
        flat = self.labels.ravel()
        idx = np.flatnonzero(np.isin(flat, ids))
        lab = flat[idx]
        order = np.argsort(lab, kind="stable")
        idx, lab = idx[order], lab[order]
        cuts = np.flatnonzero(np.diff(lab)) + 1
        hu = self.hu.ravel()
        for part in np.split(idx, cuts):
            z, y, x = np.unravel_index(part, self.labels.shape)
            zc = float(z.mean())
            canal = None
            if self.canal is not None:
                cz = self.canal[int(np.clip(round(zc), 0, len(self.canal) - 1))]
                canal = float(np.hypot(y.mean() - cz[1], x.mean() - cz[2])) * self.spacing
            height = float(z.max() - z.min() + 1) * self.spacing
            self._measured[int(flat[part[0]])] = (zc, height, float(np.median(hu[part])), canal)


def _name(convention: Convention) -> str:
    """How messages name a convention."""
    if isinstance(convention, str):
        return repr(convention)
    if isinstance(convention, os.PathLike):
        return f"table {os.fspath(convention)!r}"
    return "label table"


def _order_problem(labels: list[_Label]) -> str | None:
    """What is wrong with the head-to-feet order of the levels (None: in order)."""
    centre: dict[int, list[float]] = {}
    for lab in labels:  # a level given by several ids: their voxel-weighted centre
        centre.setdefault(lab.class_id, []).extend([lab.z_centre * lab.volume_ml, lab.volume_ml])
    z = {c: sum(v[0::2]) / sum(v[1::2]) for c, v in centre.items()}
    anatomical = sorted(z, key=EXTENDED.rank)
    seen = sorted(z, key=lambda c: -z[c])  # head (high z) first
    if seen == anatomical:
        return None
    names = ", ".join(level_name(c) for c in seen)
    if len(seen) >= 3 and seen == anatomical[::-1]:
        return (
            f"the levels run feet to head ({names} from head to feet): the CT's header may "
            "be flipped head-feet, or the table numbers the levels the other way"
        )
    wrong = [
        f"{level_name(a)} lies above {level_name(b)}"
        for a, b in itertools.pairwise(seen)
        if EXTENDED.rank(a) > EXTENDED.rank(b)
    ]
    ids = ", ".join(f"{lab.source} {level_name(lab.class_id)}" for lab in labels)
    return (
        f"the levels are out of anatomical order: from head to feet the label map holds "
        f"{names} ({'; '.join(wrong)}; ids {ids}); two levels are swapped in the label map "
        "or its table"
    )


def _ids_text(ids: Sequence[int], most: int = 12) -> str:
    """``1, 2, 5..9, 12`` (runs joined), at most ``most`` items then "and N more"."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    items = [", ".join(map(str, r)) if len(r) <= 2 else f"{r[0]}..{r[-1]}" for r in runs]
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _refusal(fit: _Fit, counts: dict[int, int]) -> str:
    """The error text for a map that does not fit."""
    if fit.n_levels == 0:
        text = (
            f"it holds no id that this convention reads as a vertebra (ids present: "
            f"{_ids_text(list(counts))})"
        )
    elif fit.bad:
        items = [
            f"{lab.source} as {level_name(lab.class_id)} ({', '.join(lab.problems())})"
            for lab in sorted(fit.bad, key=lambda b: EXTENDED.rank(b.class_id))
        ]
        text = (
            f"{len(fit.bad)} of the {len(fit.labels)} ids read as vertebrae are not "
            f"vertebra-like: {'; '.join(items[:5])}"
            + (f"; and {len(items) - 5} more" if len(items) > 5 else "")
        )
    elif fit.order is not None:
        text = fit.order
    else:
        text = f"only {fit.n_levels} id(s) read as vertebrae"
    if fit.unknown:
        text += f"; ids {_ids_text(fit.unknown)} are not labels of this convention"
    return f"the label map does not fit the {fit.name} convention: {text}"


def _alternative(
    context: _Context, convention: Convention, class_set: str | ClassSet | None
) -> _Fit | None:
    """The other named convention under which the map fits with the most levels and no
    unknown id (None when there is none)."""
    best: _Fit | None = None
    for alt in _ALTERNATIVES:
        if isinstance(convention, str) and alt == convention.lower():
            continue
        other = context.fit(alt, class_set)
        if other.fits and not other.unknown and (best is None or other.n_levels > best.n_levels):
            best = other
    return best


def _hint(best: _Fit | None) -> str:
    """What to try: the convention ``best`` under which the map fits, or what to check."""
    if best is None:
        return ". Check that this is the label map of this CT and which convention it uses"
    levels = sorted({lab.class_id for lab in best.labels}, key=EXTENDED.rank)
    span = level_name(levels[0]) + (f"..{level_name(levels[-1])}" if len(levels) > 1 else "")
    return f". Read with the {best.name} convention it fits ({span}): try that convention"
