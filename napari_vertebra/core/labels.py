"""The 17 vertebra classes T1..L5, their colours, and public label-map conventions.

Class ids: 0 is background, 1..17 are T1..T12, L1..L5 in anatomical order (superior to
inferior). The model has 18 classes (background + 17). COCO category ids are the same
1..17.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "CONVENTIONS",
    "NUM_CLASSES",
    "VERTEBRAE",
    "class_colour",
    "class_colours_rgba",
    "class_id",
    "class_name",
    "load_convention",
    "supercategory",
    "to_class_map",
]

#: Vertebra names in anatomical order, superior to inferior; class id = index + 1.
VERTEBRAE: tuple[str, ...] = tuple(f"T{i}" for i in range(1, 13)) + tuple(
    f"L{i}" for i in range(1, 6)
)
#: Number of model classes including background.
NUM_CLASSES = len(VERTEBRAE) + 1

# One colour per class, neighbours clearly different (alternating hue families).
_COLOURS_HEX = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#aec7e8", "#ffbb78", "#98df8a",
    "#ff9896", "#c5b0d5", "#f7b6d2", "#dbdb8d", "#9edae5",
)  # fmt: skip


def class_id(name: str) -> int:
    """Class id (1..17) of a vertebra name such as ``"T12"`` or ``"l1"``."""
    key = name.strip().upper()
    try:
        return VERTEBRAE.index(key) + 1
    except ValueError:
        raise ValueError(f"unknown vertebra {name!r}; expected one of T1..T12, L1..L5") from None


def class_name(cid: int) -> str:
    """Vertebra name of a class id (1..17)."""
    if not 1 <= int(cid) <= len(VERTEBRAE):
        raise ValueError(f"class id {cid} is outside 1..{len(VERTEBRAE)}")
    return VERTEBRAE[int(cid) - 1]


def supercategory(cid: int) -> str:
    """``"thoracic"`` for T1..T12, ``"lumbar"`` for L1..L5."""
    return "thoracic" if class_name(cid).startswith("T") else "lumbar"


def class_colour(cid: int) -> str:
    """Hex colour of a class id (1..17)."""
    class_name(cid)
    return _COLOURS_HEX[int(cid) - 1]


def class_colours_rgba() -> dict[int, tuple[float, float, float, float]]:
    """{class id: RGBA in 0..1} for every class, background (0) transparent."""
    out: dict[int, tuple[float, float, float, float]] = {0: (0.0, 0.0, 0.0, 0.0)}
    for i, h in enumerate(_COLOURS_HEX, start=1):
        out[i] = (int(h[1:3], 16) / 255, int(h[3:5], 16) / 255, int(h[5:7], 16) / 255, 1.0)
    return out


#: Label-map conventions: {name: {source id: class id}}.
CONVENTIONS: dict[str, dict[int, int]] = {
    # VerSe: 8..19 T1..T12, 20..24 L1..L5
    "verse": {8 + i: 1 + i for i in range(17)},
    # TotalSegmentator v2 "total": 27 L5 .. 31 L1, 32 T12 .. 43 T1
    "totalsegmentator": {43 - i: 1 + i for i in range(17)},
}


def load_convention(convention: str | os.PathLike | Mapping) -> dict[int, int]:
    """A {source id: class id} table from a convention name, a mapping or a JSON file.

    A JSON table maps source ids to vertebra names or class ids, e.g.
    ``{"27": "L5", "28": "L4"}``; ids whose value is not a vertebra T1..L5 are ignored
    (so a dataset's full label list, e.g. with "sacrum" or "C7", can be given as is).
    """
    if isinstance(convention, Mapping):
        table = convention
    else:
        key = str(convention).lower()
        if key in CONVENTIONS:
            return dict(CONVENTIONS[key])
        p = Path(convention)
        if not p.is_file():
            raise ValueError(
                f"unknown label convention {convention!r}: use one of "
                f"{', '.join(CONVENTIONS)} or a JSON file mapping ids to T1..L5"
            )
        try:
            table = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from e
        if not isinstance(table, dict):
            raise ValueError(f"{p}: expected a JSON object mapping label ids to vertebra names")
    out: dict[int, int] = {}
    for k, v in table.items():
        try:
            src = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"label table key {k!r} is not an integer id") from None
        if isinstance(v, str):
            if v.strip().upper() not in VERTEBRAE:
                continue
            out[src] = class_id(v)
        else:
            out[src] = int(class_name(int(v)) and int(v))
    if not out:
        raise ValueError("the label table maps no id to a vertebra T1..L5")
    return out


def to_class_map(
    label_array: np.ndarray, convention: str | os.PathLike | Mapping = "totalsegmentator"
) -> np.ndarray:
    """Map a label array of some convention to class ids 0..17 (uint8); others become 0."""
    table = load_convention(convention)
    lut_size = max(int(label_array.max(initial=0)), max(table)) + 1
    lut = np.zeros(lut_size, np.uint8)
    for src, cid in table.items():
        if src >= 0:
            lut[src] = cid
    arr = np.asarray(label_array)
    if arr.min(initial=0) < 0:
        arr = np.where(arr < 0, 0, arr)
    return lut[arr]
