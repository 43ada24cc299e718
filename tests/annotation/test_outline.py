"""One-click outlines by image analysis on synthetic 1 mm/px MIPs (issue 12, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_vertebra.annotation.outline import OutlineParams, outline_at, outline_mask_at
from napari_vertebra.annotation.polygons import check_polygon, dice, rasterize
from napari_vertebra.synth import synth_column

LUMBAR = ("L2", "L3", "L4", "L5")


@pytest.fixture(scope="module", params=[0, 2])
def column(request):
    """A synthetic sagittal MIP (1 mm/px) with whole-vertebra outlines, as from 3D labels."""
    return synth_column(np.random.default_rng(request.param), outline="whole")


def _masks(column) -> dict[str, np.ndarray]:
    return {a.name: rasterize(a.polygons, column.image.shape) for a in column.annotations}


def _deepest(mask: np.ndarray) -> tuple[int, int]:
    """The pixel of ``mask`` farthest from its border (inside the vertebral body)."""
    edt = ndi.distance_transform_edt(mask)
    r, c = np.unravel_index(int(np.argmax(edt)), edt.shape)
    return int(r), int(c)


@pytest.mark.parametrize("name", LUMBAR)
def test_click_inside_gives_the_vertebra_and_not_its_neighbours(column, name):
    masks = _masks(column)
    names = [a.name for a in column.annotations]
    point = _deepest(masks[name])
    poly = outline_at(column.image, point)
    assert poly is not None
    assert poly.ndim == 2 and poly.shape[1] == 2
    assert check_polygon(poly, column.image.shape, allow_touching=True) == []
    got = rasterize(poly, column.image.shape)
    assert got[point]
    assert dice(got, masks[name]) >= 0.8
    i = names.index(name)
    for other in names[max(0, i - 1) : i + 2]:
        if other != name:  # at most a sliver of each neighbour
            assert (got & masks[other]).sum() <= 0.1 * masks[other].sum(), other


def test_a_jittered_click_gives_about_the_same_outline(column):
    masks = _masks(column)
    r, c = _deepest(masks["L3"])
    a = outline_mask_at(column.image, (r, c))
    b = outline_mask_at(column.image, (r - 4.4, c + 3.6))
    assert a is not None and b is not None
    assert dice(a, b) >= 0.9


def test_background_and_outside_give_none(column):
    image = column.image
    anywhere = np.zeros(image.shape, bool)
    for m in _masks(column).values():
        anywhere |= m
    far = ndi.distance_transform_edt(image == 0) >= 6  # well away from any bone
    r, c = np.argwhere(far & ~anywhere)[0]
    assert outline_at(image, (r, c)) is None
    assert outline_at(image, (-5, 10)) is None
    assert outline_at(image, (10, image.shape[1] + 3)) is None
    assert outline_at(np.zeros((120, 80), np.float32), (60, 40)) is None


def test_an_implausible_size_is_refused(column):
    point = _deepest(_masks(column)["L3"])
    tiny_only = OutlineParams(max_area_mm2=200.0)  # no lumbar vertebra is that small
    assert outline_at(column.image, point, tiny_only) is None


def test_rejects_a_volume():
    with pytest.raises(ValueError, match="2D"):
        outline_at(np.zeros((4, 40, 40), np.float32), (20, 20))


def test_outline_modules_import_no_qt_napari_or_torch():
    """Image analysis is Qt-free and the model outline imports torch only when used."""
    import subprocess
    import sys

    code = (
        "import sys, napari_vertebra.annotation.outline, napari_vertebra.model.outline;"
        "bad = [m for m in ('qtpy', 'PyQt5', 'PyQt6', 'napari', 'torch') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("top", [255, 1500])
def test_pixel_noise_gives_none(top):
    """Issue 19: a noise picture got "outlines" (26 of 32 clicks); now none."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, top, (336, 136)).astype(np.float32)
    clicks = [(r, c) for r in range(20, 320, 40) for c in range(20, 130, 30)]
    assert [p for p in clicks if outline_at(noise, p) is not None] == []


def test_a_vertebra_cut_by_the_top_edge_gives_none(lumbar_ct_path, lumbar_labels_path):
    """Issue 19: T11 of the lumbar sample shows only at the MIP's top edge (10 rows); a
    click in it gave an outline mostly over T12 (Dice 0.38). T12 still gets its own."""
    from napari_vertebra.core import run_pipeline
    from napari_vertebra.core.io import read_ct, read_volume
    from napari_vertebra.core.labels import class_id, to_class_map
    from napari_vertebra.core.pipeline import mip_labels

    ct = read_ct(lumbar_ct_path)
    labels = ct.with_array(to_class_map(read_volume(lumbar_labels_path).array, "totalsegmentator"))
    result = run_pipeline(ct, labels=labels)
    lab = mip_labels(result)
    t11, t12 = lab == class_id("T11"), lab == class_id("T12")
    assert t11[0].any() and not t11[10:].any()
    r, c = _deepest(np.pad(t11, 1))  # the image edge counts as T11's border
    assert outline_at(result.mip, (r - 1, c - 1)) is None
    got = outline_mask_at(result.mip, _deepest(t12))
    assert got is not None and (got & t12).sum() >= 0.7 * got.sum()  # mostly T12
