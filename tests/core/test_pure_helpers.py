"""The Qt-free helpers behind 'Preprocess CT': which steps re-run, the crop box's
outline, the guess of a label map's convention."""

from __future__ import annotations

import itertools

import numpy as np

from napari_vertebra.core import STEPS, PreprocessParams
from napari_vertebra.core.box_outline import box_edges_path
from napari_vertebra.core.labels import guess_convention
from napari_vertebra.core.pipeline import steps_to_rerun


def test_pure_helpers():
    p = PreprocessParams()
    assert steps_to_rerun(None, p) == list(STEPS)
    assert steps_to_rerun(p, p) == []
    assert steps_to_rerun(p, p.replace(canal_r_max_mm=15.0)) == ["canal", "crop", "mip"]
    assert steps_to_rerun(p, p.replace(spacing_mm=2.0)) == list(STEPS)
    path = box_edges_path(((0, 10), (2, 6), (3, 9)))
    assert path.shape == (16, 3)
    assert path.min(axis=0).tolist() == [0, 2, 3] and path.max(axis=0).tolist() == [9, 5, 8]
    # every one of the 12 box edges is walked
    edges = {tuple(sorted((tuple(a), tuple(b)))) for a, b in itertools.pairwise(path)}
    assert len(edges) == 12
    assert guess_convention(np.array([0, 1, 17])) == "class ids"
    assert guess_convention(np.array([0, 27, 31, 79])) == "totalsegmentator"
    assert guess_convention(np.array([0, 20, 21, 22])) == "verse"
