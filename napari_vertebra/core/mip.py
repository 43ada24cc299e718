"""The sagittal maximum intensity projection (MIP) of the cropped volume."""

from __future__ import annotations

import numpy as np

from .volume import Volume

__all__ = ["sagittal_mip"]


def sagittal_mip(cropped: Volume | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum over x (left-right) of a (z, y, x) LPS volume.

    Returns (mip float32, argmax_x int32), both (nz, ny) with row 0 the most superior
    slice and column 0 the most anterior; ``argmax_x`` is the x index (of the given
    volume) of the brightest voxel of each ray (0 for an all-zero ray).
    """
    arr = cropped.array if isinstance(cropped, Volume) else np.asarray(cropped)
    if arr.ndim != 3:
        raise ValueError(f"sagittal_mip needs a 3D (z, y, x) array, got shape {arr.shape}")
    am = np.argmax(arr, axis=2)
    mip = np.take_along_axis(arr, am[..., None], axis=2)[..., 0]
    return np.ascontiguousarray(mip[::-1], dtype=np.float32), np.ascontiguousarray(
        am[::-1], dtype=np.int32
    )
