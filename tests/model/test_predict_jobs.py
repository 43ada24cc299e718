"""The Qt-free work behind 'Predict vertebrae' (napari_vertebra.model.predict_jobs)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.model.predict_jobs import boxes_to_rectangles


def test_boxes_to_rectangles_hug_the_pixels():
    (rect,) = boxes_to_rectangles(np.array([[2.0, 3.0, 6.0, 9.0]]))  # x0, y0, x1, y1
    # pixel edges 3..9 (rows) are the centres 3..8 +- 0.5
    assert np.allclose(rect, [[2.5, 1.5], [2.5, 5.5], [8.5, 5.5], [8.5, 1.5]])


class _SpyPredictor:
    """What predict_job asks of a Predictor, with the spacing of each call recorded."""

    min_score = 0.9

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def detect(self, mip, min_score, spacing=None):
        import torch

        self.seen.append(("detect", spacing))
        return {"scores": torch.zeros(0)}

    def finish(self, det, shape, min_score=None, spacing=None):
        self.seen.append(("finish", spacing))
        return "prediction"


def _result_at(mm: float):
    """The parts of a PipelineResult that say its MIP's grid, at ``mm`` per voxel."""
    from types import SimpleNamespace

    vol = SimpleNamespace(spacing=(mm, mm, mm), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    return SimpleNamespace(crop_box=((0, 40), (0, 20), (0, 10)), resampled=vol,
                           mip=np.zeros((40, 20), np.float32))  # fmt: skip


@pytest.mark.torch
def test_a_mip_is_predicted_at_its_own_pixel_spacing():
    from napari_vertebra.model.predict_jobs import predict_job

    spy = _SpyPredictor()
    mip = np.zeros((40, 20), np.float32)
    _, raw = predict_job(spy, "c.pt", "cpu", mip, "MIP x", result=_result_at(2.0), min_score=0.5)
    assert raw.spacing == [2.0, 2.0] and raw.at(0.5) == "prediction"
    assert spy.seen == [("detect", [2.0, 2.0]), ("finish", [2.0, 2.0])]
    spy.seen.clear()
    _, raw = predict_job(spy, "c.pt", "cpu", mip, "MIP y", spacing=[0.8, 0.8])
    assert raw.spacing == [0.8, 0.8] and spy.seen == [("detect", [0.8, 0.8])]


def test_the_pixel_spacing_of_a_mip_layer():
    from napari_vertebra.annotation.regrid import mip_grid
    from napari_vertebra.model.predict_jobs import mip_spacing

    assert mip_spacing(_result_at(1.5), {"spacing_mm": 9}) == [1.5, 1.5]  # the grid wins
    assert mip_spacing(None, {"mip_grid": mip_grid(_result_at(2.0))}) == [2.0, 2.0]
    assert mip_spacing(None, {"spacing_mm": 0.8}) == [0.8, 0.8]
    assert mip_spacing(None, {"spacing": [0.7, 0.9]}) == [0.7, 0.9]
    assert mip_spacing(None, {"source_path": "a.png"}) is None
    with pytest.raises(ValueError, match="not a positive pixel spacing"):
        mip_spacing(None, {"spacing_mm": -1})
    with pytest.raises(ValueError, match="no positive spacing"):
        mip_spacing(None, {"mip_grid": {"spacing": [0, 1, 1]}})
