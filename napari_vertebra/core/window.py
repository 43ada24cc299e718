"""The HU window: keep the bone's range of Hounsfield units, zero elsewhere."""

from __future__ import annotations

import numpy as np

from ._slices import by_slices
from .volume import Volume

__all__ = ["window_hu"]


def window_hu(volume: Volume, lo: float = 100.0, hi: float = 1500.0) -> Volume:
    """Keep HU values in [lo, hi] and set everything else to 0 (HU).

    The voxel type is kept for signed integer and float CT (int16 HU stays int16: half
    the memory of float32 on a 1 mm grid); other types become float32.
    """
    if hi <= lo:
        raise ValueError(f"window upper bound {hi} must exceed the lower bound {lo}")
    arr = volume.array
    kind = arr.dtype.kind
    out = np.empty(arr.shape, arr.dtype if kind in "if" else np.float32)

    def window_slices(z0: int, z1: int) -> None:
        for z in range(z0, z1):
            s = arr[z]
            np.multiply(s, (s >= lo) & (s <= hi), out=out[z], casting="unsafe")

    by_slices(window_slices, arr.shape[0])
    return volume.with_array(out)
