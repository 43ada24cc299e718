"""Pure preprocessing core: CT I/O, the Volume contract, the pipeline of Wang et al. 2020.

Imports numpy, SimpleITK, scipy and scikit only (no Qt, napari or torch).
"""

from .io import (
    CT_SUFFIXES,
    CTReadError,
    MultipleSeriesError,
    check_ct,
    read_ct,
    read_labels,
    read_volume,
)
from .params import STEP_PARAMS, PreprocessParams
from .pipeline import STEPS, PipelineResult, mip_labels_to_volume, run_pipeline
from .preprocess import (
    CanalDetection,
    CropBox,
    CropDecision,
    apply_crop,
    bony_midline,
    crop_spine,
    decide_crop,
    detect_canal,
    detect_canal_details,
    find_canal_candidates,
    resample_isotropic,
    resample_labels,
    sagittal_mip,
    window_hu,
)
from .volume import Volume

__all__ = [
    "CT_SUFFIXES",
    "STEPS",
    "STEP_PARAMS",
    "CTReadError",
    "CanalDetection",
    "CropBox",
    "CropDecision",
    "MultipleSeriesError",
    "PipelineResult",
    "PreprocessParams",
    "Volume",
    "apply_crop",
    "bony_midline",
    "check_ct",
    "crop_spine",
    "decide_crop",
    "detect_canal",
    "detect_canal_details",
    "find_canal_candidates",
    "mip_labels_to_volume",
    "read_ct",
    "read_labels",
    "read_volume",
    "resample_isotropic",
    "resample_labels",
    "run_pipeline",
    "sagittal_mip",
    "window_hu",
]
