"""Parameters of the preprocessing pipeline (defaults after Wang et al. 2020)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["STEP_PARAMS", "PreprocessParams"]


@dataclass(frozen=True)
class PreprocessParams:
    """Every setting of :func:`napari_vertebra.core.run_pipeline`.

    Distances are in mm, intensities in HU. Defaults follow the paper where it gives a
    value (1 mm voxels, window 100..1500 HU, k = 3 clusters); the canal radii come from
    anatomy (the adult spinal canal is about 12-25 mm across, so the largest circle
    inscribed in it has a radius of about 6-12 mm; 5..13 mm leaves room for partial
    volume; smaller holes are mostly marrow and noise).
    """

    #: Isotropic voxel size after resampling (mm).
    spacing_mm: float = 1.0
    #: SimpleITK interpolator of the CT: "linear", "nearest" or "bspline".
    interpolator: str = "linear"
    #: HU window; voxels outside [hu_min, hu_max] become 0.
    hu_min: float = 100.0
    hu_max: float = 1500.0
    #: Radius range of the circle inscribed in the canal (mm).
    canal_r_min_mm: float = 5.0
    canal_r_max_mm: float = 13.0
    #: A hole counts as round enough when its area is at most this multiple of the area
    #: of its inscribed circle (a circle is 1, the canal's rounded triangle about 1.5-2.5).
    canal_max_elongation: float = 3.5
    #: A found centre farther than this from the running median of its neighbours
    #: (along z) is rejected as an outlier (mm).
    canal_outlier_mm: float = 12.0
    #: Number of k-means clusters of circle centres (spine + two hips).
    n_clusters: int = 3
    #: Clusters whose centres are closer than this in x (left-right) are merged: they
    #: are not a spine with hips beside it (mm).
    min_cluster_separation_mm: float = 40.0
    #: Crop margins around the canal track (mm): left-right, towards the front
    #: (vertebral bodies) and towards the back (spinous processes).
    crop_margin_lr_mm: float = 45.0
    crop_margin_anterior_mm: float = 55.0
    crop_margin_posterior_mm: float = 45.0
    #: Strong evidence for the paper's crop (else a safe box, with a warning): the found
    #: canal track is at least this long along z (mm; half the scan if it is shorter).
    crop_min_track_mm: float = 40.0
    #: Strong evidence for the paper's crop: the canal is found on at least this many
    #: axial slices.
    crop_min_found_slices: int = 10
    #: Strong evidence for the paper's crop: the track lies at most this far (median, mm)
    #: from the bony midline in x (left-right); farther, it is not the spine.
    crop_max_midline_offset_mm: float = 30.0
    #: Random seed and number of starts of k-means (deterministic results).
    kmeans_seed: int = 0
    kmeans_n_init: int = 10

    def __post_init__(self) -> None:
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")
        if self.interpolator not in ("linear", "nearest", "bspline"):
            raise ValueError(
                f"interpolator must be 'linear', 'nearest' or 'bspline', got {self.interpolator!r}"
            )
        if self.hu_max <= self.hu_min:
            raise ValueError(f"hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        if not 0 < self.canal_r_min_mm < self.canal_r_max_mm:
            raise ValueError(
                "need 0 < canal_r_min_mm < canal_r_max_mm, got "
                f"{self.canal_r_min_mm} and {self.canal_r_max_mm}"
            )
        if self.n_clusters < 1:
            raise ValueError(f"n_clusters must be at least 1, got {self.n_clusters}")
        for name in STEP_PARAMS["crop"]:  # margins and evidence thresholds
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessParams:
        """Build from a dict; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing parameters: {', '.join(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        """The parameters as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessParams:
        """Parse :meth:`to_json` output (or any JSON object of parameter names)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"preprocessing parameters are not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError("preprocessing parameters must be a JSON object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> PreprocessParams:
        """A copy with some parameters changed."""
        return replace(self, **changes)


#: Which parameters each pipeline step depends on (besides its inputs). A step is re-run
#: only when one of these (or an earlier step's) changed.
STEP_PARAMS: dict[str, tuple[str, ...]] = {
    "resample": ("spacing_mm", "interpolator"),
    "window": ("hu_min", "hu_max"),
    "canal": (
        "canal_r_min_mm",
        "canal_r_max_mm",
        "canal_max_elongation",
        "canal_outlier_mm",
        "n_clusters",
        "min_cluster_separation_mm",
        "kmeans_seed",
        "kmeans_n_init",
    ),
    "crop": (
        "crop_margin_lr_mm",
        "crop_margin_anterior_mm",
        "crop_margin_posterior_mm",
        "crop_min_track_mm",
        "crop_min_found_slices",
        "crop_max_midline_offset_mm",
    ),
    "mip": (),
}
