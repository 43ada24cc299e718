"""The VerSe and TotalSegmentator folder layouts, laid out from the real samples."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vertebra.annotation.layouts import (
    TOTALSEG_IDS,
    find_pairs,
    read_label_source,
)
from napari_vertebra.core import read_ct, read_labels


@pytest.fixture
def verse_folder(tmp_path, tptbox_ct_path, tptbox_labels_path):
    """dataset-verse/{rawdata,derivatives}/sub-verse900/... from the TPTBox sample."""
    root = tmp_path / "dataset-verse20training"
    raw = root / "rawdata" / "sub-verse900"
    der = root / "derivatives" / "sub-verse900"
    raw.mkdir(parents=True)
    der.mkdir(parents=True)
    shutil.copy(tptbox_ct_path, raw / "sub-verse900_dir-ax_ct.nii.gz")
    shutil.copy(tptbox_labels_path, der / "sub-verse900_dir-ax_seg-vert_msk.nii.gz")
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tptbox_labels_path)))  # (k, j, i)
    ctd = [{"direction": ["P", "I", "R"]}]
    for lab in (21, 22, 23):
        k, j, i = np.argwhere(mask == lab).mean(axis=0)
        ctd.append({"label": lab, "X": float(i), "Y": float(j), "Z": float(k)})
    (der / "sub-verse900_dir-ax_seg-subreg_ctd.json").write_text(json.dumps(ctd))
    return root


@pytest.fixture
def totalseg_folder(tmp_path, lumbar_ct_path, lumbar_labels_path):
    """s0001/ct.nii.gz with one mask per structure in s0001/segmentations/."""
    subject = tmp_path / "Totalsegmentator_dataset" / "s0001"
    seg = subject / "segmentations"
    seg.mkdir(parents=True)
    shutil.copy(lumbar_ct_path, subject / "ct.nii.gz")
    labels = sitk.ReadImage(str(lumbar_labels_path))
    arr = sitk.GetArrayFromImage(labels)
    for name, sid in TOTALSEG_IDS.items():
        if (arr == sid).any():
            m = sitk.GetImageFromArray((arr == sid).astype(np.uint8))
            m.CopyInformation(labels)
            sitk.WriteImage(m, str(seg / f"{name}.nii.gz"))
    # a structure this reader leaves out
    m = sitk.GetImageFromArray((arr == 5).astype(np.uint8))
    m.CopyInformation(labels)
    sitk.WriteImage(m, str(seg / "liver.nii.gz"))
    return tmp_path / "Totalsegmentator_dataset"


def test_verse_layout_pairs_the_ct_with_its_mask(verse_folder, tptbox_labels_path):
    (pair,) = find_pairs(verse_folder)
    assert pair.convention == "verse"
    assert pair.scan_name == "sub-verse900_dir-ax"
    ct = read_ct(pair.ct)
    labels = read_label_source(pair.labels, like=ct)
    np.testing.assert_array_equal(labels.array, read_labels(tptbox_labels_path, like=ct).array)
    assert labels.warnings == ()  # the centroid file agrees with the mask


def test_a_verse_centroid_file_that_disagrees_is_said(verse_folder):
    (pair,) = find_pairs(verse_folder)
    ctd = next(verse_folder.rglob("*_ctd.json"))
    data = json.loads(ctd.read_text())
    data.append({"label": 24, "X": 1.0, "Y": 1.0, "Z": 1.0})  # L5, not in the mask
    ctd.write_text(json.dumps(data))
    labels = read_label_source(pair.labels, like=read_ct(pair.ct))
    assert any("[24]" in w for w in labels.warnings)


def test_a_verse_ct_without_its_mask_is_named(verse_folder):
    other = verse_folder / "rawdata" / "sub-verse901"
    other.mkdir()
    shutil.copy(next(verse_folder.rglob("*_ct.nii.gz")), other / "sub-verse901_ct.nii.gz")
    with pytest.raises(ValueError, match="no derivatives"):
        find_pairs(verse_folder)


def test_totalsegmentator_masks_become_one_label_map(totalseg_folder, lumbar_labels_path):
    from napari_vertebra.annotation.from3d import labels_to_annotations

    (pair,) = find_pairs(totalseg_folder)
    assert (pair.convention, pair.scan_name) == ("totalsegmentator", "s0001")
    ct = read_ct(pair.ct)
    labels = read_label_source(pair.labels, like=ct)
    original = read_labels(lumbar_labels_path, like=ct).array
    kept = np.isin(original, list(TOTALSEG_IDS.values()))
    np.testing.assert_array_equal(labels.array[kept], original[kept])
    assert not labels.array[~kept].any()  # the liver is not read
    a = labels_to_annotations(ct, labels, "totalsegmentator")
    b = labels_to_annotations(ct, read_labels(lumbar_labels_path, like=ct), "totalsegmentator")
    assert [x.name for x in a.annotations] == [x.name for x in b.annotations]


def test_a_folder_of_neither_layout_says_what_it_expected(tmp_path):
    with pytest.raises(ValueError, match="neither a VerSe folder"):
        find_pairs(tmp_path)


def test_dataset_build_reads_both_layouts_with_3d_augmentation(
    tmp_path, verse_folder, totalseg_folder
):
    from napari_vertebra.annotation.dataset import build_dataset

    out = tmp_path / "data"
    build_dataset(
        [verse_folder, totalseg_folder], out, views_per_image=0, fractions=(1, 0, 0),
        augment_3d=1, class_set="extended",
    )  # fmt: skip
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["augment_3d"] == 1
    assert sorted(summary["splits"]["train"]["scans"]) == ["s0001", "sub-verse900_dir-ax"]
    coco = json.loads((out / "train" / "annotations.json").read_text())
    per_scan = {}
    for im in coco["images"]:
        per_scan[im["scan"]] = per_scan.get(im["scan"], 0) + 1
    assert per_scan == {"s0001": 2, "sub-verse900_dir-ax": 2}  # its own MIP + 1 changed
    names = {c["id"]: c["name"] for c in coco["categories"]}
    used = {names[a["category_id"]] for a in coco["annotations"]}
    assert {"L2", "L3", "L4", "L5", "S1"} <= used
