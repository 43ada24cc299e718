"""Format detection and conversion between COCO and VIA annotation files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from ._io import read_json
from .coco import from_coco, is_coco, write_coco
from .types import AnnotatedImage
from .via import DEFAULT_ATTRIBUTE, ImageSize, from_via, is_via, write_via

__all__ = ["convert", "detect_format", "read_annotations"]


def detect_format(path: str | os.PathLike) -> str:
    """``"coco"``, ``"via2"`` or ``"via1"`` from a JSON file's content; ValueError else."""
    path = Path(path)
    data = read_json(path)
    if is_coco(data):
        return "coco"
    v = is_via(data)
    if v:
        return f"via{v}"
    raise ValueError(f"{path}: neither a COCO file nor a VIA project / region JSON")


def read_annotations(
    path: str | os.PathLike,
    class_attribute: str = DEFAULT_ATTRIBUTE,
    image_size: ImageSize = None,
    load_images: bool = False,
) -> tuple[str, list[AnnotatedImage]]:
    """Read a COCO or VIA file (format detected from the content): (format, images)."""
    path = Path(path)
    data = read_json(path)
    if is_coco(data):
        return "coco", from_coco(
            data, root=path.parent, load_images=load_images, check_files=False, source=path
        )
    v = is_via(data)
    if v:
        return f"via{v}", from_via(
            data, path.parent, class_attribute, image_size, load_images, source=path
        )
    raise ValueError(f"{path}: neither a COCO file nor a VIA project / region JSON")


def convert(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    to: str | None = None,
    class_attribute: str = DEFAULT_ATTRIBUTE,
    image_size: ImageSize = None,
    warn: Callable[[str], None] | None = None,
) -> Path:
    """Convert between COCO and VIA; returns the written JSON path.

    The input format is detected from the content. The output format is ``to``
    (``"coco"``, ``"via"`` = VIA 2 project, ``"via1"``) or, when None, from ``out_path``'s
    name: a name containing "via" gives VIA 2, anything else COCO. Image files found
    beside the input are copied beside the output. The input is validated (see
    ``docs/annotations.md``): what reading repaired (e.g. a polygon clipped to the image)
    goes to ``warn`` (default: a ``UserWarning``), one message per repair naming the
    file, image and annotation; anything refused raises ValueError and nothing is
    written.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    if to is None:
        to = "via" if "via" in out_path.name.lower() else "coco"
    to = to.lower()
    if to not in ("coco", "via", "via2", "via1"):
        raise ValueError(f"unknown output format {to!r}: use coco, via or via1")
    if out_path.suffix.lower() != ".json":
        raise ValueError(f"{out_path}: the output must be a .json file")
    _, images = read_annotations(in_path, class_attribute, image_size)
    for im in images:
        for note in im.warnings:
            if warn is None:
                warnings.warn(f"{in_path}: {note}", UserWarning, stacklevel=2)
            else:
                warn(f"{in_path}: {note}")
    if to == "coco":
        return write_coco(images, out_path.parent, out_path.name, copy_from=in_path.parent)
    version = 1 if to == "via1" else 2
    return write_via(images, out_path, class_attribute, version, copy_from=in_path.parent)
