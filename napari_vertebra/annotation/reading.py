"""Steps shared by the COCO and VIA readers and writers.

The readers collect every problem of a file before refusing it: the helpers here append
their messages to the reader's ``errors`` list and return None for what they refuse.
Both formats put the centre of pixel (row r, col c) at (x, y) = (c + 0.5, r + 0.5):
:func:`rows_cols` and :func:`pixel_xy` shift by half a pixel at this boundary.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .image_files import read_image

__all__ = ["file_found", "is_int", "is_number", "load_pixels", "pixel_xy", "rows_cols"]


def is_int(v: object) -> bool:
    """True for an integer that is not a bool (ids are matched exactly: ``true`` is not 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object, finite: bool = True) -> bool:
    """True for an int or float that is not a bool (and, with ``finite``, not NaN / inf)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    return not finite or math.isfinite(v)


def rows_cols(xy: np.ndarray) -> np.ndarray:
    """(N, 2) (row, col) px of (N, 2) (x, y) file coordinates."""
    return np.stack([xy[:, 1] - 0.5, xy[:, 0] - 0.5], axis=1)


def pixel_xy(rc: np.ndarray) -> np.ndarray:
    """(N, 2) (x, y) file coordinates of (N, 2) (row, col) px."""
    return np.stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5], axis=1)


def file_found(path: Path, where: str, errors: list[str], missing: str = "image file") -> bool:
    """Whether ``path`` is a file; if not, ``f"{where}: {missing} {path} not found"`` goes
    to ``errors``."""
    if path.is_file():
        return True
    errors.append(f"{where}: {missing} {path} not found")
    return False


def load_pixels(
    path: Path,
    hu_scale: object,
    where: str,
    errors: list[str],
    missing: str = "image file",
) -> np.ndarray | None:
    """The pixels of the image file ``path`` (divided by ``hu_scale`` when given), or
    None with the problem in ``errors``: the file is missing (see :func:`file_found`) or
    cannot be read, or ``hu_scale`` is not a number."""
    if not file_found(path, where, errors, missing):
        return None
    try:
        return read_image(path, hu_scale=float(hu_scale) if hu_scale is not None else None)
    except (ValueError, TypeError) as e:
        errors.append(f"{where}: {e}")
        return None
