"""Anatomy against the header on every axis (issue 19): head-feet, roll, front-back.

Every case is built from the real samples in a fixture: the voxels turned or flipped,
the header kept, as a scan stored with a wrong header is.
"""

from __future__ import annotations

import numpy as np
import pytest
from core_helpers import LUMBAR_VERTEBRAE

from napari_vertebra.core import Volume, read_ct, run_pipeline
from napari_vertebra.core.orientation import ORIENTATION_AXES, check_orientation
from napari_vertebra.core.pipeline import mip_labels

L5, T11 = 27, 33


def _header_kept(vol: Volume, arr: np.ndarray) -> Volume:
    """``arr`` (turned or flipped voxels of ``vol``) with ``vol``'s header."""
    spacing = vol.spacing if arr.shape == vol.shape else (vol.spacing[0], *vol.spacing[1:][::-1])
    return Volume(np.ascontiguousarray(arr), spacing, vol.origin, vol.direction)


def _rolled(vol: Volume, k: int) -> Volume:
    """The patient turned 90 degrees about the head-feet axis (``k`` quarter turns)."""
    return _header_kept(vol, np.rot90(vol.array, k, axes=(1, 2)))


def _contradicted(res) -> list[str]:
    return [w for w in res.warnings if "contradicts the header" in w]


def _kept(res, ids) -> float:
    full = np.isin(res.labels_resampled.array, ids).sum()
    return float(np.isin(res.labels_cropped.array, ids).sum() / full)


def _rows(res, label: int) -> float:
    """Mean MIP row of a label (row 0 at the top of the MIP)."""
    return float(np.nonzero(mip_labels(res) == label)[0].mean())


@pytest.fixture(scope="module")
def flipped_head_feet(lumbar):
    ct, labels = lumbar
    return run_pipeline(
        _header_kept(ct, ct.array[::-1]), labels=_header_kept(labels, labels.array[::-1])
    )


def test_real_samples_agree_with_their_headers(lumbar_result, tptbox_result, dicom_dir):
    """No false alarm: "ok", no warning; where the evidence is too weak, "unknown"."""
    dicom = run_pipeline(read_ct(dicom_dir))  # 40 mm: T11 / T12 only
    for res in (lumbar_result, tptbox_result, dicom):
        assert res.decisions["orientation"] == "ok"
        assert res.warnings == ()
        axes = res.decisions["orientation_axes"]
        assert set(axes) == set(ORIENTATION_AXES)
        assert "doubt" not in axes.values()
        assert axes["anterior-posterior"] == axes["roll"] == "ok"
    # the lumbar sample (pelvis below, lung bases above, bodies growing downwards)
    assert lumbar_result.decisions["orientation_axes"]["head-feet"] == "ok"
    ev = lumbar_result.decisions["orientation_evidence"]
    assert ev["head_feet_size"] == ev["head_feet_pelvis"] == ev["head_feet_lungs"] == 1.0
    # a 70 mm crop and a 40 mm series cannot tell head from feet
    assert tptbox_result.decisions["orientation_axes"]["head-feet"] == "unknown"
    assert dicom.decisions["orientation_axes"]["head-feet"] == "unknown"


def test_upside_down_scan_warns_on_the_head_feet_axis(flipped_head_feet, lumbar_result):
    """arr[::-1] along z, header kept: the MIP shows the sacrum on top."""
    res = flipped_head_feet
    assert res.decisions["orientation"] == "doubt"
    axes = res.decisions["orientation_axes"]
    assert axes["head-feet"] == "doubt"
    assert axes["anterior-posterior"] == axes["roll"] == "ok"
    (w,) = _contradicted(res)
    assert "head-feet" in w and "upside down" in w and "pelvis" in w
    # what the warning is about: the vertebrae in reverse order in the MIP
    assert _rows(res, L5) < _rows(res, T11)
    assert _rows(lumbar_result, L5) > _rows(lumbar_result, T11)
    assert _kept(res, list(LUMBAR_VERTEBRAE)) >= 0.98


@pytest.mark.parametrize(("k", "side"), [(1, "right"), (-1, "left")])
def test_patient_lying_on_the_side_warns_on_the_roll(lumbar, k, side):
    """Turned 90 degrees in the axial plane, header kept: the MIP would be coronal."""
    ct, labels = lumbar
    res = run_pipeline(_rolled(ct, k), labels=_rolled(labels, k))
    assert res.decisions["orientation"] == "doubt"
    axes = res.decisions["orientation_axes"]
    assert axes["roll"] == "doubt" and axes["head-feet"] == "ok"
    (w,) = _contradicted(res)
    assert "rolled" in w and "coronal" in w and f"patient's {side}" in w
    assert "left-right and anterior-posterior" in w
    # every margin takes the largest, so the bodies (now beside the canal) stay in
    assert _kept(res, list(LUMBAR_VERTEBRAE)) >= 0.98


def test_rolled_series_off_the_left_right_midline_still_warns(dicom_dir):
    """The 40 mm DICOM series rolled: the canal is far from the bone's middle along x
    (the patient's front-back axis now), at its middle along y."""
    ct = read_ct(dicom_dir)
    for k in (1, -1):
        res = run_pipeline(_rolled(ct, k))
        assert res.decisions["orientation_axes"]["roll"] == "doubt"
        assert res.decisions["crop"] == "kmeans"
        assert len(_contradicted(res)) == 1


def test_prone_scan_names_the_anterior_posterior_axis(lumbar):
    ct, _ = lumbar
    res = run_pipeline(_header_kept(ct, ct.array[:, ::-1]))
    axes = res.decisions["orientation_axes"]
    assert axes == {"anterior-posterior": "doubt", "roll": "ok", "head-feet": "ok"}
    (w,) = _contradicted(res)
    assert "anterior-posterior axis" in w and "prone" in w


def test_partial_scans_never_give_a_false_warning(lumbar):
    """Every 72 mm part of the lumbar sample, as stored and upside down: never a
    contradiction on the stored one, never "ok" on the flipped one's head-feet axis."""
    ct, _ = lumbar
    n = round(72 / ct.spacing[0])
    for z0 in range(0, ct.shape[0] - n + 1, 12):
        part = ct.array[z0 : z0 + n]
        stored = run_pipeline(_header_kept(ct, part))
        assert not _contradicted(stored), (z0, stored.decisions)
        flipped = run_pipeline(_header_kept(ct, part[::-1]))
        assert flipped.decisions["orientation_axes"]["head-feet"] != "ok", z0


def test_no_canal_track_leaves_the_axes_it_needs_unknown(lumbar_result):
    r = lumbar_result
    check = check_orientation(r.windowed, r.canal_centres, np.zeros(0, int), r.resampled)
    assert check.axes["anterior-posterior"] == check.axes["roll"] == "unknown"
    assert check.axes["head-feet"] == "ok"  # the lungs' air alone still agrees
    assert check.warnings == ()
    blind = check_orientation(r.windowed, r.canal_centres, np.zeros(0, int))
    assert blind.verdict == "unknown"
