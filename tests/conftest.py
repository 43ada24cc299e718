"""Shared fixtures: paths of the real CT samples (copied into the repo, see tests/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "napari_vertebra" / "_sample_data"
DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def lumbar_ct_path() -> Path:
    """TotalSegmentator abdomen/pelvis CT, 3 mm, RAS (the bundled sample)."""
    return SAMPLE_DIR / "example_ct.nii.gz"


@pytest.fixture(scope="session")
def lumbar_labels_path() -> Path:
    """TotalSegmentator v2 label map of the lumbar sample (27 L5 .. 33 T11, 77/78 hips)."""
    return SAMPLE_DIR / "example_seg_fast_force_split.nii.gz"


@pytest.fixture(scope="session")
def tptbox_ct_path() -> Path:
    """TPTBox lumbar crop, 1.5 mm, stored PIR."""
    return DATA_DIR / "tptbox-l3" / "sub-ct_label-22_ct.nii.gz"


@pytest.fixture(scope="session")
def tptbox_labels_path() -> Path:
    """VerSe-id vertebra mask of the TPTBox crop (21 L2, 22 L3, 23 L4)."""
    return DATA_DIR / "tptbox-l3" / "sub-ct_seg-vert_label-22_msk.nii.gz"


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    """Folder of 20 axial DICOM slices."""
    return DATA_DIR / "totalseg-dicom" / "example_ct_dicom"


@pytest.fixture(scope="session")
def dicom_labels_path() -> Path:
    """TotalSegmentator label map on the DICOM folder's grid."""
    return DATA_DIR / "totalseg-dicom" / "example_seg_dicom.nii.gz"
