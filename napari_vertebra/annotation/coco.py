"""COCO instance-segmentation JSON: write (with the 16-bit PNG images) and validated read.

Layout written by :func:`write_coco`::

    out_dir/annotations.json
    out_dir/<file_name>          one 16-bit PNG per image that has pixels in memory

Images are stored as uint16 ``round(value * hu_scale)`` clipped to 0..65535, with
``hu_scale`` (default :data:`HU_SCALE` = 40, i.e. 1/40 HU steps, values up to 1638 HU)
kept in the COCO image entry; :func:`read_image` divides by it again, so a MIP of
windowed HU comes back as float HU (to 1/40 HU).

COCO entries: images ``{id (from 1), file_name, width, height, scan, hu_scale[, meta]}``;
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
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from napari_vertebra.core.labels import (
    ClassSet,
    class_id,
    class_name,
    class_set_for,
    get_class_set,
)

from ._atomic import AtomicBatch, atomic_write_bytes, png_bytes
from ._io import AnnotationFormatError, read_json
from .polygons import mask_to_polygons, rasterize
from .types import AnnotatedImage, VertebraAnnotation
from .validate import image_size_problem, validate_polygon

__all__ = [
    "HU_SCALE",
    "CocoFormatError",
    "coco_categories",
    "from_coco",
    "is_coco",
    "read_coco",
    "read_image",
    "rle_decode",
    "to_coco",
    "write_coco",
    "write_mip_png",
]

#: Default scale of the 16-bit PNG images: stored = round(HU * HU_SCALE).
HU_SCALE = 40.0


class CocoFormatError(AnnotationFormatError):
    """A COCO file is malformed; ``errors`` lists every problem found."""

    kind = "COCO"


# ----------------------------------------------------------------------------- images


def _to_uint16(image: np.ndarray, hu_scale: float) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=65535.0 / hu_scale, neginf=0.0)
    return np.clip(np.rint(a * hu_scale), 0, 65535).astype(np.uint16)


def write_mip_png(path: str | os.PathLike, mip: np.ndarray, hu_scale: float = HU_SCALE) -> Path:
    """Write a 2D float image (windowed HU) as a 16-bit PNG: ``round(mip * hu_scale)``.

    Values are clipped to 0..65535 / hu_scale. The write is atomic.
    """
    return atomic_write_bytes(path, png_bytes(_to_uint16(mip, hu_scale)))


def read_image(path: str | os.PathLike, hu_scale: float | None = None) -> np.ndarray:
    """Read an image file as a 2D float32 array (rows, cols).

    With ``hu_scale`` the stored values are divided by it (the inverse of
    :func:`write_mip_png`); without, raw values are returned. Colour images become grey
    (luminance; their first channel when all channels are equal).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: cannot read image ({e})") from e
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.float32)
        if rgb.shape[-1] == 1 or np.all(rgb == rgb[..., :1]):
            arr = rgb[..., 0]
        else:
            arr = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    out = arr.astype(np.float32)
    if hu_scale:
        out /= np.float32(hu_scale)
    return out


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


def _check_file_name(name: str) -> str | None:
    if not isinstance(name, str) or not name:
        return "file_name must be a non-empty string"
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return f"file_name {name!r} must be a relative path inside the output folder"
    return None


def checked_polygons(
    images: Sequence[AnnotatedImage], error: type[AnnotationFormatError]
) -> list[list[tuple[VertebraAnnotation, list[np.ndarray], int]]]:
    """Validate ``images`` for writing: per image, per annotation with polygons,
    ``(annotation, polygons, area)`` with polygons clipped to the image where they reached
    outside (a ``UserWarning`` says so) and ``area`` the pixels of their raster.

    Raises ``error(None, [...])`` listing every problem (bad file names or sizes, pixel
    arrays whose shape is not (height, width), polygons refused by
    :func:`~napari_vertebra.annotation.validate.validate_polygon`, annotations covering
    no pixel), naming the image and the annotation.
    """
    errors: list[str] = []
    notes: list[str] = []
    out: list[list[tuple[VertebraAnnotation, list[np.ndarray], int]]] = []
    seen: set[str] = set()
    for k, im in enumerate(images):
        tag = f"image {k + 1} ({im.file_name!r})"
        per_image: list[tuple[VertebraAnnotation, list[np.ndarray], int]] = []
        out.append(per_image)
        msg = _check_file_name(im.file_name)
        if msg:
            errors.append(f"{tag}: {msg}")
        elif im.file_name in seen:
            errors.append(f"{tag}: file_name used twice")
        seen.add(im.file_name)
        size_msg = image_size_problem(im.height, im.width)
        if size_msg:
            errors.append(f"{tag}: {size_msg}")
            continue
        if im.image is not None and np.shape(im.image)[:2] != (im.height, im.width):
            errors.append(
                f"{tag}: pixel array shape {np.shape(im.image)} != (height, width) "
                f"({im.height}, {im.width})"
            )
        if im.image is not None and np.ndim(im.image) != 2:
            errors.append(f"{tag}: pixel array must be 2D, got shape {np.shape(im.image)}")
        shape = (int(im.height), int(im.width))
        for n, a in enumerate(im.annotations, start=1):
            if not a.polygons:
                continue
            atag = f"{tag}, annotation {n} ({a.name})"
            polys, bad = [], False
            for j, p in enumerate(a.polygons):
                if len(p) < 3:
                    errors.append(f"{atag}: polygon {j} has {len(p)} point(s); 3 needed")
                    bad = True
                    continue
                kept, errs, fixed = validate_polygon(p, shape)
                errors.extend(f"{atag}: polygon {j} {m}" for m in errs)
                notes.extend(f"{atag}: polygon {j}: {m}" for m in fixed)
                bad |= kept is None
                if kept is not None:
                    polys.append(kept)
            if bad:
                continue
            area = int(rasterize(polys, shape).sum())
            if area == 0:
                errors.append(f"{atag}: its polygons cover no pixel centre (area 0)")
                continue
            per_image.append((a, polys, area))
    if errors:
        raise error(None, errors)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return out


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
    ann_id = 1
    for img_id, (im, anns) in enumerate(zip(images, checked, strict=True), start=1):
        meta = dict(im.meta or {})
        hu_scale = float(meta.pop("hu_scale", HU_SCALE))
        entry = {
            "id": img_id,
            "file_name": im.file_name.replace("\\", "/"),
            "width": int(im.width),
            "height": int(im.height),
            "scan": im.scan if im.scan is not None else PurePosixPath(im.file_name).stem,
            "hu_scale": hu_scale,
        }
        if meta:
            entry["meta"] = _jsonable(meta)
        out_images.append(entry)
        for a, polys, area in anns:
            seg = []
            for p in polys:
                xy = np.stack([p[:, 1] + 0.5, p[:, 0] + 0.5], axis=1)
                seg.append([round(float(v), 3) for v in xy.ravel()])
            allp = np.concatenate(polys)
            x0, y0 = allp[:, 1].min() + 0.5, allp[:, 0].min() + 0.5
            x1, y1 = allp[:, 1].max() + 0.5, allp[:, 0].max() + 0.5
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
            out_anns.append(ann)
            ann_id += 1
    return {
        "info": info or {"description": "napari-vertebra vertebra annotations"},
        "images": out_images,
        "annotations": out_anns,
        "categories": coco_categories(
            class_set or class_set_for(int(a.class_id) for im in images for a in im.annotations)
        ),
    }


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
            data = png_bytes(_to_uint16(im.image, entry["hu_scale"]))
            batch.add(out_dir / entry["file_name"], data)
        elif copy_from is not None:
            src, dst = Path(copy_from) / entry["file_name"], out_dir / entry["file_name"]
            if src.is_file() and (not dst.exists() or not src.samefile(dst)):
                batch.add(dst, src.read_bytes())
    batch.add(out_dir / json_name, text.encode("utf-8"))
    return out_dir / json_name


# ----------------------------------------------------------------------------- reading


def _rle_counts_from_string(text: str) -> list[int]:
    """Counts of COCO's compressed RLE string (5 bits per character, offset 48, counts
    after the second stored as differences to the count two before)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("truncated RLE string")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError("invalid character in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Boolean (height, width) mask of a COCO RLE dict ``{"size": [h, w], "counts": ...}``
    (counts a list, or the compressed string); ValueError when malformed."""
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise ValueError("RLE needs 'size': [height, width]")
    if isinstance(counts, str):
        counts = _rle_counts_from_string(counts)
    elif isinstance(counts, bytes):
        counts = _rle_counts_from_string(counts.decode("ascii"))
    if not isinstance(counts, list) or not all(_is_int(v) and v >= 0 for v in counts):
        raise ValueError("RLE 'counts' must be a string or a list of non-negative integers")
    h, w = size
    if sum(counts) != h * w:
        raise ValueError(f"RLE counts add up to {sum(counts)}, not {h}x{w}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()  # column-major


def is_coco(data: object) -> bool:
    """True if a loaded JSON object looks like COCO (has an ``images`` or
    ``annotations`` list)."""
    return isinstance(data, dict) and (
        isinstance(data.get("images"), list) or isinstance(data.get("annotations"), list)
    )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def from_coco(
    data: dict,
    root: str | os.PathLike | None = None,
    load_images: bool = False,
    check_files: bool = True,
    source: str | os.PathLike | None = None,
) -> list[AnnotatedImage]:
    """Validate a COCO dict and convert it (see :func:`read_coco`); ``root`` is the folder
    image file names are relative to (needed for ``check_files`` / ``load_images``)."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise CocoFormatError(source, ["top level is not a JSON object"])
    for key in ("images", "annotations", "categories"):
        if key not in data:
            errors.append(f"missing top-level key {key!r}")
        elif not isinstance(data[key], list):
            errors.append(f"{key!r} is not a list")
    if errors:
        raise CocoFormatError(source, errors)

    # categories: matched by name; an id given twice would relabel silently: refused
    cat_map: dict[int, int] = {}
    cat_names: dict[int, str] = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            errors.append(f"categories[{k}]: needs 'id' and 'name'")
            continue
        if not _is_int(c["id"]):
            errors.append(f"categories[{k}]: id {c['id']!r} is not an integer")
            continue
        if not isinstance(c["name"], str):
            errors.append(f"categories[{k}] (id {c['id']}): name {c['name']!r} is not text")
            continue
        if c["id"] in cat_names:
            errors.append(
                f"categories[{k}]: id {c['id']} is used twice ({cat_names[c['id']]!r} and "
                f"{c['name']!r}); give each category its own id"
            )
            continue
        cat_names[c["id"]] = c["name"]
        try:
            cat_map[c["id"]] = class_id(c["name"])
        except ValueError:
            pass  # not a vertebra; an error only if an annotation uses it

    images: dict[int, AnnotatedImage] = {}
    order: list[int] = []
    root_p = Path(root) if root is not None else None
    for k, e in enumerate(data["images"]):
        tag = f"images[{k}]"
        if not isinstance(e, dict):
            errors.append(f"{tag}: not an object")
            continue
        missing = [key for key in ("id", "file_name", "width", "height") if key not in e]
        if missing:
            errors.append(f"{tag}: missing key(s) {', '.join(map(repr, missing))}")
            continue
        tag = f"images[{k}] (id {e['id']!r}, {e['file_name']!r})"
        ok = True
        if not _is_int(e["id"]):
            errors.append(f"{tag}: id is not an integer")
            ok = False
        elif e["id"] in images:
            errors.append(f"{tag}: image id used twice")
            ok = False
        size_msg = image_size_problem(e["height"], e["width"])
        if size_msg:
            errors.append(f"{tag}: {size_msg}")
            ok = False
        msg = _check_file_name(e["file_name"])
        if msg:
            errors.append(f"{tag}: {msg}")
            ok = False
        hu_scale = e.get("hu_scale")
        if hu_scale is not None and (not _is_num(hu_scale) or hu_scale <= 0):
            errors.append(f"{tag}: hu_scale {hu_scale!r} is not a positive number")
            ok = False
        if not ok:
            continue
        file_path = root_p / e["file_name"] if root_p is not None else None
        pixels = None
        if file_path is not None and (check_files or load_images):
            if not file_path.is_file():
                errors.append(f"{tag}: image file {file_path} not found")
                continue
            if load_images:
                try:
                    pixels = read_image(file_path, hu_scale=hu_scale)
                except ValueError as err:
                    errors.append(f"{tag}: {err}")
                    continue
                if pixels.shape != (e["height"], e["width"]):
                    errors.append(
                        f"{tag}: image file is {pixels.shape[0]}x{pixels.shape[1]}, "
                        f"the entry says {e['height']}x{e['width']}"
                    )
                    continue
        meta = dict(e.get("meta") or {}) if isinstance(e.get("meta"), dict) else {}
        if hu_scale is not None:
            meta["hu_scale"] = float(hu_scale)
        images[e["id"]] = AnnotatedImage(
            file_name=e["file_name"],
            height=e["height"],
            width=e["width"],
            annotations=[],
            image=pixels,
            scan=str(e["scan"]) if e.get("scan") is not None else None,
            meta=meta,
        )
        order.append(e["id"])

    image_ids = {e["id"] for e in data["images"] if isinstance(e, dict) and _is_int(e.get("id"))}
    ann_ids: set[int] = set()
    for k, a in enumerate(data["annotations"]):
        tag = f"annotations[{k}]"
        if not isinstance(a, dict):
            errors.append(f"{tag}: not an object")
            continue
        missing = [
            key for key in ("id", "image_id", "category_id", "segmentation") if key not in a
        ]
        if missing:
            errors.append(f"{tag}: missing key(s) {', '.join(map(repr, missing))}")
            continue
        tag = f"annotations[{k}] (id {a['id']!r})"
        not_int = [key for key in ("id", "image_id", "category_id") if not _is_int(a[key])]
        if not_int:
            errors.extend(f"{tag}: {key} {a[key]!r} is not an integer" for key in not_int)
            continue
        if a["id"] in ann_ids:
            errors.append(f"{tag}: annotation id used twice")
        ann_ids.add(a["id"])
        if a["image_id"] not in image_ids:
            errors.append(f"{tag}: image_id {a['image_id']!r} names no image")
            continue
        img = images.get(a["image_id"])  # None when the image entry itself is invalid
        if img is not None:
            tag = f"annotations[{k}] (id {a['id']}, image {a['image_id']} {img.file_name!r})"
        cid = cat_map.get(a["category_id"])
        if cid is None:
            if a["category_id"] in cat_names:
                errors.append(
                    f"{tag}: category {a['category_id']} ({cat_names[a['category_id']]!r}) "
                    "is not a vertebra T1..L5"
                )
            else:
                errors.append(f"{tag}: unknown category_id {a['category_id']!r}")
            continue
        tag = f"{tag[:-1]}, {class_name(cid)})"
        seg = a["segmentation"]
        if isinstance(seg, dict):  # RLE (e.g. predictions or crowd regions): outline it
            if img is None:
                continue  # the image entry is refused already; do not decode blindly
            if seg.get("size") != [img.height, img.width]:  # checked before decoding
                errors.append(f"{tag}: RLE size {seg.get('size')!r} differs from the image's")
                continue
            try:
                mask = rle_decode(seg)
            except ValueError as err:
                errors.append(f"{tag}: {err}")
                continue
            polys = mask_to_polygons(mask)
            if not polys:
                errors.append(f"{tag}: RLE mask is empty")
                continue
            score = a.get("score")
            img.annotations.append(
                VertebraAnnotation(cid, polys, float(score) if _is_num(score) else None)
            )
            continue
        if not isinstance(seg, list) or not seg:
            errors.append(f"{tag}: segmentation must be a non-empty list of polygons")
            continue
        polys = []
        bad = False
        for j, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
                errors.append(f"{tag}: polygon {j} is not a list of finite numbers")
                bad = True
            elif len(poly) % 2:
                errors.append(f"{tag}: polygon {j} has an odd number of coordinates")
                bad = True
            elif len(poly) < 6:
                errors.append(f"{tag}: polygon {j} has {len(poly) // 2} point(s); 3 needed")
                bad = True
            else:
                xy = np.asarray(poly, float).reshape(-1, 2)
                rc = np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1)
                if img is None:
                    continue
                kept, errs, notes = validate_polygon(rc, (img.height, img.width))
                errors.extend(f"{tag}: polygon {j} {m}" for m in errs)
                img.warnings.extend(f"{tag}: polygon {j}: {m}" for m in notes)
                bad |= kept is None
                if kept is not None:
                    polys.append(kept)
        score = a.get("score")
        if score is not None and not _is_num(score):
            errors.append(f"{tag}: score {score!r} is not a number")
            bad = True
        if bad or img is None:
            continue
        img.annotations.append(
            VertebraAnnotation(cid, polys, score=float(score) if score is not None else None)
        )
    if errors:
        raise CocoFormatError(source, errors)
    return [images[i] for i in order]


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


def iter_annotations(images: Iterable[AnnotatedImage]) -> Iterable[VertebraAnnotation]:
    """Every annotation of ``images`` in order (a small convenience)."""
    for im in images:
        yield from im.annotations
