"""The crop box's outline as vertices, for drawing it over the volume.

A crop box is three half-open voxel ranges ((z0, z1), (y0, y1), (x0, x1)) of the
resampled grid; its outline runs through the centres of its outer voxels (``z1 - 1``).
:func:`box_edges_path` gives one path through its 12 edges (a 3D view),
:func:`box_rectangles` one rectangle per axial slice (a 2D view of the slices).
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_edges_path", "box_rectangles"]


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
