"""Pure helpers of 'Preprocess CT' (numpy and the core only; no Qt, no napari).

Which pipeline steps a parameter change re-runs, the label convention of a 3D label
map, the MIP's labels, the crop box as napari shapes and fitting the 2D camera.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_vertebra.core import STEP_PARAMS, STEPS, PipelineResult, PreprocessParams
from napari_vertebra.core.labels import NUM_CLASSES

__all__ = [
    "LABEL_CONVENTIONS",
    "box_edges_path",
    "box_rectangles",
    "fit_to_layer",
    "guess_convention",
    "mip_labels",
    "rgba",
    "steps_to_rerun",
]

#: Choices of the labels-convention picker.
LABEL_CONVENTIONS = ("auto", "class ids", "totalsegmentator", "verse")


def steps_to_rerun(
    old: PreprocessParams | None, new: PreprocessParams, same_input: bool = True
) -> list[str]:
    """The pipeline steps that re-run when ``old`` parameters become ``new``.

    A step re-runs when one of its own parameters or an earlier step's changed (all of
    them without ``old`` or when the input is new).
    """
    if old is None or not same_input:
        return list(STEPS)
    for i, step in enumerate(STEPS):
        if any(getattr(old, n) != getattr(new, n) for n in STEP_PARAMS[step]):
            return list(STEPS[i:])
    return []


def guess_convention(array: np.ndarray) -> str:
    """Which label convention a 3D label array most likely uses.

    "class ids" when every value is in 0..17; "totalsegmentator" when values above 24
    (TotalSegmentator's vertebrae are 27..50) occur; "verse" otherwise.
    """
    hi = int(np.max(array, initial=0))
    if hi < NUM_CLASSES:
        return "class ids"
    return "totalsegmentator" if hi > 24 else "verse"


def mip_labels(result: PipelineResult) -> np.ndarray | None:
    """The class label of the voxel behind each MIP pixel (2D uint8), or None without labels."""
    if result.labels_cropped is None:
        return None
    lab = np.asarray(result.labels_cropped.array)[::-1]  # rows: superior first, like the MIP
    out = np.take_along_axis(lab, result.mip_argmax_x[..., None].astype(np.intp), axis=2)[..., 0]
    out = np.where(result.mip > 0, out, 0)
    return out.astype(np.uint8)


def box_edges_path(box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(16, 3) (z, y, x) voxel vertices of one path through all 12 edges of a crop box.

    Half-open voxel ranges become the box around the voxel centres (``z1 - 1``). Sliced
    in 2D the path shows the box's outline on every slice it spans; in 3D its edges.
    """
    (z0, z1), (y0, y1), (x0, x1) = box
    z1, y1, x1 = z1 - 1, y1 - 1, x1 - 1
    b = [(z0, y0, x0), (z0, y1, x0), (z0, y1, x1), (z0, y0, x1)]
    t = [(z1, y, x) for _, y, x in b]
    path = [b[0], b[1], b[2], b[3], b[0], t[0], t[1], b[1], t[1], t[2], b[2], t[2], t[3], b[3]]
    path += [t[3], t[0]]
    return np.asarray(path, float)


def box_rectangles(box: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """One (4, 3) (z, y, x) rectangle per axial slice of a crop box (its 2D outline)."""
    (z0, z1), (y0, y1), (x0, x1) = box
    corners = np.array([[y0, x0], [y0, x1 - 1], [y1 - 1, x1 - 1], [y1 - 1, x0]], float)
    return [np.column_stack([np.full(4, float(z)), corners]) for z in range(z0, z1)]


def fit_to_layer(viewer: Any, layer: Any, margin: float = 0.05) -> None:
    """Centre the 2D camera on ``layer`` and zoom so that it fills the canvas.

    (napari's ``fit_to_view(layers=...)`` fails for a 2D layer among 3D ones.)
    """
    try:
        extent = np.asarray(layer.extent.world, float)  # (2, ndim) min / max
        lo, hi = extent[0][-2:], extent[1][-2:]
        size = np.maximum(hi - lo, 1e-6)
        scene = getattr(viewer, "scene", None)  # napari >= 0.9; viewer.camera before
        cam = scene.camera if scene is not None else viewer.camera
        centre = tuple(float(c) for c in (lo + hi) / 2)
        cam.center = (*tuple(cam.center)[:-2], *centre)
        canvas = getattr(getattr(viewer, "canvas", None), "size", None) or (600, 600)
        cam.zoom = (1 - margin) * float(np.min(np.asarray(canvas, float) / size))
    except Exception:  # a view nicety must never break showing a result
        pass


def rgba(hex_colour: str) -> np.ndarray:
    """RGBA (0..1) of a "#rrggbb" colour."""
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)] + [1.0])
