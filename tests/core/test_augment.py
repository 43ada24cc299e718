"""3D augmentation of a real scan before the projection (core/augment.py)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.core import read_ct, read_labels
from napari_vertebra.core.augment import ScanAugmentation, augment_scan, rotation_matrix

VERTEBRAE = tuple(range(25, 51))  # TotalSegmentator v2 sacrum .. C1
OFF = ScanAugmentation(
    rotate_deg=(0.0, 0.0, 0.0), scale=0.0, fov_prob=0.0, slice_mm=(1.0, 1.0), hu_gain=0.0,
    hu_shift=0.0, noise_hu=0.0, vertebra_density=0.0, rib_density=0.0, contrast_hu=(0.0, 0.0),
)  # fmt: skip


@pytest.fixture(scope="module")
def lumbar(lumbar_ct_path, lumbar_labels_path):
    ct = read_ct(lumbar_ct_path)
    return ct, read_labels(lumbar_labels_path, like=ct)


def test_everything_off_changes_nothing(lumbar):
    ct, labels = lumbar
    a, b, drawn = augment_scan(ct, labels, np.random.default_rng(0), OFF, VERTEBRAE, True)
    assert a.same_grid(ct) and b.same_grid(labels)
    np.testing.assert_array_equal(a.array, ct.array)
    np.testing.assert_array_equal(b.array, labels.array)
    assert drawn["roll_tilt_lean_deg"] == [0.0, 0.0, 0.0]


def test_ct_and_labels_stay_on_one_grid_and_the_seed_repeats(lumbar):
    ct, labels = lumbar
    runs = [
        augment_scan(ct, labels, np.random.default_rng(5), ScanAugmentation(), VERTEBRAE, True)
        for _ in range(2)
    ]
    (a, b, d1), (a2, _, d2) = runs
    assert a.same_grid(b)
    assert d1 == d2
    np.testing.assert_array_equal(a.array, a2.array)
    assert a.array.dtype == ct.array.dtype
    # rotation only in the geometry: the direction stays a rotation
    np.testing.assert_allclose(a.direction @ a.direction.T, np.eye(3), atol=1e-9)


def test_a_field_of_view_cut_keeps_part_of_the_spine(lumbar):
    ct, labels = lumbar
    p = ScanAugmentation(**{**OFF.as_dict(), "fov_prob": 1.0, "fov_min_mm": 40.0})
    for seed in range(6):
        _, b, drawn = augment_scan(ct, labels, np.random.default_rng(seed), p, VERTEBRAE)
        assert np.isin(b.array, VERTEBRAE).any()
        assert b.shape[0] * b.spacing[0] == pytest.approx(drawn["fov_z_mm"])
        assert drawn["fov_z_mm"] >= 40.0 - 3.0
        assert b.shape[0] <= labels.shape[0]


def test_thick_slices_average_and_space_the_slices(lumbar):
    ct, labels = lumbar
    p = ScanAugmentation(**{**OFF.as_dict(), "slice_mm": (6.0, 6.0)})  # 2 x 3 mm
    a, b, drawn = augment_scan(ct, labels, np.random.default_rng(0), p, VERTEBRAE)
    assert drawn["slice_mm"] == 6.0
    assert a.spacing[0] == 6.0 and a.shape[0] == labels.shape[0] // 2
    # labels keep their ids (nearest slices, never averaged)
    assert set(np.unique(b.array)) <= set(np.unique(labels.array))


def test_bone_density_scales_only_the_vertebrae_bone(lumbar):
    ct, labels = lumbar
    p = ScanAugmentation(**{**OFF.as_dict(), "vertebra_density": 0.3})
    a, _, drawn = augment_scan(ct, labels, np.random.default_rng(1), p, VERTEBRAE)
    f = drawn["vertebra_density"]
    spine = np.isin(labels.array, VERTEBRAE) & (ct.array > 100)
    got = a.array[spine].astype(float)
    want = 100 + (ct.array[spine].astype(float) - 100) * f
    assert np.abs(got - want).max() <= 1.0  # rounded to the CT's integer HU
    np.testing.assert_array_equal(a.array[~np.isin(labels.array, VERTEBRAE)],
                                  ct.array[~np.isin(labels.array, VERTEBRAE)])  # fmt: skip


def test_the_augmented_scan_projects_vertebrae_in_order(lumbar):
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.core.labels import EXTENDED

    ct, labels = lumbar
    whole = ScanAugmentation(fov_prob=0.0)  # position, slices and intensities change
    a, b, _ = augment_scan(ct, labels, np.random.default_rng(3), whole, VERTEBRAE, True)
    im = labels_to_annotations(a, b, "totalsegmentator", class_set="extended")
    rows = [np.concatenate(x.polygons)[:, 0].mean() for x in im.annotations]
    ranks = [EXTENDED.rank(x.class_id) for x in im.annotations]
    assert len(im.annotations) >= 4
    assert np.all(np.diff(rows) > 0) and np.all(np.diff(ranks) > 0)


def test_rotation_matrix_angles():
    r = rotation_matrix(90, 0, 0)
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)  # roll: x -> y
    r = rotation_matrix(0, 90, 0)
    np.testing.assert_allclose(r @ [0, 1, 0], [0, 0, 1], atol=1e-12)  # tilt: y -> z
