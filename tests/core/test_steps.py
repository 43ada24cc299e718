"""The pipeline's step functions on small synthetic volumes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.core import (
    PreprocessParams,
    Volume,
    apply_crop,
    crop_spine,
    detect_canal,
    detect_canal_details,
    find_canal_candidates,
    resample_isotropic,
    resample_labels,
    run_pipeline,
    sagittal_mip,
    window_hu,
)

SPACING = (1.5, 1.2, 1.2)
SHAPE = (200, 160, 160)


@pytest.fixture(scope="module")
def phantoms(synthetic_ct):
    """Synthetic CTs with both hips, one hip and none (a chest-like scan)."""
    out = {}
    for hips in ("both", "left", "none"):
        arr, truth = synthetic_ct(SHAPE, SPACING, hips=hips)
        out[hips] = (Volume(arr, spacing=SPACING, origin=(10.0, -20.0, 30.0)), truth)
    return out


def test_resample_isotropic_geometry():
    vol = Volume(np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8), spacing=(3, 2, 0.5),
                 origin=(1.0, 2.0, 3.0))  # fmt: skip
    out = resample_isotropic(vol, 1.0)
    assert out.shape == (12, 12, 4)
    assert out.spacing == (1.0, 1.0, 1.0)
    assert out.origin == vol.origin
    assert out.array.dtype == vol.array.dtype
    assert out.array[0, 0, 0] == vol.array[0, 0, 0]
    # linear: a voxel at the position of an input voxel keeps its value
    assert out.array[3, 2, 1] == vol.array[1, 1, 2]
    near = resample_isotropic(vol, 2.0, "nearest")
    assert set(np.unique(near.array)) <= set(np.unique(vol.array))
    with pytest.raises(ValueError, match="interpolator"):
        resample_isotropic(vol, 1.0, "cubic")


def test_resample_labels_nearest():
    rng = np.random.default_rng(1)
    labels = Volume(rng.integers(0, 5, (5, 6, 7)).astype(np.uint8), spacing=(2.0, 2.0, 2.0))
    ref = resample_isotropic(labels, 1.0)
    out = resample_labels(labels, ref)
    assert out.same_grid(ref)
    assert out.array.dtype == np.uint8
    np.testing.assert_array_equal(out.array[::2, ::2, ::2], labels.array)


def test_window_hu():
    values = [-1000, 99, 100, 700, 1500, 1501, 3000]
    # int16 and float HU keep their type; an unsigned type becomes float32
    for dtype, want in ((np.int16, np.int16), (np.float32, np.float32), (np.uint16, np.float32)):
        vol = Volume(
            np.array([[np.clip(values, 0, None) if dtype == np.uint16 else values]], dtype)
        )
        out = window_hu(vol, 100, 1500)
        assert out.array.dtype == want
        expect = [0, 0, 100, 700, 1500, 0, 0]
        np.testing.assert_array_equal(out.array[0, 0], expect)
    # many slices: the chunked, threaded path gives the same as the plain formula
    big = np.random.default_rng(0).integers(-1000, 2000, (40, 9, 11)).astype(np.int16)
    out = window_hu(Volume(big), 100, 1500).array
    np.testing.assert_array_equal(out, np.where((big >= 100) & (big <= 1500), big, 0))
    vol = Volume(np.array([[values]], np.int16))
    window_hu(vol, 100, 1500)
    assert vol.array[0, 0, 0] == -1000  # input untouched
    with pytest.raises(ValueError):
        window_hu(vol, 10, 5)


def test_sagittal_mip_orientation():
    arr = np.zeros((4, 3, 5), np.float32)
    arr[3, 0, 2] = 7.0  # most superior slice, most anterior row, x = 2
    arr[0, 2, 4] = 5.0  # most inferior slice, most posterior row
    mip, am = sagittal_mip(Volume(arr))
    assert mip.shape == (4, 3) and mip.dtype == np.float32
    assert mip[0, 0] == 7.0 and am[0, 0] == 2  # row 0 superior, col 0 anterior
    assert mip[3, 2] == 5.0 and am[3, 2] == 4
    assert mip.sum() == 12.0


def test_crop_spine_without_canal_keeps_everything():
    centres = np.zeros((10, 3))
    box = crop_spine(centres, np.zeros(10, bool), (10, 50, 60), (1.0, 1.0, 1.0))
    assert box == ((0, 10), (0, 50), (0, 60))


def test_crop_spine_margins_and_clipping():
    p = PreprocessParams(crop_margin_lr_mm=10, crop_margin_anterior_mm=20,
                         crop_margin_posterior_mm=5)  # fmt: skip
    centres = np.array([[0, 30.0, 40.0], [1, 34.0, 44.0]])
    box = crop_spine(centres, np.array([True, False]), (2, 100, 100), (1.0, 2.0, 0.5), p)
    assert box == ((0, 2), (20, 38), (20, 65))
    vol = Volume(np.zeros((2, 100, 100)), spacing=(1.0, 2.0, 0.5))
    cropped = apply_crop(vol, box)
    assert cropped.shape == (2, 18, 45)
    np.testing.assert_allclose(cropped.origin, vol.index_to_physical(np.array([0, 20, 20])))
    wide = crop_spine(centres, np.array([True, True]), (2, 40, 50), (1.0, 1.0, 1.0))
    assert wide == ((0, 2), (0, 40), (0, 50))


@pytest.mark.parametrize("hips", ["both", "left", "none"])
def test_canal_on_phantom(phantoms, hips):
    vol, truth = phantoms[hips]
    res = run_pipeline(vol)
    c = res.canal_centres
    assert c.shape == (res.resampled.shape[0], 3)
    z_in = np.clip(np.rint(c[:, 0] * 1.0 / SPACING[0]).astype(int), 0, SHAPE[0] - 1)
    err = np.hypot(c[:, 1] - truth["canal"][z_in, 0] * SPACING[1],
                   c[:, 2] - truth["canal"][z_in, 1] * SPACING[2])  # fmt: skip
    ring = truth["ring"][z_in]
    assert res.canal_found[ring].mean() >= 0.9  # closed ring: found
    assert np.median(err) <= 2.0 and err.max() <= 6.0  # found and carried across
    # the spine is in the crop and the hip foramina are not
    (_, _), (y0, y1), (x0, x1) = res.crop_box
    canal_y_mm = truth["canal"][:, 0] * SPACING[1]
    assert y0 < canal_y_mm.min() - 40 and y1 > canal_y_mm.max() + 30
    mid_x = (SHAPE[2] - 1) / 2 * SPACING[2]
    assert x0 < mid_x - 40 and x1 > mid_x + 40
    for hx in truth["hip_x_mm"]:
        assert not x0 <= mid_x + hx <= x1
    # strong evidence: the paper's box, anatomy as the header says, nothing to warn about
    assert res.decisions["crop"] == "kmeans"
    assert res.decisions["orientation"] == "ok"
    assert res.warnings == ()


def test_kmeans_groups(phantoms):
    det = detect_canal_details(window_hu(resample_isotropic(phantoms["both"][0])))
    assert len(np.unique(det.cluster)) == 3
    xs = [np.median(det.candidates[det.cluster == g, 2]) for g in range(3)]
    assert det.spine_cluster == int(np.argsort(xs)[1])  # the middle group
    one = detect_canal_details(window_hu(resample_isotropic(phantoms["left"][0])))
    assert len(np.unique(one.cluster)) == 2  # k = 3 asked, groups merged
    spine_x = np.median(one.candidates[one.cluster == one.spine_cluster, 2])
    assert abs(spine_x - (SHAPE[2] - 1) / 2 * SPACING[2]) < 10


def test_hole_search_box_finds_what_the_whole_slice_does(phantoms):
    """Holes are searched in the bone's in-plane box only: bone specks in the slice
    corners (the box is then the whole slice) change no candidate."""
    windowed = window_hu(resample_isotropic(phantoms["both"][0]))
    boxed = find_canal_candidates(windowed)
    arr = windowed.array.copy()
    arr[:, [0, 0, -1, -1], [0, -1, 0, -1]] = 500
    whole = find_canal_candidates(windowed.with_array(arr))
    assert len(boxed) > 100
    np.testing.assert_array_equal(boxed, whole)
    # the same holes shifted: the box's offset is added back
    pad = np.pad(windowed.array, ((0, 0), (6, 0), (4, 0)))
    shifted = find_canal_candidates(Volume(pad, spacing=windowed.spacing))
    np.testing.assert_array_equal(shifted - [0, 6, 4, 0, 0], boxed)


def test_detect_canal_without_bone():
    vol = Volume(np.zeros((6, 30, 40), np.float32))
    centres, found = detect_canal(vol)
    assert centres.shape == (6, 3) and not found.any()
    np.testing.assert_allclose(centres[:, 1:], [[14.5, 19.5]] * 6)
    res = run_pipeline(Volume(np.full((6, 30, 40), -1000, np.int16)))
    assert res.crop_box == ((0, 6), (0, 30), (0, 40))
    assert res.mip.shape == (6, 30) and not res.mip.any()
    assert res.decisions["crop"] == "fallback-none" and len(res.warnings) == 1


def test_previous_reuses_unchanged_steps(phantoms):
    vol, _ = phantoms["none"]
    first = run_pipeline(vol)
    calls = []
    second = run_pipeline(vol, PreprocessParams(crop_margin_lr_mm=30.0), previous=first,
                          progress=lambda f, m: calls.append((f, m)))  # fmt: skip
    assert second.resampled is first.resampled
    assert second.windowed is first.windowed
    assert second.canal is first.canal
    assert second.crop_box != first.crop_box
    assert second.timings["resample"] < 0.05
    assert calls and calls[-1][0] == 1.0
    assert all(0 <= f <= 1 for f, _ in calls)
    assert [f for f, _ in calls] == sorted(f for f, _ in calls)
    third = run_pipeline(vol, PreprocessParams(hu_min=200.0), previous=first)
    assert third.resampled is first.resampled
    assert third.windowed is not first.windowed
    assert third.windowed.array[third.windowed.array > 0].min() >= 200
    # another volume object: nothing is re-used
    other = run_pipeline(Volume(vol.array, vol.spacing, vol.origin), previous=first)
    assert other.resampled is not first.resampled
    np.testing.assert_array_equal(other.mip, first.mip)


def test_track_bridges_a_long_gap(phantoms):
    """No canal over 90 mm (e.g. a run of slices with open rings): both ends still found."""
    vol, truth = phantoms["none"]
    arr = vol.array.copy()
    gap = slice(int(0.45 * SHAPE[0]), int(0.45 * SHAPE[0]) + int(90 / SPACING[0]))
    arr[gap][arr[gap] > 100] = 40  # no bone at all there
    res = run_pipeline(vol.with_array(arr))
    z_in = np.clip(np.rint(np.arange(res.resampled.shape[0]) / SPACING[0]).astype(int), 0,
                   SHAPE[0] - 1)  # fmt: skip
    ring = truth["ring"][z_in]
    below = ring & (z_in < gap.start)
    above = ring & (z_in >= gap.stop)
    assert res.canal_found[below].mean() >= 0.9
    assert res.canal_found[above].mean() >= 0.9
    assert not res.canal_found[(z_in > gap.start) & (z_in < gap.stop - 1)].any()


def test_canal_behind_osteoporotic_bodies(synthetic_ct):
    """Small bodies with marrow below 100 HU are holes in front of the canal too."""
    arr, truth = synthetic_ct(SHAPE, SPACING, hips="none", body_mm=(17.0, 13.0), body_hu=40)
    res = run_pipeline(Volume(arr, spacing=SPACING))
    det = res.canal
    # the bodies' marrow gives canal-sized candidates well in front of the canal
    y_mm = truth["canal"][:, 0].mean() * SPACING[1]
    assert np.sum(det.candidates[:, 1] < y_mm - 20) > 20
    z_in = np.clip(np.rint(res.canal_centres[:, 0] / SPACING[0]).astype(int), 0, SHAPE[0] - 1)
    err = np.hypot(res.canal_centres[:, 1] - truth["canal"][z_in, 0] * SPACING[1],
                   res.canal_centres[:, 2] - truth["canal"][z_in, 1] * SPACING[2])  # fmt: skip
    assert np.median(err) <= 2.0
    # hollow bodies (marrow below the window) are still bodies: no orientation doubt
    assert res.decisions["orientation"] == "ok"
    assert res.warnings == ()


def test_orientation_doubt_on_a_flipped_phantom(phantoms):
    """Bodies behind the canal (anterior-posterior axis flipped, header kept): a warning."""
    vol, _ = phantoms["both"]
    res = run_pipeline(vol.with_array(np.ascontiguousarray(vol.array[:, ::-1])))
    assert res.decisions["orientation"] == "doubt"
    assert len(res.warnings) == 1 and "header" in res.warnings[0]
    # the box takes the larger margin on both sides of the canal
    p = PreprocessParams()
    m = max(p.crop_margin_anterior_mm, p.crop_margin_posterior_mm)
    (_, _), (y0, y1), _ = res.crop_box
    ys = res.canal_centres[:, 1]  # voxels of the 1 mm grid
    assert y0 <= max(0, ys.min() - m + 1)
    assert y1 >= min(res.resampled.shape[1], ys.max() + m)
