"""COCO instance-segmentation JSON: write (with the 16-bit PNG images) and validated read.

Layout written by :func:`write_coco`::

    out_dir/annotations.json
    out_dir/<file_name>          one 16-bit PNG per image that has pixels in memory

Images are stored as described in :mod:`~napari_vertebra.annotation.image_files`, with
their ``hu_scale`` kept in the COCO image entry.

COCO entries: images ``{id (from 1), file_name, width, height, scan, hu_scale[, meta]}``,
the pixel spacing in ``meta.spacing_mm`` (mm, or [row, col] mm; a ``spacing`` /
``spacing_mm`` key beside ``meta`` is read into it);
annotations ``{id (from 1), image_id, category_id, segmentation: [[x0, y0, x1, y1, ...],
...], bbox: [x, y, w, h], area (pixels of the rasterised mask), iscrowd: 0[, score]}``;
categories 1..17 named T1..L5 with supercategory thoracic / lumbar. COCO puts the
centre of pixel (row r, col c) at (x, y) = (c + 0.5, r + 0.5): coordinates are shifted by
half a pixel at this boundary. On reading, categories are matched by name (T1..L5), so
files with other category ids work; RLE segmentations (e.g. from other tools) are read and
outlined as polygons.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from napari_vertebra.core.labels import (
    ClassSet,
    class_id,
    class_name,
    class_set_for,
    get_class_set,
)

from ._atomic import AtomicBatch, png_bytes
from ._io import AnnotationFormatError, read_json
from .image_files import HU_SCALE, to_uint16
from .polygons import mask_to_polygons
from .reading import file_found, is_int, is_number, load_pixels, pixel_xy, rows_cols
from .rle import rle_decode
from .types import AnnotatedImage, VertebraAnnotation
from .validate import checked_polygons, file_name_problem, image_size_problem, keep_polygon

__all__ = [
    "CocoFormatError",
    "coco_categories",
    "from_coco",
    "is_coco",
    "read_coco",
    "stage_coco",
    "to_coco",
    "write_coco",
]


class CocoFormatError(AnnotationFormatError):
    """A COCO file is malformed; ``errors`` lists every problem found."""

    kind = "COCO"


# ----------------------------------------------------------------------------- writing


def coco_categories(class_set: str | ClassSet | None = None) -> list[dict]:
    """The COCO categories of a class set (default the paper's 17: ids 1..17 named T1..L5,
    supercategory thoracic/lumbar; the extended set adds 18 C7, 19 T13, 20 L6, 21 S1)."""
    return get_class_set(class_set).coco_categories()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def to_coco(
    images: Sequence[AnnotatedImage],
    info: dict | None = None,
    class_set: str | ClassSet | None = None,
) -> dict:
    """The COCO dict of ``images`` (ids from 1 in the given order); see module doc.

    ``categories`` are those of ``class_set``; by default the paper's 17, or the extended
    set's when an annotation holds one of its levels (C7, T13, L6, S1).

    Raises :class:`CocoFormatError` for images that cannot be written (bad file names,
    pixel arrays whose shape is not (height, width), polygons refused by
    :func:`~napari_vertebra.annotation.validate.validate_polygon` or covering no pixel);
    polygons reaching outside the image are clipped to it (with a ``UserWarning``).
    """
    checked = checked_polygons(images, CocoFormatError)
    out_images, out_anns = [], []
    for img_id, (im, anns) in enumerate(zip(images, checked, strict=True), start=1):
        out_images.append(_image_entry(img_id, im))
        for a, polys, area in anns:
            out_anns.append(_annotation_entry(len(out_anns) + 1, img_id, a, polys, area))
    return {
        "info": info or {"description": "napari-vertebra vertebra annotations"},
        "images": out_images,
        "annotations": out_anns,
        "categories": coco_categories(
            class_set or class_set_for(int(a.class_id) for im in images for a in im.annotations)
        ),
    }


def _image_entry(img_id: int, im: AnnotatedImage) -> dict:
    """The COCO image entry of ``im``."""
    meta = dict(im.meta or {})
    entry = {
        "id": img_id,
        "file_name": im.file_name.replace("\\", "/"),
        "width": int(im.width),
        "height": int(im.height),
        "scan": im.scan if im.scan is not None else PurePosixPath(im.file_name).stem,
        "hu_scale": float(meta.pop("hu_scale", HU_SCALE)),
    }
    if meta:
        entry["meta"] = _jsonable(meta)
    return entry


def _annotation_entry(
    ann_id: int, img_id: int, a: VertebraAnnotation, polys: list[np.ndarray], area: int
) -> dict:
    """The COCO annotation entry of ``a`` with its checked ``polys`` and ``area``."""
    seg = [[round(float(v), 3) for v in pixel_xy(p).ravel()] for p in polys]
    xy = pixel_xy(np.concatenate(polys))
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    ann = {
        "id": ann_id,
        "image_id": img_id,
        "category_id": int(a.class_id),
        "segmentation": seg,
        "bbox": [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)],
        "area": area,
        "iscrowd": 0,
    }
    if a.score is not None:
        ann["score"] = float(a.score)
    return ann


def write_coco(
    images: Sequence[AnnotatedImage],
    out_dir: str | os.PathLike,
    json_name: str = "annotations.json",
    info: dict | None = None,
    copy_from: str | os.PathLike | None = None,
    class_set: str | ClassSet | None = None,
) -> Path:
    """Write ``out_dir/json_name`` (COCO) and each image that has pixels as 16-bit PNG.

    With ``copy_from`` (a folder), image files without pixels in memory that exist there
    under their ``file_name`` are copied byte for byte (e.g. when converting formats).

    Images are written under their ``file_name`` (relative to ``out_dir``) with their
    ``meta["hu_scale"]`` (default :data:`HU_SCALE`). Everything is validated and encoded
    first, then moved into place together: on error nothing is written. Returns the
    JSON path.
    """
    out_dir = Path(out_dir)
    with AtomicBatch() as batch:
        stage_coco(batch, images, out_dir, json_name, info, copy_from, class_set)
    return out_dir / json_name


def stage_coco(
    batch: AtomicBatch,
    images: Sequence[AnnotatedImage],
    out_dir: str | os.PathLike,
    json_name: str = "annotations.json",
    info: dict | None = None,
    copy_from: str | os.PathLike | None = None,
    class_set: str | ClassSet | None = None,
) -> Path:
    """Like :func:`write_coco`, but stage the files in ``batch`` (an
    :class:`~napari_vertebra.annotation._atomic.AtomicBatch`) so that several COCO files
    are committed together."""
    out_dir = Path(out_dir)
    coco = to_coco(images, info=info, class_set=class_set)
    text = json.dumps(coco, indent=1, default=str)
    for im, entry in zip(images, coco["images"], strict=True):
        if im.image is not None:
            data = png_bytes(to_uint16(im.image, entry["hu_scale"]))
            batch.add(out_dir / entry["file_name"], data)
        elif copy_from is not None:
            src, dst = Path(copy_from) / entry["file_name"], out_dir / entry["file_name"]
            if src.is_file() and (not dst.exists() or not src.samefile(dst)):
                batch.add(dst, src.read_bytes())
    batch.add(out_dir / json_name, text.encode("utf-8"))
    return out_dir / json_name


# ----------------------------------------------------------------------------- reading


def is_coco(data: object) -> bool:
    """True if a loaded JSON object looks like COCO (has an ``images`` or
    ``annotations`` list)."""
    return isinstance(data, dict) and (
        isinstance(data.get("images"), list) or isinstance(data.get("annotations"), list)
    )


def from_coco(
    data: dict,
    root: str | os.PathLike | None = None,
    load_images: bool = False,
    check_files: bool = True,
    source: str | os.PathLike | None = None,
) -> list[AnnotatedImage]:
    """Validate a COCO dict and convert it (see :func:`read_coco`); ``root`` is the folder
    image file names are relative to (needed for ``check_files`` / ``load_images``)."""
    _check_top_level(data, source)
    errors: list[str] = []
    categories = _read_categories(data["categories"], errors)
    root_p = Path(root) if root is not None else None
    images: dict[int, AnnotatedImage] = {}
    for k, e in enumerate(data["images"]):
        im = _read_image_entry(k, e, images, root_p, load_images, check_files, errors)
        if im is not None:
            images[e["id"]] = im
    image_ids = {e["id"] for e in data["images"] if isinstance(e, dict) and is_int(e.get("id"))}
    ann_ids: set[int] = set()
    for k, a in enumerate(data["annotations"]):
        got = _read_annotation(k, a, images, image_ids, ann_ids, categories, errors)
        if got is not None:
            got[0].annotations.append(got[1])
    if errors:
        raise CocoFormatError(source, errors)
    return list(images.values())


def _check_top_level(data: object, source: str | os.PathLike | None) -> None:
    """Raise :class:`CocoFormatError` unless ``data`` is an object with the three lists."""
    if not isinstance(data, dict):
        raise CocoFormatError(source, ["top level is not a JSON object"])
    errors = []
    for key in ("images", "annotations", "categories"):
        if key not in data:
            errors.append(f"missing top-level key {key!r}")
        elif not isinstance(data[key], list):
            errors.append(f"{key!r} is not a list")
    if errors:
        raise CocoFormatError(source, errors)


def _has_keys(entry: object, keys: Sequence[str], tag: str, errors: list[str]) -> bool:
    """Whether ``entry`` is an object with every one of ``keys`` (if not, the problem goes
    to ``errors``)."""
    if not isinstance(entry, dict):
        errors.append(f"{tag}: not an object")
        return False
    missing = [key for key in keys if key not in entry]
    if missing:
        errors.append(f"{tag}: missing key(s) {', '.join(map(repr, missing))}")
    return not missing


#: {category id: class id} of the vertebra categories and {category id: name} of all.
Categories = tuple[dict[int, int], dict[int, str]]


def _read_categories(entries: list, errors: list[str]) -> Categories:
    """The categories, matched by name; an id given twice would relabel silently: refused."""
    cat_map: dict[int, int] = {}
    cat_names: dict[int, str] = {}
    for k, c in enumerate(entries):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            errors.append(f"categories[{k}]: needs 'id' and 'name'")
        elif not is_int(c["id"]):
            errors.append(f"categories[{k}]: id {c['id']!r} is not an integer")
        elif not isinstance(c["name"], str):
            errors.append(f"categories[{k}] (id {c['id']}): name {c['name']!r} is not text")
        elif c["id"] in cat_names:
            errors.append(
                f"categories[{k}]: id {c['id']} is used twice ({cat_names[c['id']]!r} and "
                f"{c['name']!r}); give each category its own id"
            )
        else:
            cat_names[c["id"]] = c["name"]
            try:
                cat_map[c["id"]] = class_id(c["name"])
            except ValueError:
                pass  # not a vertebra; an error only if an annotation uses it
    return cat_map, cat_names


def _category_of(
    category_id: int, categories: Categories, tag: str, errors: list[str]
) -> int | None:
    """The class id of an annotation's ``category_id``, or None (the problem in ``errors``)."""
    cat_map, cat_names = categories
    cid = cat_map.get(category_id)
    if cid is None and category_id in cat_names:
        errors.append(
            f"{tag}: category {category_id} ({cat_names[category_id]!r}) is not a vertebra T1..L5"
        )
    elif cid is None:
        errors.append(f"{tag}: unknown category_id {category_id!r}")
    return cid


def _image_tag(k: int, e: object, images: dict, errors: list[str]) -> str | None:
    """The name of image entry ``k`` in messages, or None when the entry is refused."""
    if not _has_keys(e, ("id", "file_name", "width", "height"), f"images[{k}]", errors):
        return None
    tag = f"images[{k}] (id {e['id']!r}, {e['file_name']!r})"
    problems = []
    if not is_int(e["id"]):
        problems.append("id is not an integer")
    elif e["id"] in images:
        problems.append("image id used twice")
    problems.append(image_size_problem(e["height"], e["width"]))
    problems.append(file_name_problem(e["file_name"]))
    hu_scale = e.get("hu_scale")
    if hu_scale is not None and (not is_number(hu_scale) or hu_scale <= 0):
        problems.append(f"hu_scale {hu_scale!r} is not a positive number")
    problems = [m for m in problems if m]
    errors.extend(f"{tag}: {m}" for m in problems)
    return None if problems else tag


def _read_image_entry(
    k: int,
    e: object,
    images: dict[int, AnnotatedImage],
    root: Path | None,
    load_images: bool,
    check_files: bool,
    errors: list[str],
) -> AnnotatedImage | None:
    """Image entry ``k`` (without annotations yet), or None when it is refused."""
    tag = _image_tag(k, e, images, errors)
    if tag is None:
        return None
    hu_scale = e.get("hu_scale")
    pixels = None
    if root is not None and load_images:
        pixels = load_pixels(root / e["file_name"], hu_scale, tag, errors)
        if pixels is None:
            return None
        if pixels.shape != (e["height"], e["width"]):
            errors.append(
                f"{tag}: image file is {pixels.shape[0]}x{pixels.shape[1]}, "
                f"the entry says {e['height']}x{e['width']}"
            )
            return None
    elif root is not None and check_files and not file_found(root / e["file_name"], tag, errors):
        return None
    meta = dict(e.get("meta") or {}) if isinstance(e.get("meta"), dict) else {}
    if hu_scale is not None:
        meta["hu_scale"] = float(hu_scale)
    for key in ("spacing", "spacing_mm"):  # the pixel spacing, also beside "meta"
        if e.get(key) is not None and key not in meta:
            meta[key] = e[key]
    return AnnotatedImage(
        file_name=e["file_name"],
        height=e["height"],
        width=e["width"],
        annotations=[],
        image=pixels,
        scan=str(e["scan"]) if e.get("scan") is not None else None,
        meta=meta,
    )


def _annotation_tag(
    k: int, a: object, image_ids: set[int], ann_ids: set[int], errors: list[str]
) -> str | None:
    """The name of annotation entry ``k`` in messages, or None when its keys or ids are
    refused (an id used twice is an error, not a refusal: the entry is still read)."""
    keys = ("id", "image_id", "category_id", "segmentation")
    if not _has_keys(a, keys, f"annotations[{k}]", errors):
        return None
    tag = f"annotations[{k}] (id {a['id']!r})"
    not_int = [key for key in ("id", "image_id", "category_id") if not is_int(a[key])]
    if not_int:
        errors.extend(f"{tag}: {key} {a[key]!r} is not an integer" for key in not_int)
        return None
    if a["id"] in ann_ids:
        errors.append(f"{tag}: annotation id used twice")
    ann_ids.add(a["id"])
    if a["image_id"] not in image_ids:
        errors.append(f"{tag}: image_id {a['image_id']!r} names no image")
        return None
    return tag


def _read_annotation(
    k: int,
    a: object,
    images: dict[int, AnnotatedImage],
    image_ids: set[int],
    ann_ids: set[int],
    categories: Categories,
    errors: list[str],
) -> tuple[AnnotatedImage, VertebraAnnotation] | None:
    """Annotation entry ``k`` and its image, or None when it is refused (or its image)."""
    tag = _annotation_tag(k, a, image_ids, ann_ids, errors)
    if tag is None:
        return None
    img = images.get(a["image_id"])  # None when the image entry itself is invalid
    if img is not None:
        tag = f"annotations[{k}] (id {a['id']}, image {a['image_id']} {img.file_name!r})"
    cid = _category_of(a["category_id"], categories, tag, errors)
    if cid is None:
        return None
    tag = f"{tag[:-1]}, {class_name(cid)})"
    seg, score = a["segmentation"], a.get("score")
    if isinstance(seg, dict):  # RLE (e.g. predictions or crowd regions): outline it
        if img is None:
            return None  # the image entry is refused already; do not decode blindly
        polys = _rle_polygons(seg, img, tag, errors)
        if polys is None:
            return None
        return img, VertebraAnnotation(cid, polys, float(score) if is_number(score) else None)
    if not isinstance(seg, list) or not seg:
        errors.append(f"{tag}: segmentation must be a non-empty list of polygons")
        return None
    polys, bad = _polygons(seg, img, tag, errors)
    if score is not None and not is_number(score):
        errors.append(f"{tag}: score {score!r} is not a number")
        bad = True
    if bad or img is None:
        return None
    return img, VertebraAnnotation(cid, polys, score=float(score) if score is not None else None)


def _rle_polygons(
    seg: dict, img: AnnotatedImage, tag: str, errors: list[str]
) -> list[np.ndarray] | None:
    """The outline of an RLE segmentation of ``img``, or None (the problem in ``errors``)."""
    if seg.get("size") != [img.height, img.width]:  # checked before decoding
        errors.append(f"{tag}: RLE size {seg.get('size')!r} differs from the image's")
        return None
    try:
        mask = rle_decode(seg)
    except ValueError as err:
        errors.append(f"{tag}: {err}")
        return None
    polys = mask_to_polygons(mask)
    if not polys:
        errors.append(f"{tag}: RLE mask is empty")
        return None
    return polys


def _polygons(
    seg: list, img: AnnotatedImage | None, tag: str, errors: list[str]
) -> tuple[list[np.ndarray], bool]:
    """The polygons of a segmentation list and whether one was refused. Without ``img``
    (its entry refused) only the coordinate lists are checked."""
    polys, bad = [], False
    for j, poly in enumerate(seg):
        if not isinstance(poly, list) or not all(is_number(v) for v in poly):
            problem = "is not a list of finite numbers"
        elif len(poly) % 2:
            problem = "has an odd number of coordinates"
        elif len(poly) < 6:
            problem = f"has {len(poly) // 2} point(s); 3 needed"
        else:
            if img is not None:
                rc = rows_cols(np.asarray(poly, float).reshape(-1, 2))
                where = f"{tag}: polygon {j}"
                kept = keep_polygon(rc, (img.height, img.width), where, errors, img.warnings)
                bad |= kept is None
                if kept is not None:
                    polys.append(kept)
            continue
        errors.append(f"{tag}: polygon {j} {problem}")
        bad = True
    return polys, bad


def read_coco(
    path: str | os.PathLike, load_images: bool = False, check_files: bool = True
) -> list[AnnotatedImage]:
    """Read and validate a COCO JSON file into :class:`AnnotatedImage` objects.

    Image file names are relative to the JSON's folder. ``load_images`` reads the pixels
    (float32, divided by the entry's ``hu_scale`` when present); ``check_files`` makes a
    missing image file an error. Categories are matched by name (T1..L5). Raises
    :class:`CocoFormatError` (a ValueError) listing every problem found.
    """
    path = Path(path)
    data = read_json(path, CocoFormatError)
    return from_coco(
        data, root=path.parent, load_images=load_images, check_files=check_files, source=path
    )
