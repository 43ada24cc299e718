"""The vertebra Shapes layer's features and its annotations (pandas / numpy only).

Each shape of a "vertebrae <mip>" layer carries the features ``class_id`` (1..17, or
18..21 for the extended set's C7, T13, L6, S1), ``vertebra`` ("T1".."L5", ...),
``instance`` (shapes that share it are parts of one vertebra), ``score`` (NaN: none)
and ``source`` ("hand", "model", "3D labels").
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from napari_vertebra.annotation.types import VertebraAnnotation
from napari_vertebra.core.labels import LEVEL_IDS, class_name

__all__ = ["COLUMNS", "FACE_ALPHA", "empty_features", "hex_rgba", "shapes_to_annotations", "typed"]

FACE_ALPHA = 0.25
#: Feature columns of the vertebra Shapes layer.
COLUMNS = ("class_id", "vertebra", "instance", "score", "source")
_HAS_SOURCE = "source" in {f.name for f in dataclasses.fields(VertebraAnnotation)}
#: Class ids of every level of every class set.
_LEVELS = frozenset(LEVEL_IDS.values())


def hex_rgba(hex_colour: str, alpha: float = 1.0) -> np.ndarray:
    """RGBA (0..1) of a "#rrggbb" colour with ``alpha``."""
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [alpha])


def _ellipse_polygon(corners: np.ndarray, n: int = 32) -> np.ndarray:
    centre = corners.mean(axis=0)
    a = (corners[1] - corners[0]) / 2
    b = (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def shapes_to_annotations(layer: Any) -> tuple[list[VertebraAnnotation], list[str]]:
    """The annotations of a vertebra Shapes layer and messages about unusable shapes.

    Shapes sharing ``instance`` become the parts of one annotation (ordered by first
    appearance); its ``score`` and ``source`` come from the features of its first part.
    Rectangles count as polygons, ellipses are sampled; paths and lines are kept as their
    vertices (and reported).
    """
    msgs: list[str] = []
    feats = layer.features
    groups: dict[Any, tuple[int, list[np.ndarray]]] = {}
    extras: dict[Any, dict] = {}
    for i, (data, stype) in enumerate(zip(layer.data, layer.shape_type, strict=True)):
        try:
            cid = int(feats["class_id"].iloc[i])
            class_name(cid)  # raises for 0 / out of range
        except (KeyError, ValueError, TypeError, IndexError):
            msgs.append(f"shape {i + 1}: no vertebra class (select it, pick a class, Shift+C)")
            continue
        pts = np.asarray(data, float)[:, -2:]
        if stype == "ellipse":
            pts = _ellipse_polygon(pts)
        elif stype in ("path", "line", "polyline"):
            msgs.append(f"{class_name(cid)}: shape {i + 1} is a {stype}, not a closed polygon")
        inst = feats["instance"].iloc[i] if "instance" in feats else i
        key = (cid, -1 - i) if pd.isna(inst) or int(inst) <= 0 else (cid, int(inst))
        if key not in groups:
            extras[key] = _row_extras(feats, i)
        groups.setdefault(key, (cid, []))[1].append(pts)
    out = [VertebraAnnotation(cid, polys, **extras[k]) for k, (cid, polys) in groups.items()]
    return out, msgs


def _row_extras(feats: pd.DataFrame, i: int) -> dict:
    """``score`` / ``source`` keyword arguments of an annotation from feature row ``i``."""
    out: dict = {}
    if "score" in feats:
        score = feats["score"].iloc[i]
        out["score"] = None if pd.isna(score) else float(score)
    if "source" in feats and _HAS_SOURCE:
        source = feats["source"].iloc[i]
        if isinstance(source, str) and source:
            out["source"] = source
    return out


def empty_features() -> pd.DataFrame:
    """The features of a layer without shapes."""
    return typed(pd.DataFrame({c: [] for c in COLUMNS}))


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Features with plain dtypes: class_id / instance int (0 = unknown), vertebra str,
    score float (NaN = none), source str ("hand" when unknown)."""
    n = len(df)
    cid = pd.to_numeric(df["class_id"], errors="coerce").fillna(0).astype(int).to_numpy()
    names = [class_name(c) if c in _LEVELS else "?" for c in cid]
    inst = pd.to_numeric(df["instance"], errors="coerce").fillna(0).astype(int).to_numpy()
    score = (
        pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=float)
        if "score" in df
        else np.full(n, np.nan)
    )
    source = (
        [v if isinstance(v, str) and v else "hand" for v in df["source"]]
        if "source" in df
        else ["hand"] * n
    )
    return pd.DataFrame(
        {
            "class_id": cid,
            "vertebra": np.asarray(names, dtype=object),
            "instance": inst,
            "score": score,
            "source": np.asarray(source, dtype=object),
        }
    )
