"""VGG Image Annotator (VIA) files: VIA 2 projects and VIA 1 region JSON.

VIA 2 project: ``{"_via_settings": ..., "_via_img_metadata": {key: {filename, size,
regions: [{shape_attributes: {name: "polygon", all_points_x, all_points_y},
region_attributes: {<attribute>: "L1"}}], file_attributes}}, "_via_attributes": ...}``.
VIA 2's "export annotations as JSON" gives the ``_via_img_metadata`` dict alone, and VIA 1
region JSON is the same per-image dict with ``regions`` as ``{"0": {...}, "1": ...}``;
both are read too. The vertebra class (T1..L5) is the value of a region attribute whose
name the user chooses (default ``"vertebra"``).

Shapes read: polygon, polyline (closed), rect, circle, ellipse (the last two as 64-gons).
VIA's ``size`` is the file size in bytes, not the image size: the image size comes from
the image file beside the JSON when present, else from the ``height`` / ``width`` file
attributes this module writes, else from the ``image_size`` argument.

Like COCO, VIA puts the centre of pixel (row r, col c) at (x, y) = (c + 0.5, r + 0.5).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from napari_vertebra.core.labels import class_id, class_name, class_set_for

from ._atomic import AtomicBatch, png_bytes
from ._io import AnnotationFormatError, read_json
from .image_files import HU_SCALE, to_uint16
from .reading import is_number, load_pixels, pixel_xy, rows_cols
from .types import AnnotatedImage, VertebraAnnotation
from .validate import (
    Checked,
    checked_polygons,
    file_name_problem,
    image_size_problem,
    keep_polygon,
)

__all__ = [
    "DEFAULT_ATTRIBUTE",
    "ViaFormatError",
    "from_via",
    "is_via",
    "read_via",
    "to_via",
    "write_via",
]

#: Default name of the region attribute that holds the vertebra name.
DEFAULT_ATTRIBUTE = "vertebra"

ImageSize = tuple[int, int] | Mapping[str, tuple[int, int]] | None


class ViaFormatError(AnnotationFormatError):
    """A VIA file is malformed or does not hold vertebra classes; ``errors`` lists all."""

    kind = "VIA"


def is_via(data: object) -> int:
    """VIA version of a loaded JSON object: 2 (project), 1 (per-image dict), 0 (not VIA).

    A bare VIA 2 "annotations" export (regions as a list) reads as version 1's layout and
    is handled the same way.
    """
    if not isinstance(data, dict):
        return 0
    if isinstance(data.get("_via_img_metadata"), dict):
        return 2
    if data and all(
        isinstance(v, dict) and "filename" in v and "regions" in v for v in data.values()
    ):
        return 1
    return 0


def _ellipse(cx, cy, rx, ry, theta=0.0, n=64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _shape_xy(sa: dict) -> np.ndarray:
    """(N, 2) (x, y) vertices of a VIA shape; raises ValueError with the problem."""
    name = sa.get("name")

    def f(k: str) -> float:
        v = sa[k]
        if not is_number(v, finite=False):
            raise ValueError(f"{name} {k} {v!r} is not a number")
        return float(v)

    if name in ("polygon", "polyline"):
        xs, ys = sa.get("all_points_x"), sa.get("all_points_y")
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise ValueError("needs all_points_x and all_points_y lists of equal length")
        if not all(is_number(v, finite=False) for v in (*xs, *ys)):
            raise ValueError("all_points_x / all_points_y hold values that are not numbers")
        xy = np.stack([np.asarray(xs, float), np.asarray(ys, float)], axis=1).reshape(-1, 2)
        if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
            xy = xy[:-1]
        if len(xy) < 3:
            raise ValueError(f"{name} has {len(xy)} point(s); 3 needed")
        return xy
    try:
        if name == "rect":
            x, y, w, h = f("x"), f("y"), f("width"), f("height")
            return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
        if name == "circle":
            return _ellipse(f("cx"), f("cy"), f("r"), f("r"))
        if name == "ellipse":
            return _ellipse(f("cx"), f("cy"), f("rx"), f("ry"), float(sa.get("theta", 0)))
    except KeyError as e:
        raise ValueError(f"{name} lacks {e.args[0]!r}") from None
    raise ValueError(f"shape {name!r} is not supported (polygon, polyline, rect, circle, ellipse)")


def _class_of(value) -> int:
    if isinstance(value, dict):  # checkbox attribute: {"L1": true}
        keys = [k for k, v in value.items() if v]
        if len(keys) != 1:
            raise ValueError(f"expected one ticked class, got {keys}")
        value = keys[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"class {value!r} is empty or not text")
    return class_id(value)


def _image_size(
    root: Path | None, fname: str, fattrs: dict, image_size: ImageSize
) -> tuple[int, int] | None:
    if root is not None and (root / fname).is_file():
        try:
            with Image.open(root / fname) as im:
                return im.height, im.width
        except OSError:
            pass
    try:
        h, w = fattrs["height"], fattrs["width"]
        if not isinstance(h, bool) and not isinstance(w, bool):
            return int(str(h).strip()), int(str(w).strip())
    except (KeyError, TypeError, ValueError):
        pass
    if isinstance(image_size, Mapping):
        got = image_size.get(fname)
        return (int(got[0]), int(got[1])) if got is not None else None
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    return None


def from_via(
    data: dict,
    root: str | os.PathLike | None = None,
    class_attribute: str = DEFAULT_ATTRIBUTE,
    image_size: ImageSize = None,
    load_images: bool = False,
    source: str | os.PathLike | None = None,
) -> list[AnnotatedImage]:
    """Convert a loaded VIA 1 / VIA 2 JSON object (see :func:`read_via`)."""
    entries = _image_entries(data, class_attribute, source)
    root_p = Path(root) if root is not None else None
    errors: list[str] = []
    out: list[AnnotatedImage] = []
    for key, entry in entries.items():
        im = _read_entry(key, entry, root_p, class_attribute, image_size, load_images, errors)
        if im is not None:
            out.append(im)
    if errors:
        raise ViaFormatError(source, errors)
    return out


def _image_entries(data: object, class_attribute: str, source: str | os.PathLike | None) -> dict:
    """The per-image entries of a VIA object; :class:`ViaFormatError` when it is not VIA
    or its project declares region attributes but not ``class_attribute``."""
    version = is_via(data)
    if not version:
        raise ViaFormatError(source, ["not a VIA project or VIA region JSON"])
    attrs = data.get("_via_attributes") if version == 2 else None
    declared = attrs.get("region") if isinstance(attrs, dict) else None
    if isinstance(declared, dict) and declared and class_attribute not in declared:
        raise ViaFormatError(
            source,
            [
                f"the project has no region attribute {class_attribute!r}; its region "
                f"attributes are {sorted(declared)} (choose one with the class attribute "
                "option)"
            ],
        )
    return data["_via_img_metadata"] if version == 2 else data


def _read_entry(
    key: str,
    entry: object,
    root: Path | None,
    class_attribute: str,
    image_size: ImageSize,
    load_images: bool,
    errors: list[str],
) -> AnnotatedImage | None:
    """The image of one VIA entry with its regions, or None when the entry is refused."""
    if not isinstance(entry, dict) or "filename" not in entry:
        errors.append(f"image {key!r}: missing 'filename'")
        return None
    fname = entry["filename"]
    msg = file_name_problem(fname)
    if msg:
        errors.append(f"image {key!r}: {msg}")
        return None
    fattrs = entry.get("file_attributes")
    fattrs = fattrs if isinstance(fattrs, dict) else {}
    size = _checked_size(root, fname, fattrs, image_size, errors)
    regions = _regions(entry, fname, errors) if size is not None else None
    if regions is None:
        return None
    notes: list[str] = []
    by_class: dict[int, list[np.ndarray]] = {}
    for j, reg in enumerate(regions):
        got = _read_region(
            reg, f"image {fname!r} region {j}", class_attribute, size, errors, notes
        )
        if got is not None:
            by_class.setdefault(got[0], []).append(got[1])
    pixels = None
    hu = fattrs.get("hu_scale")
    if load_images and root is not None:
        pixels = load_pixels(root / fname, hu, f"image {fname!r}", errors, missing="file")
        if pixels is None:
            return None
    im_meta = {}
    if hu is not None:
        try:
            im_meta["hu_scale"] = float(hu)
        except (TypeError, ValueError):
            errors.append(f"image {fname!r}: hu_scale {hu!r} is not a number")
    return AnnotatedImage(
        file_name=fname,
        height=size[0],
        width=size[1],
        annotations=[VertebraAnnotation(c, p) for c, p in sorted(by_class.items())],
        image=pixels,
        scan=str(fattrs["scan"]) if fattrs.get("scan") else None,
        meta=im_meta,
        warnings=notes,
    )


def _checked_size(
    root: Path | None, fname: str, fattrs: dict, image_size: ImageSize, errors: list[str]
) -> tuple[int, int] | None:
    """The (height, width) of image ``fname`` (see :func:`_image_size`), or None when it
    is unknown or not a plausible size (the problem in ``errors``)."""
    size = _image_size(root, fname, fattrs, image_size)
    if size is None:
        errors.append(
            f"image {fname!r}: image size unknown (VIA stores none): put the image file "
            "beside the JSON or give the image size"
        )
        return None
    size_msg = image_size_problem(*size)
    if size_msg:
        errors.append(f"image {fname!r}: {size_msg}")
        return None
    return size


def _regions(entry: dict, fname: str, errors: list[str]) -> list | None:
    """An entry's regions as a list (VIA 1 keeps them in an object keyed "0", "1", ...)."""
    regions = entry.get("regions", [])
    if isinstance(regions, dict):  # VIA 1
        regions = [
            regions[k] for k in sorted(regions, key=lambda s: int(s) if str(s).isdigit() else 0)
        ]
    if not isinstance(regions, list):
        errors.append(f"image {fname!r}: 'regions' is neither a list nor an object")
        return None
    return regions


def _read_region(
    reg: object,
    tag: str,
    class_attribute: str,
    size: tuple[int, int],
    errors: list[str],
    notes: list[str],
) -> tuple[int, np.ndarray] | None:
    """(class id, polygon) of one region, or None when it is refused."""
    if not isinstance(reg, dict):
        errors.append(f"{tag}: not an object")
        return None
    ra = reg.get("region_attributes") or {}
    ra = ra if isinstance(ra, dict) else {}
    if class_attribute not in ra:
        errors.append(
            f"{tag}: no region attribute {class_attribute!r} (found: "
            f"{', '.join(map(repr, sorted(ra))) or 'none'})"
        )
        return None
    try:
        cid = _class_of(ra[class_attribute])
    except ValueError as e:
        errors.append(f"{tag}: {class_attribute} = {ra[class_attribute]!r}: {e}")
        return None
    tag = f"{tag} ({class_name(cid)})"
    sa = reg.get("shape_attributes")
    try:
        xy = _shape_xy(sa if isinstance(sa, dict) else {})
    except (ValueError, TypeError) as e:
        errors.append(f"{tag}: {e}")
        return None
    kept = keep_polygon(rows_cols(xy), size, f"{tag}: {sa['name']}", errors, notes, tag)
    return None if kept is None else (cid, kept)


def read_via(
    path: str | os.PathLike,
    class_attribute: str = DEFAULT_ATTRIBUTE,
    image_size: ImageSize = None,
    load_images: bool = False,
) -> list[AnnotatedImage]:
    """Read a VIA 2 project or VIA 1 region JSON file into :class:`AnnotatedImage` objects.

    ``class_attribute``: the region attribute holding T1..L5. ``image_size``: (height,
    width) px for every image, or {filename: (height, width)}, used when the image file
    is not beside the JSON. Regions of one class in one image become one annotation with
    several polygons. Raises :class:`ViaFormatError` (a ValueError) listing every problem
    (unknown attribute, unknown class, unsupported shape, unknown size, ...).
    """
    path = Path(path)
    data = read_json(path, ViaFormatError)
    return from_via(data, path.parent, class_attribute, image_size, load_images, source=path)


def _settings(name: str, attr: str) -> dict:
    return {
        "ui": {
            "annotation_editor_height": 25,
            "annotation_editor_fontsize": 0.8,
            "leftsidebar_width": 18,
            "image_grid": {
                "img_height": 80,
                "rshape_fill": "none",
                "rshape_fill_opacity": 0.3,
                "rshape_stroke": "yellow",
                "rshape_stroke_width": 2,
                "show_region_shape": True,
                "show_image_policy": "all",
            },
            "image": {
                "region_label": attr,
                "region_color": attr,
                "region_label_font": "10px Sans",
                "on_image_annotation_editor_placement": "NEAR_REGION",
            },
        },
        "core": {"buffer_size": 18, "filepath": {}, "default_filepath": ""},
        "project": {"name": name},
    }


def to_via(
    images: Sequence[AnnotatedImage],
    class_attribute: str = DEFAULT_ATTRIBUTE,
    version: int = 2,
    file_sizes: Mapping[str, int] | None = None,
    project_name: str = "vertebrae",
) -> dict:
    """The VIA JSON object of ``images``: a VIA 2 project (``version=2``) or VIA 1 region
    JSON (``version=1``). Each region is a polygon with ``{class_attribute: "L1"}``; the
    file attributes keep height, width, scan and hu_scale. ``file_sizes`` (bytes) make
    VIA's image keys; -1 when unknown."""
    if version not in (1, 2):
        raise ValueError(f"VIA version must be 1 or 2, got {version}")
    file_sizes = file_sizes or {}
    meta: dict = {}
    checked = checked_polygons(images, ViaFormatError)
    for im, anns in zip(images, checked, strict=True):
        size = int(file_sizes.get(im.file_name, -1))
        key = f"{im.file_name}{size}"
        if key in meta:
            raise ValueError(f"image {im.file_name!r} appears twice")
        meta[key] = _via_entry(im, anns, class_attribute, version, size)
    if version == 1:
        return meta
    # the dropdown offers the levels of the smallest class set holding every level used
    levels = class_set_for(a.class_id for im in images for a in im.annotations).levels
    return {
        "_via_settings": _settings(project_name, class_attribute),
        "_via_img_metadata": meta,
        "_via_attributes": {
            "region": {
                class_attribute: {
                    "type": "dropdown",
                    "description": f"vertebra {levels[0]}..{levels[-1]}",
                    "options": {n: n for n in levels},
                    "default_options": {},
                }
            },
            "file": {},
        },
        "_via_data_format_version": "2.0.10",
        "_via_image_id_list": list(meta),
    }


def _via_entry(
    im: AnnotatedImage, anns: list[Checked], class_attribute: str, version: int, size: int
) -> dict:
    """The VIA entry of ``im`` with its checked annotations ``anns``."""
    regions = []
    for a, polys, _ in anns:
        for p in polys:
            x, y = pixel_xy(p).T
            shape = {
                "name": "polygon",
                "all_points_x": [round(float(v), 3) for v in x],
                "all_points_y": [round(float(v), 3) for v in y],
            }
            regions.append(
                {"shape_attributes": shape, "region_attributes": {class_attribute: a.name}}
            )
    fattrs = {"height": int(im.height), "width": int(im.width)}
    if im.scan is not None:
        fattrs["scan"] = im.scan
    fattrs["hu_scale"] = float((im.meta or {}).get("hu_scale", HU_SCALE))
    entry = {"filename": im.file_name, "size": size, "file_attributes": fattrs}
    entry["regions"] = regions if version == 2 else {str(i): r for i, r in enumerate(regions)}
    return entry


def write_via(
    images: Sequence[AnnotatedImage],
    out_path: str | os.PathLike,
    class_attribute: str = DEFAULT_ATTRIBUTE,
    version: int = 2,
    write_images: bool = True,
    copy_from: str | os.PathLike | None = None,
) -> Path:
    """Write a VIA JSON file (and, with ``write_images``, images with pixels as 16-bit PNG
    beside it under their file names; with ``copy_from``, image files found in that
    folder are copied instead when not in memory). Atomic: on error nothing is written."""
    out_path = Path(out_path)
    root = out_path.parent
    blobs: dict[str, bytes] = {}
    for im in images:
        msg = file_name_problem(im.file_name)
        if msg:
            raise ValueError(f"image {im.file_name!r}: {msg}")
        if not write_images:
            continue
        if im.image is not None:
            hu = float((im.meta or {}).get("hu_scale", HU_SCALE))
            blobs[im.file_name] = png_bytes(to_uint16(im.image, hu))
        elif copy_from is not None:
            src = Path(copy_from) / im.file_name
            dst = root / im.file_name
            if src.is_file() and src.resolve() != dst.resolve():
                blobs[im.file_name] = src.read_bytes()
    sizes = {k: len(v) for k, v in blobs.items()}
    for im in images:
        if im.file_name not in sizes and (root / im.file_name).is_file():
            sizes[im.file_name] = (root / im.file_name).stat().st_size
    data = to_via(images, class_attribute, version, sizes, project_name=out_path.stem)
    with AtomicBatch() as batch:
        for name, blob in blobs.items():
            batch.add(root / name, blob)
        batch.add(out_path, json.dumps(data, indent=1).encode("utf-8"))
    return out_path
