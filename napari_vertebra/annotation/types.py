"""In-memory annotation types shared by the annotation tools, the model and the widgets.

Coordinates are pixel coordinates (row, col) of the MIP, napari's order; row 0 is the
top (superior) edge. Formats that use (x, y) (COCO, VIA) convert at their boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_vertebra.core.labels import level_name

__all__ = ["AnnotatedImage", "VertebraAnnotation"]


@dataclass
class VertebraAnnotation:
    """One vertebra on a 2D image: its class and outline.

    ``polygons`` holds one (N, 2) float array of (row, col) vertices per part (usually
    one; a mask in several pieces gives several). ``score`` is set for predictions.
    ``source`` says where the outline came from: ``"hand"`` (drawn), ``"model"`` (an
    accepted or fixed prediction, with its ``score``) or ``"3D labels"``.
    """

    class_id: int
    polygons: list[np.ndarray]
    score: float | None = None
    source: str = "hand"

    def __post_init__(self) -> None:
        level_name(self.class_id)  # validates a level id (1..17 T1..L5; 18..21 extended)
        self.polygons = [np.asarray(p, dtype=float).reshape(-1, 2) for p in self.polygons]

    @property
    def name(self) -> str:
        """Vertebra name, e.g. ``"L1"``."""
        return level_name(self.class_id)


@dataclass
class AnnotatedImage:
    """A 2D image (usually a sagittal MIP) with its vertebra annotations.

    ``file_name`` is relative to the folder of the COCO / VIA file that names it;
    ``scan`` names the source scan (patient) so that splits can keep scans apart;
    ``image`` may be None when only the annotations are loaded; ``meta`` carries extra
    per-image fields (e.g. the crop of a partial view); ``warnings`` holds plain-language
    notes of what reading repaired (e.g. a polygon clipped to the image). It is not
    written to files.
    """

    file_name: str
    height: int
    width: int
    annotations: list[VertebraAnnotation] = field(default_factory=list)
    image: np.ndarray | None = None
    scan: str | None = None
    meta: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
