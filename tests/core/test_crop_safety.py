"""The crop never loses the spine: partial views, pelvis-only scans, wrong headers (issue 9).

Every case is cut from the real lumbar sample (3 mm, TotalSegmentator labels) in a
fixture; the labels show what the crop keeps.
"""

from __future__ import annotations

import numpy as np
import pytest
from core_helpers import HIPS, LUMBAR_VERTEBRAE

from napari_vertebra.core import PreprocessParams, Volume, run_pipeline
from napari_vertebra.core.crop import CROP_KINDS, bony_midline, decide_crop

L5, S1, SACRUM = 27, 26, 25


def _cut(vol: Volume, z0: int, z1: int, flip_y: bool = False) -> Volume:
    """Axial slices z0..z1 of ``vol`` with the geometry of that part; ``flip_y`` flips the
    array's anterior-posterior axis and keeps the header (prone stored as supine)."""
    arr = vol.array[z0:z1]
    if flip_y:
        arr = arr[:, ::-1]
    origin = vol.index_to_physical(np.array([z0, 0, 0], float))
    return Volume(np.ascontiguousarray(arr), vol.spacing, tuple(origin), vol.direction)


def _kept(res, ids) -> float:
    """Share of the label voxels (resampled grid) that the crop keeps."""
    full = np.isin(res.labels_resampled.array, ids).sum()
    return float(np.isin(res.labels_cropped.array, ids).sum() / full)


def _slices_of(labels: Volume, label: int) -> np.ndarray:
    return np.nonzero((labels.array == label).any(axis=(1, 2)))[0]


def _check_decision(res) -> None:
    """A fallback is never silent; the decision is one of the documented kinds."""
    assert res.decisions["crop"] in CROP_KINDS
    assert res.decisions["crop_reason"]
    if res.decisions["crop"] != "kmeans":
        assert any("spine crop not trusted" in w for w in res.warnings), res.warnings


def test_clean_sample_crops_without_warning(lumbar_result):
    r = lumbar_result
    assert r.decisions["crop"] == "kmeans"
    assert r.decisions["orientation"] == "ok"
    assert r.warnings == ()
    ev = r.decisions["crop_evidence"]
    assert ev["found_slices"] >= PreprocessParams().crop_min_found_slices
    assert ev["midline_offset_mm"] <= PreprocessParams().crop_max_midline_offset_mm


def test_s1_and_hips_keep_l5(lumbar):
    """20 slices: the lower half of L5 above S1 and the hips (a common partial view)."""
    ct, labels = lumbar
    z0 = int(_slices_of(labels, L5).min()) - 10
    cut_ct, cut_lab = _cut(ct, z0, z0 + 20), _cut(labels, z0, z0 + 20)
    present = set(np.unique(cut_lab.array))
    assert {L5, S1, *HIPS} <= present
    res = run_pipeline(cut_ct, labels=cut_lab)
    _check_decision(res)
    print(f"S1 + hips: L5 kept {_kept(res, [L5]):.3f}, decision {res.decisions}")
    assert _kept(res, [L5]) >= 0.98


def test_pelvis_only_is_not_cropped_on_a_hip(lumbar):
    """20 slices of sacrum and hips, no lumbar vertebra: no crop around a hip's hole."""
    ct, labels = lumbar
    cut_ct, cut_lab = _cut(ct, 0, 20), _cut(labels, 0, 20)
    assert L5 not in np.unique(cut_lab.array)
    res = run_pipeline(cut_ct, labels=cut_lab)
    _check_decision(res)
    assert res.decisions["crop"].startswith("fallback")
    assert res.warnings
    assert _kept(res, [SACRUM]) >= 0.98
    # the box is centred on the sacrum, not on a hip
    (_, _), (_, _), (x0, x1) = res.crop_box
    lab = res.labels_resampled.array
    sacrum_x = np.nonzero(lab == SACRUM)[2].mean()
    hip_x = [np.nonzero(lab == h)[2].mean() for h in HIPS]
    centre = (x0 + x1 - 1) / 2
    assert abs(centre - sacrum_x) < min(abs(centre - h) for h in hip_x)
    assert abs(centre - sacrum_x) * res.resampled.spacing[2] <= 20


def test_prone_with_a_supine_header_warns(lumbar):
    """The array's anterior-posterior axis flipped, the header kept: bodies behind the canal."""
    ct, labels = lumbar
    nz = ct.shape[0]
    res = run_pipeline(_cut(ct, 0, nz, flip_y=True), labels=_cut(labels, 0, nz, flip_y=True))
    assert res.decisions["orientation"] == "doubt"
    assert any("prone" in w and "header" in w for w in res.warnings), res.warnings
    assert _kept(res, list(LUMBAR_VERTEBRAE)) >= 0.98


@pytest.mark.slow
def test_every_20_slice_window_keeps_the_vertebrae(lumbar):
    """Any 20-slice part of the sample: the vertebrae in the field of view stay in the crop."""
    ct, labels = lumbar
    nz = ct.shape[0]
    ids = list(LUMBAR_VERTEBRAE)
    kinds = set()
    for z0 in range(0, nz - 19, 6):
        res = run_pipeline(_cut(ct, z0, z0 + 20), labels=_cut(labels, z0, z0 + 20))
        _check_decision(res)
        kinds.add(res.decisions["crop"])
        for v in ids:
            if (res.labels_resampled.array == v).sum() >= 500:
                assert _kept(res, [v]) >= 0.98, (z0, LUMBAR_VERTEBRAE[v], res.decisions)
    assert "kmeans" in kinds and len(kinds) > 1  # crops where it can, falls back elsewhere


def test_no_bone_is_not_cropped_and_says_so():
    vol = Volume(np.zeros((6, 30, 40), np.float32))
    res = run_pipeline(vol)
    assert res.crop_box == ((0, 6), (0, 30), (0, 40))
    assert res.decisions["crop"] == "fallback-none"
    assert any("no bone" in w for w in res.warnings)


def test_bony_midline():
    arr = np.zeros((3, 8, 50), np.int16)
    arr[0, :, 10:14] = 500  # two bones, symmetric about x = 24.5
    arr[0, :, 35:39] = 500
    arr[1, :, 40:42] = 500
    mid = bony_midline(Volume(arr))
    assert 22 <= mid[0] <= 27
    assert 40 <= mid[1] <= 41
    assert np.isnan(mid[2])


def test_canal_step_gives_the_same_midline(lumbar_result):
    r = lumbar_result
    full = bony_midline(r.windowed)
    pooled = r.canal.midline
    assert pooled.shape == full.shape
    assert np.array_equal(np.isnan(pooled), np.isnan(full))
    assert np.nanmedian(np.abs(pooled - full)) * r.windowed.spacing[2] <= 2.0


def test_short_track_crops_left_right_only(lumbar_result):
    """A track on fewer slices than required: x cropped around it, y whole, a warning."""
    r = lumbar_result
    p = PreprocessParams(crop_min_found_slices=10_000)
    d = decide_crop(r.windowed, r.canal, p)
    assert d.kind == "fallback-track-x"
    (_, _), (y0, y1), (x0, x1) = d.box
    assert (y0, y1) == (0, r.windowed.shape[1])
    found_x = r.canal_centres[r.canal_found, 2]
    assert x0 < found_x.min() - p.crop_margin_lr_mm and x1 > found_x.max() + p.crop_margin_lr_mm
    assert d.warnings and "10000 slices" in d.warnings[0]


def test_warnings_of_reading_come_first_and_follow_the_steps(lumbar_result):
    r = lumbar_result
    ct = Volume(r.source.array, r.source.spacing, r.source.origin, r.source.direction,
                warnings=("HU offset corrected",))  # fmt: skip
    labels = r.labels_source
    labels = Volume(labels.array, labels.spacing, labels.origin, labels.direction,
                    warnings=("2 slices missing",))  # fmt: skip
    res = run_pipeline(ct, PreprocessParams(crop_min_found_slices=10_000), labels=labels)
    assert res.warnings[:2] == ("HU offset corrected", "labels: 2 slices missing")
    assert len(res.warnings) == 3 and "spine crop not trusted" in res.warnings[2]
    assert res.cropped.warnings == ct.warnings  # steps keep the reading notes
    assert res.decisions["read"] == ["HU offset corrected"]
    assert res.decisions["labels_read"] == ["2 slices missing"]
    # re-use of the unchanged steps keeps the decision and the warnings
    again = run_pipeline(ct, PreprocessParams(crop_min_found_slices=10_000), labels=labels,
                         previous=res)  # fmt: skip
    assert again.crop is res.crop and again.warnings == res.warnings
    assert again.decisions == res.decisions
    back = run_pipeline(ct, PreprocessParams(), labels=labels, previous=res)
    assert back.canal is res.canal  # only the crop and the MIP re-run
    assert back.decisions["crop"] == "kmeans"
    assert back.warnings == ("HU offset corrected", "labels: 2 slices missing")


def test_unread_hu_offset_does_not_lose_the_spine(lumbar):
    """HU + 1024 stored unsigned reaching the pipeline (reading did not correct it): soft
    tissue is "bone", the track is off the midline, and the safe box keeps the vertebrae."""
    ct, labels = lumbar
    shifted = np.clip(ct.array.astype(np.int32) + 1024, 0, None).astype(np.uint16)
    res = run_pipeline(ct.with_array(shifted), labels=labels)
    _check_decision(res)
    assert res.warnings
    assert _kept(res, list(LUMBAR_VERTEBRAE)) >= 0.98


def test_evidence_thresholds_are_validated():
    for name in ("crop_min_track_mm", "crop_min_found_slices", "crop_max_midline_offset_mm"):
        with pytest.raises(ValueError, match=name):
            PreprocessParams(**{name: -1})
