"""Acceptance of the preprocessing pipeline on the real samples (issue 2)."""

from __future__ import annotations

import numpy as np
from core_helpers import CORD, HIPS, LUMBAR_VERTEBRAE, dice

from napari_vertebra.core import mip_labels_to_volume


def _cord_slices(result):
    cord = result.labels_resampled.array == CORD
    return cord, np.nonzero(cord.any(axis=(1, 2)))[0]


def test_canal_given_on_cord_slices_and_close_to_cord(lumbar_result):
    r = lumbar_result
    cord, zs = _cord_slices(r)
    assert len(zs) > 100
    centres = r.canal_centres[zs]
    given = np.isfinite(centres).all(axis=1)
    assert given.mean() >= 0.90
    dist = []
    for z, c in zip(zs, centres, strict=True):
        yy, xx = np.nonzero(cord[z])
        dist.append(np.hypot((yy.mean() - c[1]) * r.resampled.spacing[1],
                             (xx.mean() - c[2]) * r.resampled.spacing[2]))  # fmt: skip
    dist = np.array(dist)
    found = r.canal_found[zs]
    print(f"cord slices {len(zs)}, found {found.mean():.1%}, median distance "
          f"{np.median(dist):.2f} mm (found only {np.median(dist[found]):.2f} mm)")  # fmt: skip
    assert np.median(dist) <= 5.0
    # the detector itself finds the canal on a fair share of slices (the rest carried)
    assert found.mean() >= 0.3


def test_crop_keeps_lumbar_vertebrae_and_removes_hips(lumbar_result):
    r = lumbar_result
    full, crop = r.labels_resampled.array, r.labels_cropped.array
    ids = list(LUMBAR_VERTEBRAE)
    kept = np.isin(crop, ids).sum() / np.isin(full, ids).sum()
    hips_removed = 1 - np.isin(crop, HIPS).sum() / np.isin(full, HIPS).sum()
    print(f"L5..T11 kept {kept:.4f}, hip voxels removed {hips_removed:.4f}, box {r.crop_box}")
    assert kept >= 0.98
    assert hips_removed >= 0.90
    (z0, z1), _, _ = r.crop_box
    assert (z0, z1) == (0, r.resampled.shape[0])  # z covers the whole scan


def _brightest_label(r, labels_grid):
    """Label of the brightest voxel of every MIP ray (0 where the ray has no bone)."""
    rows, cols = np.nonzero(r.mip > 0)
    idx = r.mip_to_volume_index(rows, cols)
    out = np.zeros(r.mip.shape, np.int32)
    out[rows, cols] = labels_grid[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def test_mip_rays_through_l5_show_l5(lumbar_result):
    r = lumbar_result
    crop = r.labels_cropped.array
    l5_rays = (crop == 27).any(axis=2)[::-1]  # MIP pixels whose ray crosses L5
    brightest = _brightest_label(r, r.labels_resampled.array)
    purity = (brightest[l5_rays] == 27).mean()
    # the same measure without the crop (whole resampled volume)
    full = r.windowed.array
    am = full.argmax(axis=2)
    lab_full = np.take_along_axis(r.labels_resampled.array, am[..., None], axis=2)[..., 0]
    l5_full = (r.labels_resampled.array == 27).any(axis=2)
    purity_uncropped = (lab_full[l5_full] == 27).mean()
    print(f"L5 purity in the MIP: cropped {purity:.3f}, uncropped {purity_uncropped:.3f}")
    assert purity >= 0.85
    assert purity > purity_uncropped


def test_mip_geometry(lumbar_result):
    r = lumbar_result
    (z0, z1), (y0, y1), (x0, _) = r.crop_box
    assert r.mip.shape == (z1 - z0, y1 - y0)
    assert r.mip.dtype == np.float32
    assert r.mip_argmax_x.shape == r.mip.shape
    np.testing.assert_array_equal(r.mip, r.cropped.array.max(axis=2)[::-1])
    # every MIP pixel maps back to the voxel that gave it
    rows, cols = np.nonzero(r.mip > 0)
    idx = r.mip_to_volume_index(rows, cols)
    np.testing.assert_array_equal(r.windowed.array[idx[:, 0], idx[:, 1], idx[:, 2]],
                                  r.mip[rows, cols])  # fmt: skip
    back = r.mip_pixel_of_index(idx)
    np.testing.assert_array_equal(back, np.stack([rows, cols], axis=1))
    # physical mm of the top-left pixel is the crop's superior-anterior corner
    xyz = r.mip_to_physical([0], [0])[0]
    corner = r.resampled.index_to_physical(np.array([z1 - 1, y0, x0 + r.mip_argmax_x[0, 0]]))
    np.testing.assert_allclose(xyz, corner)
    # head up: L5 below T12 in the MIP (rows grow inferiorly)
    crop = r.labels_cropped.array
    row = {v: (crop.shape[0] - 1 - np.nonzero(crop == v)[0]).mean() for v in (27, 32)}
    assert row[27] > row[32]


def test_labels_follow_geometry(lumbar_result, lumbar):
    r = lumbar_result
    _, labels = lumbar
    assert r.labels_resampled.same_grid(r.resampled)
    assert r.labels_cropped.same_grid(r.cropped)
    assert r.labels_cropped.array.dtype == labels.array.dtype
    assert set(np.unique(r.labels_resampled.array)) <= set(np.unique(labels.array))
    # volume of a vertebra is kept (nearest neighbour at 3 mm -> 1 mm: x27 voxels)
    n_in = (labels.array == 29).sum() * np.prod(labels.spacing)
    n_out = (r.labels_resampled.array == 29).sum() * np.prod(r.resampled.spacing)
    assert abs(n_out / n_in - 1) < 0.05


def test_mip_labels_back_to_volume(lumbar_result):
    r = lumbar_result
    brightest = _brightest_label(r, r.labels_resampled.array)
    mip_labels = np.where(np.isin(brightest, list(LUMBAR_VERTEBRAE)), brightest, 0)
    vol = mip_labels_to_volume(mip_labels, r)
    assert vol.shape == r.resampled.shape
    scores = {name: dice(vol == v, r.labels_resampled.array == v)
              for v, name in LUMBAR_VERTEBRAE.items() if v != 33}  # fmt: skip
    print("Dice of MIP labels carried back to 3D: "
          + ", ".join(f"{k} {s:.2f}" for k, s in scores.items()))  # fmt: skip
    assert min(scores.values()) >= 0.5
    # only bone voxels inside the crop are labelled
    assert np.all(r.windowed.array[vol > 0] > 0)


def test_tptbox_orientation(tptbox_result):
    r = tptbox_result
    crop = r.labels_cropped.array
    nz = crop.shape[0]
    rows, cols = {}, {}
    for v in (21, 22, 23):
        zz, yy, _ = np.nonzero(crop == v)
        assert len(zz) > 0, f"VerSe {v} cropped away"
        rows[v] = (nz - 1 - zz).mean()
        cols[v] = yy.mean()
    assert rows[21] < rows[22] < rows[23]  # L2 above L3 above L4
    # anterior on the left: L3's body (its most anterior part) lies left of the canal
    canal_col = np.median(r.canal_centres[r.canal_found, 1]) - r.crop_box[1][0]
    zz, yy, _ = np.nonzero(crop == 22)
    body_col = yy[yy < np.percentile(yy, 50)].mean()
    assert body_col < canal_col
    assert cols[22] < canal_col
    # and the MIP shows the bone there
    brightest = _brightest_label(r, r.labels_resampled.array)
    assert (brightest == 22).sum() > 100


def test_dicom_sample_pipeline(dicom_dir, dicom_labels_path):
    """The 20-slice DICOM sample (T11/T12): canal found, vertebrae kept by the crop."""
    from napari_vertebra.core import read_ct, read_labels, run_pipeline

    ct = read_ct(dicom_dir)
    r = run_pipeline(ct, labels=read_labels(dicom_labels_path, like=ct))
    assert r.resampled.spacing == (1.0, 1.0, 1.0)
    assert r.found_fraction >= 0.5
    full, crop = r.labels_resampled.array, r.labels_cropped.array
    kept = np.isin(crop, [32, 33]).sum() / np.isin(full, [32, 33]).sum()
    assert kept >= 0.98
    (_, _), (y0, y1), (x0, x1) = r.crop_box
    assert (y1 - y0) * (x1 - x0) < 0.1 * full.shape[1] * full.shape[2]  # a real crop
