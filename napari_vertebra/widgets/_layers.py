"""Helpers shared by the widgets: layer geometry, class colours, in-place layer updates.

napari world coordinates are physical LPS millimetres in (z, y, x) order: a Volume's
layer gets ``scale=spacing`` and ``translate=origin[::-1]`` (``Volume.napari_kwargs``),
and its geometry is stored in ``layer.metadata["volume_geometry"]`` so that a widget
can rebuild the Volume (:func:`volume_from_layer`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vertebra.core.labels import LEVEL_IDS, class_colours_rgba, class_name
from napari_vertebra.core.volume import Volume

__all__ = [
    "BONE_CONTRAST",
    "GEOMETRY_KEY",
    "class_label_colormap",
    "class_label_features",
    "find_layer",
    "geometry_metadata",
    "layer_kwargs",
    "same_layer",
    "unwrap",
    "upsert_layer",
    "volume_from_layer",
]

#: metadata key holding {"spacing", "origin", "direction"} of a Volume layer.
GEOMETRY_KEY = "volume_geometry"
#: Default contrast limits (HU) for a CT shown for bone.
BONE_CONTRAST = (-200.0, 1500.0)


def geometry_metadata(volume: Volume) -> dict:
    """The minimal geometry of ``volume`` (spacing (z, y, x) mm, ITK origin, direction)."""
    return {
        GEOMETRY_KEY: {
            "spacing": [float(s) for s in volume.spacing],
            "origin": [float(o) for o in volume.origin],
            "direction": [float(d) for d in np.asarray(volume.direction).ravel()],
        }
    }


def layer_kwargs(volume: Volume, **extra: Any) -> dict:
    """Layer keyword arguments placing ``volume`` in napari, geometry in metadata."""
    meta = dict(extra.pop("metadata", {}) or {})
    meta.update(geometry_metadata(volume))
    return {**volume.napari_kwargs(), "metadata": meta, **extra}


def volume_from_layer(layer: Any) -> Volume:
    """Rebuild the :class:`Volume` of a 3D Image or Labels layer.

    Uses ``layer.metadata["volume_geometry"]`` when present, else the layer's scale and
    translate (identity direction). Raises ValueError for a layer that is not 3D.
    """
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise ValueError(
            f"layer {layer.name!r} is {data.ndim}D (shape {data.shape}); a CT volume must be 3D"
        )
    if getattr(layer, "rgb", False):
        raise ValueError(f"layer {layer.name!r} is an RGB image, not a CT volume")
    geo = (layer.metadata or {}).get(GEOMETRY_KEY)
    if geo:
        return Volume(
            array=data,
            spacing=tuple(geo["spacing"]),
            origin=tuple(geo["origin"]),
            direction=np.asarray(geo["direction"], float).reshape(3, 3),
        )
    scale = tuple(float(s) for s in layer.scale[-3:])
    translate = tuple(float(t) for t in layer.translate[-3:])
    return Volume(array=data, spacing=scale, origin=translate[::-1])


def class_label_colormap() -> Any:
    """A napari ``DirectLabelColormap``: class id 1..17 -> its class colour, 0 clear."""
    from napari.utils.colormaps import DirectLabelColormap

    colours = class_colours_rgba()
    color_dict: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0)}
    color_dict.update({int(k): tuple(v) for k, v in colours.items()})
    return DirectLabelColormap(color_dict=color_dict)


def class_label_features() -> dict:
    """Labels-layer features naming each class (shown in napari's status bar)."""
    n = len(LEVEL_IDS)  # every level of every class set (ids 1..21)
    return {
        "index": np.arange(n + 1),
        "vertebra": np.array(
            ["background", *(class_name(i) for i in range(1, n + 1))], dtype=object
        ),
    }


def unwrap(obj: Any) -> Any:
    """The napari object behind a ``PublicOnlyProxy`` (plugins get proxies), else ``obj``."""
    return getattr(obj, "__wrapped__", obj)


def same_layer(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same layer (through proxies)."""
    return a is not None and b is not None and unwrap(a) is unwrap(b)


def find_layer(viewer: Any, name: str, layer_type: str | None = None) -> Any:
    """The layer called ``name`` (of ``layer_type``, e.g. "Image") or None."""
    for layer in viewer.layers:
        if layer.name == name and (layer_type is None or type(layer).__name__ == layer_type):
            return layer
    return None


def upsert_layer(
    viewer: Any, name: str, data: Any, layer_type: str, **kwargs: Any
) -> tuple[Any, bool]:
    """Update the layer ``name`` in place (data and ``kwargs``) or add it.

    Returns ``(layer, added)``. Keyword arguments that cannot be set on an existing
    layer after creation are ignored for the update.
    """
    layer = find_layer(viewer, name, layer_type)
    if layer is None:
        add = getattr(viewer, f"add_{layer_type.lower()}")
        return add(data, name=name, **kwargs), True
    if layer_type == "Shapes":
        # replace every shape (their number and types may change)
        shape_type = kwargs.pop("shape_type", "polygon")
        layer.selected_data = set()
        layer.data = []
        if len(data):
            layer.add(list(data), shape_type=shape_type)
    else:
        layer.data = data
    for key in ("scale", "translate"):
        if key in kwargs:
            value = kwargs.pop(key)
            if len(value) == layer.ndim:
                setattr(layer, key, value)
    if "metadata" in kwargs:
        layer.metadata.update(kwargs.pop("metadata"))
    for key, value in kwargs.items():
        try:
            setattr(layer, key, value)
        except (AttributeError, TypeError, ValueError):
            pass
    layer.refresh()
    return layer, False
