"""The image files of the annotation formats: 16-bit PNGs of windowed HU.

A MIP is stored as uint16 ``round(value * hu_scale)`` clipped to 0..65535, with
``hu_scale`` (default :data:`HU_SCALE` = 40, i.e. 1/40 HU steps, values up to 1638 HU)
kept beside it (the COCO image entry, the VIA file attributes, the project index);
:func:`read_image` divides by it again, so a MIP of windowed HU comes back as float HU
(to 1/40 HU). Other images (8-bit, colour) are read as grey values.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from ._atomic import atomic_write_bytes, png_bytes

__all__ = ["HU_SCALE", "read_image", "to_uint16", "write_mip_png"]

#: Default scale of the 16-bit PNG images: stored = round(HU * HU_SCALE).
HU_SCALE = 40.0


def to_uint16(image: np.ndarray, hu_scale: float) -> np.ndarray:
    """The stored pixels of a 2D float image: ``round(image * hu_scale)`` as uint16,
    clipped to 0..65535 (NaN -> 0, infinities -> the ends)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=65535.0 / hu_scale, neginf=0.0)
    return np.clip(np.rint(a * hu_scale), 0, 65535).astype(np.uint16)


def write_mip_png(path: str | os.PathLike, mip: np.ndarray, hu_scale: float = HU_SCALE) -> Path:
    """Write a 2D float image (windowed HU) as a 16-bit PNG: ``round(mip * hu_scale)``.

    Values are clipped to 0..65535 / hu_scale. The write is atomic.
    """
    return atomic_write_bytes(path, png_bytes(to_uint16(mip, hu_scale)))


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
