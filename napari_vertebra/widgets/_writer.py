"""napari writer: an Image or Labels layer saved as a volume with its geometry.

A 3D layer is written through :func:`napari_vertebra.core.io.write_volume` with the
spacing / origin / direction kept in its metadata (or derived from scale and
translate); a 2D layer (e.g. a MIP) is written as a 2D image with its pixel spacing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_vertebra.core.io import write_volume

from ._layers import GEOMETRY_KEY
from ._status import error_message, notify

__all__ = ["layer_volume", "write_volume_layer"]


def layer_volume(data: Any, attributes: dict) -> Any:
    """The Volume of a 3D layer's data and attributes (``metadata``, scale, translate)."""
    from napari_vertebra.core.volume import Volume

    arr = np.asarray(data)
    geo = (attributes.get("metadata") or {}).get(GEOMETRY_KEY)
    if geo:
        return Volume(
            arr,
            spacing=tuple(geo["spacing"]),
            origin=tuple(geo["origin"]),
            direction=np.asarray(geo["direction"], float).reshape(3, 3),
        )
    scale = tuple(float(s) for s in (attributes.get("scale") or (1.0,) * 3)[-3:])
    translate = tuple(float(t) for t in (attributes.get("translate") or (0.0,) * 3)[-3:])
    return Volume(arr, spacing=scale, origin=translate[::-1])


def _write(path: Path, data: Any, attributes: dict) -> None:
    arr = np.asarray(data)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    if arr.ndim == 3:
        write_volume(layer_volume(arr, attributes), path)
        return
    if arr.ndim == 2:
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        scale = attributes.get("scale") or (1.0, 1.0)
        img.SetSpacing(tuple(float(s) for s in scale[-2:][::-1]))
        sitk.WriteImage(img, str(path), useCompression=True)
        return
    raise ValueError(f"{path}: can only save 2D or 3D layers, this one is {arr.ndim}D")


def write_volume_layer(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: save ``data`` to ``path``; returns the written paths.

    Errors show as a napari notification and return an empty list.
    """
    p = Path(os.fspath(path))
    if not p.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")):
        p = p.with_name(p.name + ".nii.gz")
    try:
        _write(p, data, attributes)
    except (ValueError, OSError, RuntimeError) as e:
        notify(f"could not save {p}: {error_message(e)}", "error")
        return []
    return [str(p)]
