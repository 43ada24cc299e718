"""Vertebra polygons on the sagittal MIP from a 3D label map (e.g. TotalSegmentator, VerSe).

The CT and its label map go through :func:`napari_vertebra.core.run_pipeline` together;
each vertebra class inside the crop is projected over x (any voxel along the ray, a
"projected mask" with the MIP's orientation: row 0 superior, col 0 anterior) and outlined
with :func:`~napari_vertebra.annotation.polygons.mask_to_polygons`.

Visibility rule (a vertebra cut by the scan edge or the crop): its *visible fraction* is
its projected area in the crop divided by its *expected* area, and it is kept only when
that is at least ``min_visible``. The expected area is the larger of

* its projected area in the whole resampled label map (so a cut made by the crop counts),
* when it comes within ``edge_margin`` voxels of the scan's top, bottom, front or back
  (z / y faces of the resampled volume; the margin covers the source slice spacing): the
  median projected area of the (up to two) nearest complete vertebrae by class, where
  complete means away from every such face. Without any complete vertebra, a vertebra
  touching the scan edge cannot be judged and is kept.

The x (left-right) faces are ignored: a cut there barely changes a sagittal projection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np

from napari_vertebra.core.labels import (
    EXTENDED,
    ClassSet,
    class_name,
    load_convention,
    to_class_map,
)
from napari_vertebra.core.params import PreprocessParams
from napari_vertebra.core.progress import ProgressCallback, report, scaled
from napari_vertebra.core.volume import Volume

from .label_fit import check_label_fit
from .polygons import mask_to_polygons
from .types import AnnotatedImage, VertebraAnnotation

__all__ = ["labels_to_annotations", "projected_masks"]

Convention = str | os.PathLike | Mapping


def projected_masks(class_map_zyx: np.ndarray) -> dict[int, np.ndarray]:
    """{class id: 2D bool mask} of every class in a (z, y, x) class map, projected over x
    (any), rows flipped so that row 0 is the most superior slice (the MIP's layout)."""
    out = {}
    for c in np.unique(class_map_zyx):
        if c == 0:
            continue
        out[int(c)] = np.ascontiguousarray((class_map_zyx == c).any(axis=2)[::-1])
    return out


def _touches_edge(mask_zyx: np.ndarray, margin: int) -> bool:
    nz, ny, _ = mask_zyx.shape
    zs = np.nonzero(mask_zyx.any(axis=(1, 2)))[0]
    ys = np.nonzero(mask_zyx.any(axis=(0, 2)))[0]
    if not len(zs):
        return False
    return bool(zs[0] < margin or zs[-1] >= nz - margin or ys[0] < margin or ys[-1] >= ny - margin)


def labels_to_annotations(
    ct: Volume,
    labels: Volume,
    convention: Convention = "totalsegmentator",
    params: PreprocessParams | None = None,
    min_visible: float = 0.5,
    tolerance_px: float = 1.0,
    progress: ProgressCallback | None = None,
    scan: str | None = None,
    file_name: str | None = None,
    result=None,
    edge_margin: int | None = None,
    min_area_px: float = 4.0,
    class_set: str | ClassSet | None = None,
    labels_name: str | None = None,
    check_fit: bool = True,
) -> AnnotatedImage:
    """The MIP of ``ct`` with one polygon annotation per vertebra of ``labels``.

    ``labels``: integer label map on ``ct``'s grid (else ValueError); ``convention``:
    "totalsegmentator", "verse", a JSON table path or a {label id: class} mapping.
    ``params``: preprocessing parameters; ``result``: a :class:`PipelineResult` of the
    same CT *with* these labels to skip the pipeline. ``min_visible`` (0..1): visibility
    rule of the module doc; ``edge_margin`` (voxels of the resampled grid) defaults to
    ceil(largest source spacing / target spacing) + 1. ``tolerance_px``: polygon
    simplification (px). Returns an :class:`AnnotatedImage` whose ``image`` is the MIP
    (float32 HU), ``file_name`` ``"<scan>.png"``, ordered T1..L5, and ``meta`` with
    ``visible_fraction`` {name: fraction}, ``dropped`` [names], ``crop_box``,
    ``spacing_mm`` and ``convention``. ``class_set`` (default the paper's T1..L5): which
    levels become annotations; ``"extended"`` also outlines C7, T13, L6 and the sacrum
    (S1) where the label map has them.

    The label map must fit ``convention`` (:func:`~.label_fit.check_label_fit`), else
    a :class:`~.label_fit.LabelMapError` starting with ``labels_name`` (a file or layer
    name; ``check_fit=False`` skips this for a map already checked, e.g. a 3D change of
    one); ``warnings`` name ids it does not define, or say that no vertebra was kept.
    """
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in 0..1, got {min_visible}")
    _check_same_grid(ct, labels)
    table = load_convention(convention, class_set)
    if result is None or result.labels_cropped is None:
        from napari_vertebra.core.pipeline import run_pipeline

        params = PreprocessParams() if params is None else params
        result = run_pipeline(ct, params, labels=labels, progress=scaled(progress, 0.0, 0.8))
    notes = check_label_fit(result, convention, class_set, labels_name) if check_fit else []
    report(progress, 0.8, "projecting vertebrae")
    spacing = float(result.params.spacing_mm)
    if edge_margin is None:
        edge_margin = math.ceil(max(ct.spacing) / spacing) + 1
    full = to_class_map(result.labels_resampled.array, table, class_set)
    crop = to_class_map(result.labels_cropped.array, table, class_set)
    annotations, fractions, dropped = _outline_visible(
        full, crop, edge_margin, min_visible, tolerance_px, min_area_px, progress
    )
    report(progress, 1.0, "done")
    if not annotations:
        notes.append(_nothing_kept(labels_name, dropped))
    meta = {"visible_fraction": fractions, "dropped": dropped}
    return _annotated_mip(result, annotations, meta, convention, scan, file_name, notes)


def _annotated_mip(
    result, annotations, meta: dict, convention, scan, file_name, notes
) -> AnnotatedImage:
    """The AnnotatedImage of :func:`labels_to_annotations` (``meta`` completed)."""
    scan = scan or "scan"
    meta = dict(
        meta,
        crop_box=[list(map(int, b)) for b in result.crop_box],
        spacing_mm=float(result.params.spacing_mm),
        convention=_convention_name(convention),
    )
    mip = np.asarray(result.mip, np.float32)
    h, w = (int(n) for n in mip.shape)
    name = file_name or f"{scan}.png"
    return AnnotatedImage(name, h, w, annotations, mip, scan, meta, warnings=notes)


def _nothing_kept(labels_name: str | None, dropped: list[str]) -> str:
    """The warning for a label map of which no vertebra became an annotation."""
    where = f"{labels_name}: " if labels_name else ""
    why = (
        f"every one is cut off by the scan edge or crop ({', '.join(dropped)}; see min_visible)"
        if dropped
        else "none lies inside the spine crop"
    )
    return f"{where}no vertebra of the label map was outlined: {why}"


def _check_same_grid(ct: Volume, labels: Volume) -> None:
    """ValueError unless ``labels`` lies on ``ct``'s grid."""
    if labels.shape != ct.shape or not labels.same_grid(ct):
        raise ValueError(
            f"the label map's grid does not match the CT (labels: shape {labels.shape}, "
            f"spacing {tuple(round(s, 3) for s in labels.spacing)}, origin "
            f"{tuple(round(o, 2) for o in labels.origin)}; CT: shape {ct.shape}, spacing "
            f"{tuple(round(s, 3) for s in ct.spacing)}, origin "
            f"{tuple(round(o, 2) for o in ct.origin)})"
        )


def _convention_name(convention: Convention) -> str:
    """How ``meta`` names a convention: its name, its table's path, or "table"."""
    if isinstance(convention, str):
        return convention
    return os.fspath(convention) if isinstance(convention, os.PathLike) else "table"


def _outline_visible(
    full: np.ndarray,
    crop: np.ndarray,
    edge_margin: int,
    min_visible: float,
    tolerance_px: float,
    min_area_px: float,
    progress: ProgressCallback | None,
) -> tuple[list[VertebraAnnotation], dict[str, float], list[str]]:
    """Outline each vertebra of the cropped class map ``crop`` that is visible enough
    (the rule of the module doc; ``full``: the whole resampled class map). Returns the
    annotations (superior first), {name: visible fraction} and the names dropped."""
    in_crop = projected_masks(crop)
    full_area = {c: int(m.sum()) for c, m in projected_masks(full).items()}
    edge = {c: _touches_edge(full == c, edge_margin) for c in in_crop}
    area = {c: int(m.sum()) for c, m in in_crop.items()}
    complete = sorted(c for c in in_crop if not edge[c] and area[c] >= full_area.get(c, 0))
    fractions: dict[str, float] = {}
    dropped: list[str] = []
    annotations: list[VertebraAnnotation] = []
    for k, c in enumerate(sorted(in_crop, key=EXTENDED.rank)):  # superior first
        report(progress, 0.8 + 0.2 * k / max(1, len(in_crop)), f"outlining {class_name(c)}")
        expected = float(full_area.get(c, area[c]))
        if edge[c] and complete:
            near = sorted(complete, key=lambda o: (abs(o - c), o))[:2]
            expected = max(expected, float(np.median([area[o] for o in near])))
        frac = min(1.0, area[c] / expected) if expected > 0 else 0.0
        fractions[class_name(c)] = round(frac, 4)
        if frac < min_visible:
            dropped.append(class_name(c))
            continue
        polys = mask_to_polygons(in_crop[c], tolerance_px=tolerance_px, min_area_px=min_area_px)
        if polys:
            annotations.append(VertebraAnnotation(c, polys, source="3D labels"))
        else:
            dropped.append(class_name(c))
    return annotations, fractions, dropped
