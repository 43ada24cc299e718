"""The files of an annotation project, read and checked (the layout is in
:mod:`~napari_vertebra.annotation.project`).

* :func:`read_index`: ``project.json``, each image entry checked. An entry that cannot be
  used is rebuilt from its image file, a missing ``hu_scale`` is taken as
  :data:`~.image_files.HU_SCALE` (what the project writes), and a missing, unreadable
  or incomplete index is rebuilt from the image files in ``images/``; each repair is
  said in a warning (an unreadable index is kept as ``project.json.unreadable``).
* :func:`read_annotation_file` / :func:`check_payload`: an annotation file or a history
  snapshot. Refused (ValueError naming the file, the annotation and the polygon): a
  ``class_id`` that is not an integer level id, a ``class`` that names another level,
  polygons that are not lists of [row, col] number pairs (ragged ones included),
  non-finite coordinates, a score outside 0..1; :meth:`AnnotationProject.save` refuses
  the same before writing. Kept, with a warning (:func:`small_polygons`): a polygon of
  fewer than 3 distinct vertices (Export leaves it out and says how many). Kept as they
  are: edges that cross, zero area and vertices past the image edge, which an edit in
  progress may have; the widget's Checks flag them and Export refuses or clips them as
  the COCO and VIA writers do (docs/annotations.md).
* :func:`remove_stale_temporaries`: temporary files left by an interrupted atomic write.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from napari_vertebra.core.labels import level_name

from .image_files import HU_SCALE
from .reading import is_int, is_number
from .types import VertebraAnnotation
from .validate import file_name_problem, image_size_problem

__all__ = [
    "INDEX_NAME",
    "annotation_from_json",
    "annotation_to_json",
    "check_payload",
    "payload_problems",
    "read_annotation_file",
    "read_index",
    "remove_stale_temporaries",
    "small_polygons",
]

#: The project's index file.
INDEX_NAME = "project.json"
#: Problems listed in one error message (the rest are counted).
_SHOWN = 8
#: Optional VertebraAnnotation fields stored when present.
_EXTRA_FIELDS = ("source",)


def annotation_to_json(a: VertebraAnnotation) -> dict:
    """The stored form of an annotation: class, class_id, polygons (3 decimals), score
    and the optional fields set."""
    out = {
        "class": a.name,
        "class_id": int(a.class_id),
        "polygons": [np.round(p, 3).tolist() for p in a.polygons],
        "score": None if a.score is None else float(a.score),
    }
    for name in _EXTRA_FIELDS:
        value = getattr(a, name, None)
        if value is not None:
            out[name] = value
    return out


def annotation_from_json(d: dict) -> VertebraAnnotation:
    """The annotation of a stored (checked, see :func:`payload_problems`) dict."""
    names = {f.name for f in dataclasses.fields(VertebraAnnotation)}
    extra = {k: d[k] for k in _EXTRA_FIELDS if k in names and d.get(k) is not None}
    return VertebraAnnotation(int(d["class_id"]), d["polygons"], d.get("score"), **extra)


def payload_problems(payload: object) -> list[str]:
    """What makes an annotation payload (the ``annotations`` list of an annotation file,
    or a history snapshot) unusable, each naming the annotation and polygon ([]: none)."""
    if not isinstance(payload, list):
        return ["'annotations' is not a list"]
    errors: list[str] = []
    for n, a in enumerate(payload, start=1):
        if not isinstance(a, dict):
            errors.append(f"annotation {n} is not an object")
            continue
        cid = a.get("class_id")
        if not is_int(cid):
            errors.append(f"annotation {n}: class_id {cid!r} is not an integer")
            continue
        try:
            name = level_name(cid)
        except ValueError as e:
            errors.append(f"annotation {n}: {e}")
            continue
        where = f"annotation {n} ({name})"
        cls = a.get("class")
        if cls is not None and (not isinstance(cls, str) or cls.strip().upper() != name):
            errors.append(f"{where}: class {cls!r} does not match class_id {cid} ({name})")
        score = a.get("score")
        if score is not None and not (is_number(score) and 0.0 <= score <= 1.0):
            errors.append(f"{where}: score {score!r} is not a number in 0..1")
        polygons = a.get("polygons")
        if not isinstance(polygons, list):
            errors.append(f"{where}: 'polygons' is not a list")
            continue
        errors.extend(
            f"{where}: polygon {j} {m}" for j, p in enumerate(polygons) for m in _polygon(p)
        )
    return errors


def _polygon(points: object) -> list[str]:
    """The problems of one stored polygon ([[row, col], ...])."""
    ok = isinstance(points, list) and all(
        isinstance(v, list) and len(v) == 2 and all(is_number(c, finite=False) for c in v)
        for v in points
    )
    if not ok:
        return ["is not a list of [row, col] number pairs"]
    if not np.all(np.isfinite(np.asarray(points, float))):
        return ["has non-finite coordinates (NaN or infinity)"]
    return []


def small_polygons(payload: list[dict]) -> list[str]:
    """The polygons of a valid payload with fewer than 3 distinct vertices, named."""
    out = []
    for n, a in enumerate(payload, start=1):
        for j, p in enumerate(a["polygons"]):
            distinct = len(np.unique(np.asarray(p, float).reshape(-1, 2), axis=0))
            if distinct < 3:
                name = level_name(a["class_id"])
                out.append(
                    f"annotation {n} ({name}): polygon {j} has {distinct} distinct point(s)"
                )
    return out


def check_payload(payload: object, path: Path, what: str, hint: str = "") -> None:
    """ValueError naming ``path`` (``what``: e.g. "annotation file") when ``payload``
    has problems (see :func:`payload_problems`); ``hint`` ends the message."""
    problems = payload_problems(payload)
    if not problems:
        return
    shown = "; ".join(problems[:_SHOWN])
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    raise ValueError(f"{path}: invalid {what} ({len(problems)} problem(s)): {shown}{more}{hint}")


def read_annotation_file(path: Path, hint: str = "") -> tuple[list[dict], int | None] | None:
    """(payload, history step id or None) of an annotation file; None when there is no
    file. ValueError naming the file (and ending with ``hint``) when it is unusable
    (:func:`payload_problems`)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid annotation file ({e}){hint}") from e
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{path}: not a valid annotation file (no 'annotations' list){hint}")
    check_payload(data["annotations"], path, "annotation file", hint)
    step = data.get("step")
    return data["annotations"], (int(step) if is_int(step) else None)


def _png_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file from its header; None when unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return int(h), int(w)


def _rebuilt_entry(folder: Path, key: str) -> dict | None:
    """An index entry made from ``images/<key>.png`` (None without a readable one)."""
    size = _png_size(folder / "images" / f"{key}.png")
    if size is None:
        return None
    return {
        "file_name": f"images/{key}.png",
        "height": size[0],
        "width": size[1],
        "scan": key,
        "hu_scale": HU_SCALE,
        "meta": {},
    }


def _checked_entry(folder: Path, key: str, e: object, notes: list[str]) -> dict | None:
    """The usable index entry of ``key`` (repaired, each repair in ``notes``), or None."""
    where = f"{folder / INDEX_NAME}: image {key!r}"
    if not isinstance(e, dict):
        problem = "is not an object"
    else:
        problem = file_name_problem(e.get("file_name")) or image_size_problem(
            e.get("height"), e.get("width")
        )
    if problem is not None:
        rebuilt = _rebuilt_entry(folder, key)
        if rebuilt is None:
            notes.append(f"{where}: {problem} and images/{key}.png cannot be read: left out")
        else:
            notes.append(f"{where}: {problem}: rebuilt from images/{key}.png")
        return rebuilt
    entry = dict(e)
    hu = entry.get("hu_scale")
    if not (is_number(hu) and hu > 0):
        said = "has no hu_scale" if hu is None else f"hu_scale {hu!r} is not a positive number"
        notes.append(f"{where}: {said}: the project's scale {HU_SCALE:g} is assumed")
        entry["hu_scale"] = HU_SCALE
    if not isinstance(entry.get("scan"), (str, type(None))):
        entry["scan"] = key
    if not isinstance(entry.get("meta"), dict):
        entry["meta"] = {}
    return entry


def read_index(folder: Path, is_key) -> tuple[dict, list[str], bool]:
    """``(entries, warnings, changed)`` of the project in ``folder``: the checked image
    entries of ``project.json`` plus entries rebuilt for image files it does not list
    (see the module doc); ``changed`` when the index on disk should be rewritten.
    ``is_key(name)`` says whether a name is a safe image key."""
    path = folder / INDEX_NAME
    notes: list[str] = []
    images, state = _index_images(path, notes)
    entries: dict = {}
    for key, e in images.items():
        if not is_key(key):
            notes.append(f"{path}: image key {key!r} is not a safe file name: left out")
            continue
        entry = _checked_entry(folder, key, e, notes)
        if entry is not None:
            entries[key] = entry
    found = []
    image_dir = folder / "images"
    stems = sorted(p.stem for p in image_dir.glob("*.png")) if image_dir.is_dir() else []
    for key in stems:
        if key not in entries and key not in images and is_key(key):
            rebuilt = _rebuilt_entry(folder, key)
            if rebuilt is not None:
                entries[key] = rebuilt
                found.append(key)
    if found:
        if state == "ok" and images:
            why = f"did not list {len(found)} image(s) found in images/ ({', '.join(found)})"
        else:
            why = {"missing": "was missing", "unreadable": "could not be read"}.get(
                state, "listed no image"
            )
        notes.append(
            f"{path} {why}: rebuilt from the image files ({len(found)} added; their scan "
            f"name is the image key and the pixel scale {HU_SCALE:g})"
        )
    changed = bool(notes) or state == "unreadable"
    return entries, notes, changed


def _index_images(path: Path, notes: list[str]) -> tuple[dict, str]:
    """The ``images`` object of the index and its state: "ok", "missing" or "unreadable"
    (then kept aside as ``project.json.unreadable``, said in ``notes``)."""
    if not path.is_file():
        return {}, "missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, dict):
            raise ValueError("no 'images' object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        aside = path.with_name(INDEX_NAME + ".unreadable")
        os.replace(path, aside)
        notes.append(f"{path}: not a valid project index ({e}); kept as {aside.name}")
        return {}, "unreadable"
    return images, "ok"


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files (``.<name>.*.tmp``) that an interrupted atomic write
    left in the project's folders; returns how many. Call it only when no write of the
    project is in progress."""
    dirs = [folder, folder / "images", folder / "annotations"]
    history = folder / "history"
    if history.is_dir():
        dirs.extend(d for d in history.iterdir() if d.is_dir())
    n = 0
    for d in dirs:
        if not d.is_dir():
            continue
        for tmp in d.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
    return n
