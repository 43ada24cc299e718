"""The 17 vertebra classes T1..L5, their colours, and public label-map conventions.

Class ids: 0 is background, 1..17 are T1..T12, L1..L5 in anatomical order (superior to
inferior). The model has 18 classes (background + 17). COCO category ids are the same
1..17.

Class sets (:class:`ClassSet`): the classes a project trains and predicts. ``"paper"``
is the 17 classes above (the default). ``"extended"`` adds the landmarks C7 (above T1)
and S1 (the sacrum, below L5) and the transitional levels T13 and L6. Every level keeps
one id in every set (:data:`LEVEL_IDS`: T1..L5 are 1..17 as always, C7 18, T13 19, L6 20,
S1 21), so a file written with the paper set is valid under the extended one, and a
colour or name never changes meaning. The module-level functions (:func:`class_id`,
:func:`class_name`, :func:`class_colour`, :func:`supercategory`) name every level of
every set; which levels a model has is the class set's business (checked where a dataset
meets a model). The anatomical order is the set's ``levels``, not
the id order (C7 is id 18 but comes first): sort by :meth:`ClassSet.rank`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CLASS_SETS",
    "CONVENTIONS",
    "CONVENTION_IDS",
    "EXTENDED",
    "LABEL_CONVENTIONS",
    "LEVEL_IDS",
    "NUM_CLASSES",
    "PAPER",
    "SOURCE_LEVELS",
    "VERTEBRAE",
    "ClassSet",
    "class_colour",
    "class_colours_rgba",
    "class_id",
    "class_name",
    "class_set_for",
    "class_set_of_size",
    "get_class_set",
    "guess_convention",
    "level_name",
    "load_convention",
    "resolve_convention",
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
    """Stable class id of a level name: ``"T12"`` or ``"l1"`` (1..17), also the extended
    levels C7, T13, L6, S1 (``"sacrum"``) (18..21; see :data:`LEVEL_IDS`)."""
    key = _canonical(name)
    if key not in LEVEL_IDS:
        raise ValueError(
            f"unknown vertebra {name!r}; expected one of T1..T12, L1..L5 (or C7, T13, L6, S1)"
        )
    return LEVEL_IDS[key]


def class_name(cid: int) -> str:
    """Level name of a stable class id (1..17: T1..L5; 18..21: C7, T13, L6, S1)."""
    try:
        return _LEVEL_NAMES[int(cid)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"class id {cid} is outside 1..{len(LEVEL_IDS)}") from None


def supercategory(cid: int) -> str:
    """``"thoracic"``, ``"lumbar"``, ``"cervical"`` (C7) or ``"sacral"`` (S1)."""
    return _REGION[class_name(cid)[0]]


def class_colour(cid: int) -> str:
    """Hex colour of a class id (the same in every class set)."""
    name = class_name(cid)
    return _EXTRA_COLOURS.get(name) or _COLOURS_HEX[int(cid) - 1]


def class_colours_rgba() -> dict[int, tuple[float, float, float, float]]:
    """{class id: RGBA in 0..1} for every level of every set, background (0) transparent."""
    out: dict[int, tuple[float, float, float, float]] = {0: (0.0, 0.0, 0.0, 0.0)}
    for i in sorted(_LEVEL_NAMES):
        h = class_colour(i)
        out[i] = (int(h[1:3], 16) / 255, int(h[3:5], 16) / 255, int(h[5:7], 16) / 255, 1.0)
    return out


#: Label-map conventions: {name: {source id: class id}}.
CONVENTIONS: dict[str, dict[int, int]] = {
    # VerSe: 8..19 T1..T12, 20..24 L1..L5
    "verse": {8 + i: 1 + i for i in range(17)},
    # TotalSegmentator v2 "total": 27 L5 .. 31 L1, 32 T12 .. 43 T1
    "totalsegmentator": {43 - i: 1 + i for i in range(17)},
    # the values are the class ids already
    "class ids": {1 + i: 1 + i for i in range(17)},
}
#: Every id a named convention defines (vertebrae and the other structures: VerSe's 27
#: coccyx, TotalSegmentator v2's 117 ``total`` classes), so that ids a convention does
#: not know can be named.
CONVENTION_IDS: dict[str, range] = {
    "verse": range(1, 29),
    "totalsegmentator": range(1, 118),
    "class ids": range(1, 22),
}


def _read_label_table(
    path: str | os.PathLike, known: Mapping[str, Any], target: str, values: str
) -> dict:
    """The JSON object of a label-table file (ValueError naming the file otherwise);
    ``known`` are the convention names the message lists."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(
            f"unknown label convention {str(path)!r}: use one of "
            f"{', '.join(known)} or a JSON file mapping ids to {target}"
        )
    try:
        table = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from e
    if not isinstance(table, dict):
        raise ValueError(f"{p}: expected a JSON object mapping label ids to {values}")
    return table


def load_convention(
    convention: str | os.PathLike | Mapping, class_set: str | ClassSet | None = None
) -> dict[int, int]:
    """A {source id: class id} table from a convention name, a mapping or a JSON file.

    A JSON table maps source ids to vertebra names or class ids, e.g.
    ``{"27": "L5", "28": "L4"}``; ids whose value is not a vertebra T1..L5 are ignored
    (so a dataset's full label list, e.g. with "sacrum" or "C7", can be given as is).
    With ``class_set`` (a name or a :class:`ClassSet`) the table maps to that set's
    classes instead: levels outside the set are ignored (e.g. C7 and T13 for the paper
    set), ``"sacrum"`` is the extended set's S1.
    """
    if class_set is not None:
        return _load_convention_for(convention, get_class_set(class_set))
    if isinstance(convention, Mapping):
        table = convention
    else:
        key = str(convention).lower()
        if key in CONVENTIONS:
            return dict(CONVENTIONS[key])
        table = _read_label_table(convention, CONVENTIONS, "T1..L5", "vertebra names")
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
    label_array: np.ndarray,
    convention: str | os.PathLike | Mapping = "totalsegmentator",
    class_set: str | ClassSet | None = None,
) -> np.ndarray:
    """Map a label array of some convention to class ids 0..17 (uint8); others become 0.

    With ``class_set``, to that set's class ids (0..21 for the extended set).
    """
    table = load_convention(convention, class_set)
    lut_size = max(int(label_array.max(initial=0)), max(table)) + 1
    lut = np.zeros(lut_size, np.uint8)
    for src, cid in table.items():
        if src >= 0:
            lut[src] = cid
    arr = np.asarray(label_array)
    if arr.min(initial=0) < 0:
        arr = np.where(arr < 0, 0, arr)
    return lut[arr]


# ----------------------------------------------------------------------------- class sets

#: Stable class id of every level any class set may hold: T1..L5 keep 1..17 (the paper's
#: classes), the extended set's levels follow. An id means the same level in every set.
LEVEL_IDS: dict[str, int] = {
    **{n: i for i, n in enumerate(VERTEBRAE, start=1)},
    "C7": 18,
    "T13": 19,
    "L6": 20,
    "S1": 21,
}
_LEVEL_NAMES: dict[int, str] = {i: n for n, i in LEVEL_IDS.items()}
#: Other spellings accepted for a level name (upper case).
_ALIASES = {"SACRUM": "S1", "S": "S1"}
_EXTRA_COLOURS = {"C7": "#393b79", "T13": "#e7ba52", "L6": "#ad494a", "S1": "#637939"}
_REGION = {"C": "cervical", "T": "thoracic", "L": "lumbar", "S": "sacral"}

#: Level names used by public label maps, {source: {source id: level name}} (levels only).
#: VerSe (Sekuboyina et al. 2021, and the TPTBox json beside tests/data/tptbox-l3): 1..7
#: C1..C7, 8..19 T1..T12, 20..24 L1..L5, 25 L6, 26 sacrum, 28 T13. TotalSegmentator v2
#: ``total`` task: 25 sacrum, 26 vertebrae_S1, 27..31 L5..L1, 32..43 T12..T1, 44..50
#: C7..C1; it has no T13 or L6 class (a transitional spine gets 12 + 5 names). "class ids":
#: the values are the stable :data:`LEVEL_IDS` already.
SOURCE_LEVELS: dict[str, dict[int, str]] = {
    "verse": {
        **{i: f"C{i}" for i in range(1, 8)},
        **{7 + i: f"T{i}" for i in range(1, 13)},
        **{19 + i: f"L{i}" for i in range(1, 6)},
        25: "L6",
        26: "sacrum",
        28: "T13",
    },
    "totalsegmentator": {
        25: "sacrum",
        26: "S1",
        **{32 - i: f"L{i}" for i in range(1, 6)},
        **{44 - i: f"T{i}" for i in range(1, 13)},
        **{51 - i: f"C{i}" for i in range(1, 8)},
    },
    "class ids": dict(_LEVEL_NAMES),  # the values are the stable level ids already
}


def _canonical(name: str) -> str:
    key = str(name).strip().upper()
    if key.startswith("VERTEBRAE_"):
        key = key[len("VERTEBRAE_") :]
    return _ALIASES.get(key, key)


def level_name(cid: int) -> str:
    """Level name of a stable class id of any class set (1..21: T1..L5, C7, T13, L6, S1)."""
    try:
        return _LEVEL_NAMES[int(cid)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"class id {cid} is not a vertebra level (1..{len(LEVEL_IDS)})") from None


@dataclass(frozen=True)
class ClassSet:
    """The vertebra classes of a project: names in anatomical order, ids, colours.

    ``levels`` runs superior to inferior; ``ids`` are the stable :data:`LEVEL_IDS` of
    those levels and must be exactly 1..K (K = number of levels), so that the model's
    label index is the class id; ``colours`` are hex strings, one per level.
    """

    name: str
    levels: tuple[str, ...]
    ids: tuple[int, ...]
    colours: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.levels)
        if not (len(self.ids) == len(self.colours) == n) or n == 0:
            raise ValueError(f"class set {self.name!r}: levels, ids and colours differ in length")
        if sorted(self.ids) != list(range(1, n + 1)):
            raise ValueError(f"class set {self.name!r}: ids must be exactly 1..{n}")
        for lv, i in zip(self.levels, self.ids, strict=True):
            if LEVEL_IDS.get(lv) != i:
                raise ValueError(f"class set {self.name!r}: {lv} must have id {LEVEL_IDS.get(lv)}")

    @property
    def num_classes(self) -> int:
        """Number of model classes including background."""
        return len(self.levels) + 1

    def class_id(self, name: str) -> int:
        """Class id of a level name (case-insensitive; ``"sacrum"`` is S1)."""
        key = _canonical(name)
        if key not in self.levels:
            raise ValueError(
                f"unknown vertebra {name!r} in the {self.name} class set; expected one of "
                f"{', '.join(self.levels)}"
            )
        return LEVEL_IDS[key]

    def class_name(self, cid: int) -> str:
        """Level name of a class id of this set."""
        if int(cid) not in self.ids:
            raise ValueError(
                f"class id {cid} is not in the {self.name} class set (1..{len(self.ids)})"
            )
        return _LEVEL_NAMES[int(cid)]

    def rank(self, cid: int) -> int:
        """Anatomical position (0 = most superior) of a class id in this set."""
        return self.levels.index(self.class_name(cid))

    def ids_in_order(self) -> tuple[int, ...]:
        """The class ids sorted superior to inferior."""
        return tuple(LEVEL_IDS[lv] for lv in self.levels)

    def supercategory(self, cid: int) -> str:
        """``cervical``, ``thoracic``, ``lumbar`` or ``sacral``."""
        return _REGION[self.class_name(cid)[0]]

    def colour(self, cid: int) -> str:
        """Hex colour of a class id."""
        self.class_name(cid)
        return self.colours[self.ids.index(int(cid))]

    def colours_rgba(self) -> dict[int, tuple[float, float, float, float]]:
        """{class id: RGBA in 0..1} for every class, background (0) transparent."""
        out: dict[int, tuple[float, float, float, float]] = {0: (0.0, 0.0, 0.0, 0.0)}
        for i, h in zip(self.ids, self.colours, strict=True):
            out[i] = (int(h[1:3], 16) / 255, int(h[3:5], 16) / 255, int(h[5:7], 16) / 255, 1.0)
        return out

    def coco_categories(self) -> list[dict]:
        """COCO categories ``{id, name, supercategory}`` by class id (1..K)."""
        return [
            {"id": i, "name": self.class_name(i), "supercategory": self.supercategory(i)}
            for i in sorted(self.ids)
        ]

    def category_map(self, categories: list[dict]) -> dict[int, int]:
        """{COCO category id: class id} of a COCO ``categories`` list, matched by name.

        Categories that are not levels of this set raise ValueError naming them.
        """
        out: dict[int, int] = {}
        bad = []
        for c in categories:
            try:
                out[int(c["id"])] = self.class_id(str(c["name"]))
            except (KeyError, TypeError, ValueError):
                bad.append(repr(c.get("name") if isinstance(c, dict) else c))
        if bad:
            raise ValueError(
                f"categories {', '.join(bad)} are not levels of the {self.name} class set "
                f"({', '.join(self.levels)}); choose the class set that holds them"
            )
        return out

    def convention(self, convention: str | os.PathLike | Mapping) -> dict[int, int]:
        """{source id: class id} of a label convention for this set (see load_convention)."""
        return load_convention(convention, self)

    def to_class_map(
        self, label_array: np.ndarray, convention: str | os.PathLike | Mapping = "totalsegmentator"
    ) -> np.ndarray:
        """A label array mapped to this set's class ids (uint8, others 0)."""
        return to_class_map(label_array, convention, self)


#: The paper's 17 classes T1..L5 (Wang et al. 2020): today's ids and colours. Default.
PAPER = ClassSet("paper", VERTEBRAE, tuple(range(1, 18)), _COLOURS_HEX)
_EXT_LEVELS = ("C7", *VERTEBRAE[:12], "T13", *VERTEBRAE[12:], "L6", "S1")
#: Landmarks C7 (above T1) and S1 (the sacrum, below L5) and the transitional T13, L6.
EXTENDED = ClassSet(
    "extended",
    _EXT_LEVELS,
    tuple(LEVEL_IDS[lv] for lv in _EXT_LEVELS),
    tuple(_EXTRA_COLOURS.get(lv) or _COLOURS_HEX[LEVEL_IDS[lv] - 1] for lv in _EXT_LEVELS),
)
#: The class sets by name.
CLASS_SETS: dict[str, ClassSet] = {"paper": PAPER, "extended": EXTENDED}


def get_class_set(class_set: str | ClassSet | None = None) -> ClassSet:
    """A :class:`ClassSet` from its name (``"paper"``, ``"extended"``); None is the paper set."""
    if class_set is None:
        return PAPER
    if isinstance(class_set, ClassSet):
        return class_set
    key = str(class_set).strip().lower()
    if key not in CLASS_SETS:
        raise ValueError(f"unknown class set {class_set!r}: use one of {', '.join(CLASS_SETS)}")
    return CLASS_SETS[key]


def class_set_of_size(n_levels: int) -> ClassSet:
    """The shipped class set with ``n_levels`` classes (a model's logits minus background,
    the width of its class probabilities): 17 paper, 21 extended."""
    for cs in CLASS_SETS.values():
        if len(cs.ids) == int(n_levels):
            return cs
    raise ValueError(f"no class set has {n_levels} classes")


def class_set_for(class_ids) -> ClassSet:
    """The first shipped class set (paper, then extended) holding every id of ``class_ids``
    (what a file writer uses for its category list when no set is named)."""
    ids = {int(i) for i in class_ids}
    for cs in CLASS_SETS.values():
        if ids <= set(cs.ids):
            return cs
    bad = sorted(ids - set(EXTENDED.ids))
    raise ValueError(f"class ids {bad} are not vertebra levels (1..{len(LEVEL_IDS)})")


def _load_convention_for(convention: str | os.PathLike | Mapping, cs: ClassSet) -> dict[int, int]:
    """load_convention for a class set: source ids -> the set's class ids, by level name."""
    if isinstance(convention, Mapping):
        table, where = convention, "the label table"
    else:
        key = str(convention).lower()
        if key in SOURCE_LEVELS:
            table, where = SOURCE_LEVELS[key], key
        else:
            table = _read_label_table(convention, SOURCE_LEVELS, "level names", "level names")
            where = str(Path(convention))
    out: dict[int, int] = {}
    for k, v in table.items():
        try:
            src = int(k)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label table key {k!r} is not an integer id") from None
        if isinstance(v, str):
            if _canonical(v) in cs.levels:
                out[src] = LEVEL_IDS[_canonical(v)]
        else:
            level_name(v)  # a level id of some set (ValueError otherwise)
            if int(v) in cs.ids:  # levels outside the set are dropped, as names are
                out[src] = int(v)
    if not out:
        raise ValueError(f"{where}: maps no id to a level of the {cs.name} class set")
    return out


#: Choices of a label-convention picker: "auto" (:func:`resolve_convention`), "class ids"
#: (the values are class ids already) and the named conventions of :data:`CONVENTIONS`.
LABEL_CONVENTIONS = ("auto", "class ids", "totalsegmentator", "verse")


def guess_convention(array: np.ndarray) -> str:
    """Which label convention a 3D label array most likely uses.

    "class ids" when every value is in 0..17; "totalsegmentator" when values above 24
    (TotalSegmentator's vertebrae are 27..50) occur; "verse" otherwise.
    """
    hi = int(np.max(array, initial=0))
    if hi < NUM_CLASSES:
        return "class ids"
    return "totalsegmentator" if hi > 24 else "verse"


def resolve_convention(choice: str, array: np.ndarray, hint: str | None = None) -> str:
    """The convention a picker's ``choice`` (:data:`LABEL_CONVENTIONS`) names for the
    label ``array``: for "auto" the ``hint`` (e.g. a layer's metadata) or
    :func:`guess_convention`; "class ids" also when spelled "class_ids"."""
    if choice == "auto":
        choice = hint or guess_convention(array)
    return "class ids" if choice == "class_ids" else choice
