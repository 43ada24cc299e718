"""Resampling straightens any input onto an axis-aligned LPS grid (issue 9)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from core_helpers import CORD, LUMBAR_VERTEBRAE
from malformed import rotated, rotation

from napari_vertebra.core import (
    Volume,
    read_ct,
    read_labels,
    resample_isotropic,
    resample_labels,
    run_pipeline,
)
from napari_vertebra.core.io import write_volume

#: Lumbar vertebra ids from superior (T11) to inferior (L5).
TOP_DOWN = sorted(LUMBAR_VERTEBRAE, reverse=True)

ROTATIONS = {
    "46 deg about x": rotation("x", 46.0),
    "46 deg about z": rotation("z", 46.0),
    "20 deg about x and y": rotation("y", 20.0) @ rotation("x", 20.0),
}


def _centroids(labels: Volume, ids) -> dict[int, np.ndarray]:
    """LPS centroid (x, y, z mm) of each id."""
    out = {}
    for v in ids:
        zyx = np.argwhere(labels.array == v)
        out[v] = labels.index_to_physical(zyx.mean(axis=0))
    return out


def _index_centroids(labels: Volume, ids) -> dict[int, np.ndarray]:
    return {v: np.argwhere(labels.array == v).mean(axis=0) for v in ids}


@pytest.mark.parametrize("name", list(ROTATIONS))
def test_rotated_scan_is_straightened(lumbar, name):
    ct, labels = lumbar
    rot = ROTATIONS[name]
    ct_r, lab_r = rotated(ct, rot), rotated(labels, rot)
    res = resample_isotropic(ct_r, 2.0)
    lab = resample_labels(lab_r, res)
    np.testing.assert_array_equal(res.direction, np.eye(3))
    assert lab.same_grid(res)
    # the grid is the bounding box of the rotated extent: no voxel of the input is lost
    ids = [*LUMBAR_VERTEBRAE, CORD]
    a = labels.array
    border = set(np.unique(a[[0, -1]])) | set(np.unique(a[:, [0, -1]]))
    border |= set(np.unique(a[:, :, [0, -1]]))
    for v in set(ids) - border:  # cut by the scan's edge: extrapolated by up to 1 voxel
        n_in = (labels.array == v).sum() * np.prod(labels.spacing)
        n_out = (lab.array == v).sum() * np.prod(lab.spacing)
        assert abs(n_out / n_in - 1) < 0.1, (v, n_out / n_in)
    # every structure is where the rotated header puts it
    want = _centroids(lab_r, ids)
    got = _centroids(lab, ids)
    for v in ids:
        assert np.linalg.norm(got[v] - want[v]) < 2.0, (v, got[v], want[v])
    # in array terms: z runs inferior to superior, T11 above T12 above ... L5
    zc = [_index_centroids(lab, [v])[v][0] for v in TOP_DOWN]
    assert all(a > b for a, b in itertools.pairwise(zc)), zc
    # outside the rotated field of view: air and background, never NaN or edge smears
    if "46" in name:
        corner = (slice(0, 3), slice(0, 3), slice(0, 3))
        corners = [res.array[corner], res.array[:, :3, -3:], res.array[:, -3:, :3]]
        assert any(np.all(c == -1024) for c in corners)
    assert res.array.min() >= ct.array.min()


@pytest.mark.parametrize("name", ["none", "46 deg about z", "20 deg about x and y"])
def test_cord_stays_posterior_to_the_bodies(lumbar, name):
    """After straightening, y grows posteriorly: the cord lies behind each body (T12, L1)."""
    ct, labels = lumbar
    rot = ROTATIONS.get(name, np.eye(3))
    res = resample_isotropic(rotated(ct, rot), 2.0)
    lab = resample_labels(rotated(labels, rot), res).array
    for v in (32, 31):  # T12, L1: levels of the cord (T11 is a sliver at the top)
        zz = np.nonzero((lab == v).any(axis=(1, 2)))[0]
        cord = np.argwhere(lab[zz] == CORD)
        bone = np.argwhere(lab[zz] == v)
        body_y = np.percentile(bone[:, 1], 25)  # the anterior part: the body
        assert cord[:, 1].mean() > body_y + 5, (v, cord[:, 1].mean(), body_y)


def test_46_degree_file_reads_and_resamples_to_lps(tmp_path, lumbar):
    """A file whose direction is 46 degrees off the axes: DICOMOrient on reading swaps its
    axes; the resampling must still give LPS axes."""
    ct, labels = lumbar
    rot = ROTATIONS["46 deg about x"]
    write_volume(rotated(ct, rot), tmp_path / "ct.nii.gz")
    write_volume(rotated(labels, rot), tmp_path / "labels.nii.gz")
    ct_r = read_ct(tmp_path / "ct.nii.gz")
    assert ct_r.warnings == ()
    lab_r = read_labels(tmp_path / "labels.nii.gz", like=ct_r)
    res = resample_isotropic(ct_r, 2.0)
    lab = resample_labels(lab_r, res)
    np.testing.assert_array_equal(res.direction, np.eye(3))
    zc = [_index_centroids(lab, [v])[v][0] for v in TOP_DOWN]
    assert all(a > b for a, b in itertools.pairwise(zc)), zc
    want = _centroids(rotated(labels, rot), TOP_DOWN)
    got = _centroids(lab, TOP_DOWN)
    for v in TOP_DOWN:
        assert np.linalg.norm(got[v] - want[v]) < 2.0


@pytest.mark.slow
def test_pipeline_on_an_oblique_scan(lumbar):
    """20 degrees about two axes: canal found behind the bodies, vertebrae in order in the MIP."""
    ct, labels = lumbar
    rot = ROTATIONS["20 deg about x and y"]
    r = run_pipeline(rotated(ct, rot), labels=rotated(labels, rot))
    np.testing.assert_array_equal(r.resampled.direction, np.eye(3))
    assert np.isfinite(r.mip).all()
    crop = r.labels_cropped.array
    nz = crop.shape[0]
    rows = [(nz - 1 - np.nonzero(crop == v)[0]).mean() for v in TOP_DOWN]
    assert all(a < b for a, b in itertools.pairwise(rows)), rows  # row 0 superior
    full = r.labels_resampled.array
    kept = np.isin(crop, TOP_DOWN).sum() / np.isin(full, TOP_DOWN).sum()
    assert kept >= 0.98
    # canal centres lie behind the vertebral bodies on the slices of T12..L3
    for v in (32, 31, 30, 29):
        zz = np.nonzero((full == v).any(axis=(1, 2)))[0]
        found = zz[r.canal_found[zz]]
        assert len(found) > 5
        body_y = np.percentile(np.argwhere(full[found] == v)[:, 1], 25)
        assert np.median(r.canal_centres[found, 1]) > body_y + 5


def test_ct_and_labels_agree_at_the_top_slice(lumbar):
    """Both extrapolate the same way past the last input slice (3 mm -> 1 mm)."""
    ct, labels = lumbar
    res = resample_isotropic(ct, 1.0)
    lab = resample_labels(labels, res)
    top_in = labels.array[-1] > 0
    assert top_in.sum() > 1000  # the sample is labelled up to its top slice
    n = [(lab.array[z] > 0).sum() for z in (-3, -2, -1)]
    assert n[-1] > 0.9 * n[-3], n
    np.testing.assert_array_equal(lab.array[-1], lab.array[-2])
    np.testing.assert_array_equal(res.array[-1], res.array[-2])
    # the top output slices carry the top input slice (nearest), not air
    assert (res.array[-1] > 100).sum() > 0.9 * (ct.array[-1] > 100).sum() * 9


def test_axis_aligned_input_keeps_its_grid():
    """An LPS input: origin kept, size round(n * s), values at input voxels unchanged."""
    rng = np.random.default_rng(3)
    arr = rng.integers(-1000, 1500, (6, 7, 8)).astype(np.int16)
    vol = Volume(arr, spacing=(2.0, 1.5, 0.5), origin=(5.0, -3.0, 7.0))
    out = resample_isotropic(vol, 0.5)
    assert out.shape == (24, 21, 8)
    assert out.origin == vol.origin
    np.testing.assert_array_equal(out.array[::4, ::3, :], arr)
    assert out.array.min() >= arr.min()  # nothing filled with air


def test_flipped_input_is_turned_to_lps():
    """A RAS-stored grid (x and y flipped): the output's axes run right-left, front-back."""
    arr = np.zeros((4, 10, 12), np.int16) - 1000
    arr[:, 2, 3] = 700  # one bright column
    d = np.diag([-1.0, -1.0, 1.0])
    vol = Volume(arr, spacing=(2.0, 1.0, 1.0), origin=(20.0, 30.0, 0.0), direction=d)
    out = resample_isotropic(vol, 1.0)
    np.testing.assert_array_equal(out.direction, np.eye(3))
    bright = np.argwhere(out.array == 700)
    xyz = out.index_to_physical(bright)
    want = vol.index_to_physical(np.array([0.0, 2.0, 3.0]))
    np.testing.assert_allclose(xyz[:, :2], np.tile(want[:2], (len(xyz), 1)))
    assert out.array.min() == -1000  # the flipped box is covered, nothing filled


def test_resample_to_sitk_matches_sitk_resample_on_an_oblique_grid(lumbar):
    """Inside the field of view the values are SimpleITK's linear resample onto LPS."""
    ct, _ = lumbar
    rot = ROTATIONS["20 deg about x and y"]
    ct_r = rotated(ct, rot)
    res = resample_isotropic(ct_r, 3.0)
    ref = sitk.Resample(ct_r.to_sitk(), res.to_sitk(), sitk.Transform(), sitk.sitkLinear, -5000.0)
    ref = sitk.GetArrayFromImage(ref)
    inside = ref != -5000
    np.testing.assert_array_equal(res.array[inside], ref[inside])
    assert inside.mean() < 0.95  # a rotated box leaves corners outside
    assert np.all(res.array[~inside] >= ct.array.min())
    assert (res.array[~inside] == -1024).mean() > 0.5  # mostly filled with air


def test_axis_aligned_fast_path_matches_simpleitk(lumbar):
    """The separable resample of an LPS input equals SimpleITK's (linear, rounded; nearest)."""
    ct, labels = lumbar
    for vol, interp, name in ((ct, sitk.sitkLinear, "linear"),
                              (labels, sitk.sitkNearestNeighbor, "nearest")):  # fmt: skip
        small = Volume(vol.array[:40], vol.spacing, vol.origin, vol.direction)
        ours = resample_isotropic(small, 1.2, name)
        img = sitk.Cast(small.to_sitk(), sitk.sitkFloat64)
        ref = sitk.Resample(img, ours.to_sitk(), sitk.Transform(), interp, 0.0, sitk.sitkFloat64)
        ref = sitk.GetArrayFromImage(ref)
        # compare where SimpleITK interpolates (inside the input's voxel extent)
        core = np.s_[:-3, :-3, :-3]
        diff = np.abs(ours.array[core].astype(float) - np.rint(ref[core]))
        assert diff.max() <= 1, name
        assert (diff > 0).mean() < 5e-3, name  # float32 vs float64 at x.5
