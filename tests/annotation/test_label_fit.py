"""Label maps that do not fit their convention are refused, on every path that turns a
3D label map into polygons (``labels-to-coco``, ``dataset build``, and
``labels_to_annotations`` behind the Annotate widget's "Labels from 3D"); the real
samples fit without a warning."""

from __future__ import annotations

import numpy as np
import pytest

from napari_vertebra.annotation.from3d import labels_to_annotations
from napari_vertebra.annotation.label_fit import LabelMapError, check_label_fit
from napari_vertebra.core.io import read_ct, read_labels, write_volume

# TotalSegmentator v2 ids of the lumbar sample
TS_L1, TS_L3 = 31, 29


@pytest.fixture(scope="module")
def lumbar_volumes(lumbar_ct_path, lumbar_labels_path):
    ct = read_ct(lumbar_ct_path)
    return ct, read_labels(lumbar_labels_path, like=ct)


@pytest.fixture
def swapped_labels(tmp_path, lumbar_volumes):
    """The lumbar label map with L1 and L3 swapped, as a file."""
    _, labels = lumbar_volumes
    arr = labels.array.copy()
    arr[labels.array == TS_L1], arr[labels.array == TS_L3] = TS_L3, TS_L1
    path = tmp_path / "swapped.nii.gz"
    write_volume(labels.with_array(arr), path)
    return path


@pytest.fixture
def empty_labels(tmp_path, lumbar_volumes):
    """An all-zero label map on the lumbar CT's grid, as a file."""
    _, labels = lumbar_volumes
    path = tmp_path / "empty.nii.gz"
    write_volume(labels.with_array(np.zeros_like(labels.array)), path)
    return path


def _refused(cli, capsys, files_in, out, args) -> str:
    """Run the command: status 2, nothing under ``out``, no traceback; the error text."""
    assert cli([*args, "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error:")
    assert files_in(out) == set()
    return err


def test_verse_ids_read_on_a_totalsegmentator_map_are_refused(
    tmp_path, lumbar_ct_path, lumbar_labels_path, cli, capsys, files_in
):
    """Organs (TotalSegmentator 8..24) read as VerSe vertebrae: refused, naming the ids
    that are not bone and the convention that fits."""
    args = ["labels-to-coco", str(lumbar_ct_path), str(lumbar_labels_path)]
    err = _refused(cli, capsys, files_in, tmp_path / "out", [*args, "--convention", "verse"])
    assert str(lumbar_labels_path) in err
    assert "does not fit the 'verse' convention" in err
    assert "14 as T7 (median" in err and "not bone" in err
    assert "are not labels of this convention" in err and "77" in err
    assert "Read with the 'totalsegmentator' convention it fits (T11..L5)" in err


def test_verse_map_read_as_totalsegmentator_is_refused(
    tmp_path, tptbox_ct_path, tptbox_labels_path, cli, capsys, files_in
):
    args = ["labels-to-coco", str(tptbox_ct_path), str(tptbox_labels_path)]
    err = _refused(cli, capsys, files_in, tmp_path / "out", args)  # default: totalsegmentator
    assert "holds no id that this convention reads as a vertebra (ids present: 21..23)" in err
    assert "Read with the 'verse' convention it fits (L2..L4): try that convention" in err


def test_swapped_levels_are_refused_by_both_commands(
    tmp_path, lumbar_ct_path, swapped_labels, cli, capsys, files_in
):
    ct_lab = [str(lumbar_ct_path), str(swapped_labels)]
    err = _refused(cli, capsys, files_in, tmp_path / "coco", ["labels-to-coco", *ct_lab])
    assert "out of anatomical order" in err
    assert "T11, T12, L3, L2, L1, L4, L5" in err and "L3 lies above L2" in err
    assert str(swapped_labels) in err
    err = _refused(
        cli, capsys, files_in, tmp_path / "ds", ["dataset", "build", "--ct-labels", *ct_lab]
    )
    assert "out of anatomical order" in err


def test_empty_label_map_is_refused(tmp_path, lumbar_ct_path, empty_labels, cli, capsys, files_in):
    ct_lab = [str(lumbar_ct_path), str(empty_labels)]
    err = _refused(cli, capsys, files_in, tmp_path / "coco", ["labels-to-coco", *ct_lab])
    assert "holds no label (every voxel is 0)" in err and str(empty_labels) in err
    err = _refused(
        cli, capsys, files_in, tmp_path / "ds", ["dataset", "build", "--ct-labels", *ct_lab]
    )
    assert "holds no label" in err


def test_the_core_function_refuses_the_same_maps(
    lumbar_pipeline, tptbox_ct_path, tptbox_labels_path
):
    """labels_to_annotations (behind "Labels from 3D") raises LabelMapError, a ValueError
    the widget shows as its status line, naming the layer it was given."""
    ct, labels, result = lumbar_pipeline
    with pytest.raises(LabelMapError, match=r"^labels 'seg': .*'verse' convention"):
        labels_to_annotations(ct, labels, "verse", result=result, labels_name="labels 'seg'")
    with pytest.raises(LabelMapError, match=r"'class ids' convention.*try that"):
        labels_to_annotations(ct, labels, "class ids", result=result)
    tct = read_ct(tptbox_ct_path)
    tlab = read_labels(tptbox_labels_path, like=tct)
    with pytest.raises(ValueError, match="'verse' convention it fits"):
        labels_to_annotations(tct, tlab, "totalsegmentator")


def test_real_samples_fit_without_a_warning(
    lumbar_pipeline, tptbox_ct_path, tptbox_labels_path, dicom_dir, dicom_labels_path
):
    ct, labels, result = lumbar_pipeline
    for class_set in ("paper", "extended"):
        im = labels_to_annotations(
            ct, labels, "totalsegmentator", result=result, class_set=class_set
        )
        assert im.warnings == [] and len(im.annotations) >= 6
    assert check_label_fit(result, "totalsegmentator") == []
    for ct_path, lab_path, conv, n in (
        (tptbox_ct_path, tptbox_labels_path, "verse", 3),
        (dicom_dir, dicom_labels_path, "totalsegmentator", 2),
    ):
        ct = read_ct(ct_path)
        im = labels_to_annotations(ct, read_labels(lab_path, like=ct), conv)
        assert im.warnings == [] and len(im.annotations) == n, (ct_path, im.warnings)


def test_preprocessed_class_ids_fit(lumbar_pipeline):
    """The Annotate widget's path after Preprocess CT: a class-id map read as "class ids"."""
    from napari_vertebra.core.labels import to_class_map

    ct, labels, _ = lumbar_pipeline
    classes = labels.with_array(to_class_map(labels.array, "totalsegmentator"))
    im = labels_to_annotations(ct, classes, "class ids")
    assert [a.name for a in im.annotations] == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert im.warnings == []


def test_unknown_ids_are_named_in_a_warning(tmp_path, lumbar_volumes, lumbar_ct_path, cli, capsys):
    """An id the convention does not define (here 200 on a TotalSegmentator map) is
    ignored with a warning that names it; the polygons are those of the real map."""
    _, labels = lumbar_volumes
    arr = labels.array.copy()
    arr[:5, :5, :5] = 200
    path = tmp_path / "extra.nii.gz"
    write_volume(labels.with_array(arr), path)
    out = tmp_path / "out"
    assert cli(["labels-to-coco", str(lumbar_ct_path), str(path), "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "ids 200 are not labels of the 'totalsegmentator'" in err
    assert (out / "annotations.json").is_file()


def test_levels_running_feet_to_head_name_the_flip(lumbar_pipeline):
    """All levels reversed (the class order upside down) names a head-feet flip."""
    _, _, result = lumbar_pipeline
    reverse = {27 + k: f"{n}" for k, n in enumerate("T11 T12 L1 L2 L3 L4 L5".split())}
    with pytest.raises(LabelMapError, match=r"feet to head.*flipped head-feet"):
        check_label_fit(result, reverse)
