"""The Qt-free work behind 'Predict vertebrae' (napari_vertebra.model.predict_jobs)."""

from __future__ import annotations

import numpy as np

from napari_vertebra.model.predict_jobs import boxes_to_rectangles


def test_boxes_to_rectangles_hug_the_pixels():
    (rect,) = boxes_to_rectangles(np.array([[2.0, 3.0, 6.0, 9.0]]))  # x0, y0, x1, y1
    # pixel edges 3..9 (rows) are the centres 3..8 +- 0.5
    assert np.allclose(rect, [[2.5, 1.5], [2.5, 5.5], [8.5, 5.5], [8.5, 1.5]])
