"""Whether a 2D image looks like a sagittal MIP of a CT, as the annotation tools assume.

A MIP from "Preprocess CT" (:func:`napari_vertebra.core.mip.sagittal_mip`) holds windowed
HU (0 outside the window, bone up to about 1500) at 1 mm per pixel, with smooth shapes:
Gaussian smoothing by one pixel keeps about 90 % of its variance. White pixel noise keeps
about 8 %; an 8-bit picture holds values up to 255, below any bone.
:func:`mip_problems` says in plain words what does not fit (the annotation tools still
work on such an image; their outlines and predictions mean little there).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MIN_BONE_HU", "MIN_STRUCTURE", "mip_problems", "structure_fraction"]

#: A MIP with a vertebra holds at least this value (HU) somewhere.
MIN_BONE_HU = 300.0
#: Smoothing by one pixel keeps at least this fraction of a MIP's variance.
MIN_STRUCTURE = 0.5


def structure_fraction(image: np.ndarray, sigma: float = 1.0) -> float:
    """The fraction of ``image``'s variance that a Gaussian smoothing by ``sigma`` pixels
    keeps: about 0.9 for shapes (a MIP), about 0.08 for white pixel noise; 0 for a
    constant image."""
    img = np.asarray(image, np.float32)
    var = float(np.var(img))
    if not np.isfinite(var) or var <= 0:
        return 0.0
    return float(np.var(ndi.gaussian_filter(img, sigma))) / var


def mip_problems(image: np.ndarray) -> list[str]:
    """What makes ``image`` (2D) unlike a sagittal MIP of a CT, in plain words ([] when
    nothing does): no value as bright as bone, pixel noise, or a constant image."""
    img = np.asarray(image)
    if img.ndim != 2:
        return [f"it is {img.ndim}D (shape {img.shape}); a MIP is 2D"]
    finite = img[np.isfinite(img)] if img.dtype.kind == "f" else img
    if finite.size == 0:
        return ["it holds no finite value"]
    lo, hi = float(finite.min()), float(finite.max())
    out = []
    if hi <= lo:
        return [f"every pixel is {lo:g}"]
    if hi < MIN_BONE_HU:
        out.append(
            f"its values run {lo:g}..{hi:g}, below bone (a MIP holds windowed HU, bone "
            f"{MIN_BONE_HU:g}..1500): an 8-bit picture?"
        )
    kept = structure_fraction(img)
    if kept < MIN_STRUCTURE:
        out.append(
            f"it looks like pixel noise (smoothing by one pixel keeps {100 * kept:.0f} % of "
            "its variance; a MIP keeps about 90 %)"
        )
    return out
