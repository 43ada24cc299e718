"""Checks shared by every annotation reader and writer (COCO, VIA, dataset).

Entries: image sizes (:func:`image_size_problem`) and file names
(:func:`file_name_problem`); the images to write (:func:`checked_polygons`).

One rule set, used on every path (see ``docs/annotations.md``):

* refused: non-finite coordinates; a vertex farther outside the image than half the
  image's size (absurd coordinates such as 1e300, or the wrong image size); fewer than 3
  distinct vertices; edges that cross (a self-intersecting outline has no unambiguous
  fill); zero area (collinear vertices); a polygon lying entirely outside the image;
* repaired, with a note: a polygon partly outside the image is clipped to the image
  rectangle (pixel centres 0..n-1, half a pixel margin), which keeps exactly the
  pixels it covered in the image;
* accepted as is: a polygon that only touches itself (a vertex on another edge, an edge
  retraced, as contour tracers give for a one-pixel neck), since its fill is unambiguous.

Coordinates are (row, col) pixels (see ``types``). Pure numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import PurePosixPath

import numpy as np

from ._io import AnnotationFormatError
from .polygons import check_polygon, polygon_area, rasterize
from .types import AnnotatedImage, VertebraAnnotation

__all__ = [
    "MAX_IMAGE_SIDE",
    "MAX_OVERHANG",
    "checked_polygons",
    "clip_to_image",
    "file_name_problem",
    "image_size_problem",
    "keep_polygon",
    "validate_polygon",
]

#: Largest image side (px) an annotation file may declare; a sagittal MIP at 1 mm is
#: under 2,000 px, so larger sizes are corrupt entries.
MAX_IMAGE_SIDE = 65_535

#: A vertex may lie outside the image by at most this fraction of the image's height
#: (rows) or width (cols) to be clipped; farther out the polygon is refused.
MAX_OVERHANG = 0.5

#: Overhang (px) below which a vertex counts as on the image edge (rounding in files).
_EPS = 1e-6


def image_size_problem(height: object, width: object) -> str | None:
    """A message when (height, width) is not a plausible image size in pixels, else None."""
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            return f"{name} {v!r} is not an integer"
        if not 0 < int(v) <= MAX_IMAGE_SIDE:
            return f"{name} {v!r} is not between 1 and {MAX_IMAGE_SIDE} px"
    return None


def file_name_problem(name: object) -> str | None:
    """A message when ``name`` is not a relative path inside the output folder, else None."""
    if not isinstance(name, str) or not name:
        return "file_name must be a non-empty string"
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return f"file_name {name!r} must be a relative path inside the output folder"
    return None


def _clip_half_plane(p: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """Sutherland-Hodgman step: the part of polygon ``p`` with ``p[:, axis] <= bound``
    (``keep_below``) or ``>= bound``."""
    if not len(p):
        return p
    v = p[:, axis] - bound
    inside = v <= 0 if keep_below else v >= 0
    out: list[np.ndarray] = []
    n = len(p)
    for k in range(n):
        cur, nxt = p[k], p[(k + 1) % n]
        if inside[k]:
            out.append(cur)
        if inside[k] != inside[(k + 1) % n]:
            t = v[k] / (v[k] - v[(k + 1) % n])
            pt = cur + t * (nxt - cur)
            pt[axis] = bound
            out.append(pt)
    return np.array(out).reshape(-1, 2)


def clip_to_image(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Polygon ((N, 2) (row, col)) clipped to the image rectangle of ``shape`` (rows,
    cols): rows and cols in -0.5 .. n - 0.5 (Sutherland-Hodgman; consecutive duplicate
    vertices removed). May return fewer than 3 vertices when nothing is left."""
    p = np.asarray(points, float).reshape(-1, 2)
    h, w = shape
    for axis, lo, hi in ((0, -0.5, h - 0.5), (1, -0.5, w - 0.5)):
        p = _clip_half_plane(p, axis, lo, keep_below=False)
        p = _clip_half_plane(p, axis, hi, keep_below=True)
    if len(p) > 1:
        keep = np.ones(len(p), bool)
        keep[1:] = np.any(np.abs(np.diff(p, axis=0)) > 1e-9, axis=1)
        p = p[keep]
        if len(p) > 1 and np.allclose(p[0], p[-1]):
            p = p[:-1]
    return p


def validate_polygon(
    points: np.ndarray | Sequence, shape: tuple[int, int]
) -> tuple[np.ndarray | None, list[str], list[str]]:
    """Check one polygon ((N, 2) (row, col)) on an image of ``shape`` (rows, cols).

    Returns ``(polygon, errors, notes)``: the polygon to keep (clipped to the image when
    it reached outside; None when refused), the reasons it is refused, and what was
    repaired. See the module doc for the rules. Never raises for bad geometry.
    """
    p = np.asarray(points, float).reshape(-1, 2)
    h, w = int(shape[0]), int(shape[1])
    size = f"{h} x {w} (height x width) image"
    if not np.all(np.isfinite(p)):
        return None, ["has non-finite coordinates (NaN or infinity)"], []
    if not len(p):
        return None, ["has no points"], []
    below = np.maximum(-0.5 - p, 0.0)
    above = np.maximum(p - np.array([h - 0.5, w - 0.5]), 0.0)
    over = np.maximum(below, above)  # (N, 2) px outside the image, per axis
    limit = np.array([max(2.0, MAX_OVERHANG * h), max(2.0, MAX_OVERHANG * w)])
    if np.any(over > limit):
        far = float(over.max())
        return (
            None,
            [
                f"has a vertex {far:.4g} px outside the {size} (more than half the image "
                "size): wrong coordinates or the wrong image size"
            ],
            [],
        )
    problems = check_polygon(p, None, allow_touching=True)
    if problems:
        return None, [m.removeprefix("polygon ") for m in problems], []
    outside = np.any(over > _EPS, axis=1)
    if not outside.any():
        return p, [], []
    q = clip_to_image(p, (h, w))
    if len(q) < 3 or polygon_area(q) < 1e-9:
        return None, [f"lies entirely outside the {size}"], []
    if check_polygon(q, None, allow_touching=True):  # never seen; refuse rather than guess
        return None, [f"reaches outside the {size} and cannot be clipped cleanly"], []
    note = (
        f"{int(outside.sum())} of {len(p)} vertices lay outside the {size} (up to "
        f"{float(over.max()):.3g} px): clipped to the image"
    )
    return q, [], [note]


def keep_polygon(
    points: np.ndarray | Sequence,
    shape: tuple[int, int],
    where: str,
    errors: list[str],
    notes: list[str],
    note_where: str | None = None,
) -> np.ndarray | None:
    """:func:`validate_polygon` with its messages collected: each error appended to
    ``errors`` as ``f"{where} {error}"``, each repair to ``notes`` as
    ``f"{note_where or where}: {note}"``. Returns the polygon to keep, or None."""
    kept, errs, fixed = validate_polygon(points, shape)
    errors.extend(f"{where} {m}" for m in errs)
    notes.extend(f"{note_where or where}: {m}" for m in fixed)
    return kept


#: Per annotation with polygons: (annotation, its polygons to write, its area in pixels).
Checked = tuple[VertebraAnnotation, list[np.ndarray], int]


def checked_polygons(
    images: Sequence[AnnotatedImage], error: type[AnnotationFormatError]
) -> list[list[Checked]]:
    """Validate ``images`` for writing: per image, per annotation with polygons,
    ``(annotation, polygons, area)`` with polygons clipped to the image where they reached
    outside (a ``UserWarning`` says so) and ``area`` the pixels of their raster.

    Raises ``error(None, [...])`` listing every problem (bad file names or sizes, pixel
    arrays whose shape is not (height, width), polygons refused by
    :func:`validate_polygon`, annotations covering no pixel), naming the image and the
    annotation.
    """
    errors: list[str] = []
    notes: list[str] = []
    out: list[list[Checked]] = []
    seen: set[str] = set()
    for k, im in enumerate(images):
        tag = f"image {k + 1} ({im.file_name!r})"
        per_image: list[Checked] = []
        out.append(per_image)
        shape = _writable_shape(im, tag, seen, errors)
        if shape is None:
            continue
        for n, a in enumerate(im.annotations, start=1):
            if a.polygons:
                atag = f"{tag}, annotation {n} ({a.name})"
                checked = _writable_annotation(a, atag, shape, errors, notes)
                if checked is not None:
                    per_image.append(checked)
    if errors:
        raise error(None, errors)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return out


def _writable_shape(
    im: AnnotatedImage, tag: str, seen: set[str], errors: list[str]
) -> tuple[int, int] | None:
    """The (rows, cols) of an image to write; None when its size is refused. Problems
    with its file name (also one used twice: ``seen``) and pixels go to ``errors``."""
    msg = file_name_problem(im.file_name)
    if msg:
        errors.append(f"{tag}: {msg}")
    elif im.file_name in seen:
        errors.append(f"{tag}: file_name used twice")
    seen.add(im.file_name)
    size_msg = image_size_problem(im.height, im.width)
    if size_msg:
        errors.append(f"{tag}: {size_msg}")
        return None
    if im.image is not None and np.shape(im.image)[:2] != (im.height, im.width):
        errors.append(
            f"{tag}: pixel array shape {np.shape(im.image)} != (height, width) "
            f"({im.height}, {im.width})"
        )
    if im.image is not None and np.ndim(im.image) != 2:
        errors.append(f"{tag}: pixel array must be 2D, got shape {np.shape(im.image)}")
    return int(im.height), int(im.width)


def _writable_annotation(
    a: VertebraAnnotation,
    atag: str,
    shape: tuple[int, int],
    errors: list[str],
    notes: list[str],
) -> Checked | None:
    """``(a, polygons, area)`` to write, or None when a polygon or the area is refused."""
    polys, bad = [], False
    for j, p in enumerate(a.polygons):
        if len(p) < 3:
            errors.append(f"{atag}: polygon {j} has {len(p)} point(s); 3 needed")
            bad = True
            continue
        kept = keep_polygon(p, shape, f"{atag}: polygon {j}", errors, notes)
        bad |= kept is None
        if kept is not None:
            polys.append(kept)
    if bad:
        return None
    area = int(rasterize(polys, shape).sum())
    if area == 0:
        errors.append(f"{atag}: its polygons cover no pixel centre (area 0)")
        return None
    return a, polys, area
