"""Partial views of an annotated MIP: row windows holding a run of consecutive vertebrae.

This is the augmentation of Wang et al. 2020: from a full sagittal MIP, cut views that show
4..17 consecutive vertebrae, so the model learns to name vertebrae without seeing the whole
spine. A view keeps the full width and a window of rows ``[r0, r1)``. Polygons wholly
inside the window are shifted; polygons crossing its edge are clipped through their
raster (rasterize, crop, :func:`mask_to_polygons`). A vertebra cut by the window edge is
kept only if at least ``min_visible`` of its pixels are inside; views with fewer than
``min_vertebrae`` (or more than ``max_vertebrae``) kept vertebrae are discarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np

from .polygons import mask_to_polygons, rasterize
from .types import AnnotatedImage, VertebraAnnotation

__all__ = ["crop_view", "draw_window", "partial_views"]


def crop_view(
    image: AnnotatedImage,
    r0: int,
    r1: int,
    min_visible: float = 0.5,
    tolerance_px: float = 1.0,
    file_name: str | None = None,
) -> AnnotatedImage:
    """The rows ``[r0, r1)`` of ``image`` (full width) with its annotations clipped.

    An annotation is kept when at least ``min_visible`` of its rasterised pixels lie in
    the window. ``meta`` gets ``source`` (the file name), ``rows`` [r0, r1] and
    ``view: "partial"``; ``hu_scale`` and the pixel spacing (``spacing``, ``spacing_mm``)
    are carried over.
    """
    h, w = int(image.height), int(image.width)
    r0, r1 = max(0, int(r0)), min(h, int(r1))
    if r1 <= r0:
        raise ValueError(f"empty row window [{r0}, {r1}) on a {h}-row image")
    anns = []
    for a in image.annotations:
        allp = np.concatenate(a.polygons) if a.polygons else np.zeros((0, 2))
        if not len(allp):
            continue
        if allp[:, 0].min() >= r0 - 0.5 and allp[:, 0].max() <= r1 - 0.5:
            anns.append(VertebraAnnotation(a.class_id, [p - [r0, 0] for p in a.polygons], a.score))
            continue
        mask = rasterize(a.polygons, (h, w))
        total = int(mask.sum())
        inside = mask[r0:r1]
        if total == 0 or inside.sum() < min_visible * total or not inside.any():
            continue
        polys = mask_to_polygons(inside, tolerance_px=tolerance_px, min_area_px=1)
        if polys:
            anns.append(VertebraAnnotation(a.class_id, polys, a.score))
    stem = PurePosixPath(image.file_name).stem
    meta = {"source": image.file_name, "rows": [r0, r1], "view": "partial"}
    for key in ("hu_scale", "spacing", "spacing_mm"):
        if key in (image.meta or {}):
            meta[key] = image.meta[key]
    return AnnotatedImage(
        file_name=file_name or f"{stem}_rows{r0}-{r1}.png",
        height=r1 - r0,
        width=w,
        annotations=anns,
        image=None if image.image is None else np.asarray(image.image)[r0:r1].copy(),
        scan=image.scan,
        meta=meta,
    )


def _runs(ids: list[int]) -> list[list[int]]:
    """Index runs of consecutive class ids in a sorted id list."""
    runs: list[list[int]] = []
    for i, c in enumerate(ids):
        if runs and ids[runs[-1][-1]] == c - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _runs_and_rows(
    image: AnnotatedImage, min_vertebrae: int
) -> tuple[list[list[int]], np.ndarray | None, np.ndarray | None]:
    """The runs of at least ``min_vertebrae`` consecutive classes among ``image``'s
    annotations (indices in class order) and, when there is one, the first and last row
    of each annotation; ValueError when a class appears twice."""
    anns = sorted(
        (a for a in image.annotations if a.polygons and any(len(p) >= 3 for p in a.polygons)),
        key=lambda a: a.class_id,
    )
    ids = [a.class_id for a in anns]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{image.file_name}: a vertebra class appears twice; fix it first")
    runs = [r for r in _runs(ids) if len(r) >= min_vertebrae]
    if not runs:
        return [], None, None
    tops = np.array([min(p[:, 0].min() for p in a.polygons) for a in anns])
    bottoms = np.array([max(p[:, 0].max() for p in a.polygons) for a in anns])
    return runs, tops, bottoms


def draw_window(
    rng: np.random.Generator,
    run: Sequence[int],
    tops: np.ndarray,
    bottoms: np.ndarray,
    min_vertebrae: int,
    max_vertebrae: int,
    margin: tuple[float, float],
    height_px: float,
    image_height: int,
) -> tuple[int, int]:
    """A random row window ``(r0, r1)`` over part of ``run`` (indices into ``tops`` /
    ``bottoms``, the vertebrae's first and last rows, of consecutive vertebrae).

    Draws a length in ``min_vertebrae..max_vertebrae`` (at most the run's), a start, and
    top / bottom margins uniformly from ``margin`` times ``height_px`` (negative cuts into
    the end vertebra); the window is clipped to the image's rows.
    """
    length = int(rng.integers(min_vertebrae, min(max_vertebrae, len(run)) + 1))
    start = int(rng.integers(0, len(run) - length + 1))
    first, last = run[start], run[start + length - 1]
    m_top, m_bot = rng.uniform(margin[0], margin[1], size=2) * height_px
    r0 = int(np.floor(tops[first] - m_top))
    r1 = int(np.ceil(bottoms[last] + m_bot)) + 1
    return max(0, r0), min(int(image_height), r1)


def partial_views(
    image: AnnotatedImage,
    n_views: int,
    seed: int | np.random.Generator = 0,
    min_vertebrae: int = 4,
    max_vertebrae: int = 17,
    min_visible: float = 0.5,
    margin: tuple[float, float] = (-0.4, 0.6),
    tolerance_px: float = 1.0,
    max_tries: int = 20,
) -> list[AnnotatedImage]:
    """Up to ``n_views`` random partial views of ``image`` (see the module doc).

    Each view: a random run length in ``min_vertebrae..max_vertebrae`` (bounded by the
    longest run of consecutive classes), a random start, and random top / bottom margins
    drawn uniformly from ``margin`` (a fraction of the median vertebra height; negative
    cuts into the end vertebra). Seeded by ``seed`` (an int or a Generator). Views that
    break the rules are redrawn (at most ``max_tries`` per view) and duplicates dropped,
    so fewer views may come back (none when the image has no run of
    ``min_vertebrae`` consecutive vertebrae).
    """
    if not 1 <= min_vertebrae <= max_vertebrae:
        raise ValueError(
            f"need 1 <= min_vertebrae <= max_vertebrae, got {min_vertebrae}, {max_vertebrae}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    runs, tops, bottoms = _runs_and_rows(image, min_vertebrae)
    if not runs:
        return []
    height = float(np.median(bottoms - tops))
    stem = PurePosixPath(image.file_name).stem
    views: list[AnnotatedImage] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(n_views):
        for _try in range(max_tries):
            run = runs[rng.integers(len(runs))]
            r0, r1 = draw_window(
                rng, run, tops, bottoms, min_vertebrae, max_vertebrae, margin, height,
                image.height,
            )  # fmt: skip
            if r1 - r0 < 2 or (r0, r1) in seen:
                continue
            view = crop_view(image, r0, r1, min_visible, tolerance_px)
            kept = sorted(a.class_id for a in view.annotations)
            if not min_vertebrae <= len(kept) <= max_vertebrae:
                continue
            if kept != list(range(kept[0], kept[0] + len(kept))):
                continue
            seen.add((r0, r1))
            view.file_name = f"{stem}_v{len(views):03d}_rows{r0}-{r1}.png"
            views.append(view)
            break
    return views
