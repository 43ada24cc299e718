"""Pure preprocessing core: CT I/O, the Volume contract, the pipeline of Wang et al. 2020.

Imports numpy, SimpleITK, scipy and scikit only (no Qt, napari or torch).
"""

from .canal import CanalDetection, detect_canal, detect_canal_details, find_canal_candidates
from .crop import CropBox, CropDecision, apply_crop, bony_midline, crop_spine, decide_crop
from .dicom import MultipleSeriesError
from .errors import CTReadError
from .io import CT_SUFFIXES, check_ct, read_ct, read_labels, read_volume
from .mip import sagittal_mip
from .params import STEP_PARAMS, PreprocessParams
from .pipeline import STEPS, PipelineResult, mip_labels_to_volume, run_pipeline
from .resample import resample_isotropic, resample_labels
from .volume import Volume
from .window import window_hu

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
