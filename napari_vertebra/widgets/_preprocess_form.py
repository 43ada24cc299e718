"""The parameter form of 'Preprocess CT': one magicgui field per PreprocessParams field.

Labels, ranges and the step headings live here; tooltips are the ``#:`` comments of the
dataclass fields.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox

__all__ = ["ADVANCED", "STEP_TITLES", "field_docs", "make_field"]

#: Fields shown under "advanced" (the others are always visible).
ADVANCED = {
    "interpolator",
    "canal_max_elongation",
    "canal_outlier_mm",
    "min_cluster_separation_mm",
    "kmeans_seed",
    "kmeans_n_init",
}
#: (min, max, step) of the numeric fields; others fall back on their unit.
_RANGES: dict[str, tuple[float, float, float]] = {
    "spacing_mm": (0.25, 5.0, 0.25),
    "hu_min": (-1024.0, 3000.0, 10.0),
    "hu_max": (-1000.0, 4000.0, 10.0),
    "canal_r_min_mm": (0.5, 40.0, 0.5),
    "canal_r_max_mm": (1.0, 60.0, 0.5),
    "canal_max_elongation": (1.0, 20.0, 0.1),
    "n_clusters": (1, 10, 1),
    "kmeans_seed": (0, 1_000_000, 1),
    "kmeans_n_init": (1, 100, 1),
}
_LABELS = {
    "spacing_mm": "voxel size (mm)",
    "hu_min": "HU window min",
    "hu_max": "HU window max",
    "canal_r_min_mm": "canal Rmin (mm)",
    "canal_r_max_mm": "canal Rmax (mm)",
    "n_clusters": "k-means k",
    "crop_margin_lr_mm": "margin left-right (mm)",
    "crop_margin_anterior_mm": "margin anterior (mm)",
    "crop_margin_posterior_mm": "margin posterior (mm)",
}
STEP_TITLES = {
    "resample": "1 resample",
    "window": "2 HU window",
    "canal": "3 spinal canal + k-means",
    "crop": "4 crop",
    "mip": "5 sagittal MIP",
}


def field_docs(cls: type) -> dict[str, str]:
    """The ``#:`` comments above each dataclass field (used as tooltips)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in src.splitlines():
        s = line.strip()
        if s.startswith("#:"):
            pending.append(s[2:].strip())
            continue
        m = re.match(r"^(\w+)\s*:", s)
        if m and pending:
            docs[m.group(1)] = " ".join(pending)
        if not s.startswith("#"):
            pending = []
    # a comment block may cover several fields written one after another
    names = [f.name for f in dataclasses.fields(cls)]
    last = ""
    for n in names:
        if n in docs:
            last = docs[n]
        elif last:
            docs[n] = last
    return docs


def make_field(f: dataclasses.Field, hint: Any, doc: str) -> Any:
    """The value widget of dataclass field ``f`` (type ``hint``, tooltip ``doc``)."""
    label = _LABELS.get(f.name, f.name.replace("_mm", " (mm)").replace("_", " "))
    default = f.default
    if hint is bool or isinstance(default, bool):
        w = CheckBox(value=bool(default), label=label)
    elif hint is int or isinstance(default, int):
        lo, hi, step = _RANGES.get(f.name, (0, 1_000_000, 1))
        w = SpinBox(value=int(default), min=int(lo), max=int(hi), step=int(step), label=label)
    elif hint is float or isinstance(default, float):
        unit_default = (0.0, 500.0, 1.0) if f.name.endswith("_mm") else (-1e6, 1e6, 0.1)
        lo, hi, step = _RANGES.get(f.name, unit_default)
        w = FloatSpinBox(value=float(default), min=lo, max=hi, step=step, label=label)
    elif f.name == "interpolator":
        w = ComboBox(value=default, choices=["linear", "nearest", "bspline"], label=label)
    elif typing.get_origin(hint) is typing.Literal:
        w = ComboBox(value=default, choices=list(typing.get_args(hint)), label=label)
    else:
        w = LineEdit(value=str(default), label=label)
    if doc:
        w.tooltip = doc
    return w
