"""Pure preprocessing core: CT I/O, the Volume contract, the pipeline of Wang et al. 2020.

Imports numpy, SimpleITK, scipy and scikit only (no Qt, napari or torch).
"""

from .io import CT_SUFFIXES, CTReadError, MultipleSeriesError, read_ct, read_labels
from .params import STEP_PARAMS, PreprocessParams
from .pipeline import STEPS, PipelineResult, mip_labels_to_volume, run_pipeline
from .preprocess import (
    CanalDetection,
    CropBox,
    apply_crop,
    crop_spine,
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
    "MultipleSeriesError",
    "PipelineResult",
    "PreprocessParams",
    "Volume",
    "apply_crop",
    "crop_spine",
    "detect_canal",
    "detect_canal_details",
    "find_canal_candidates",
    "mip_labels_to_volume",
    "read_ct",
    "read_labels",
    "resample_isotropic",
    "resample_labels",
    "run_pipeline",
    "sagittal_mip",
    "window_hu",
]
