"""The work behind the 'Predict vertebrae' widget, Qt-free (run on its worker thread).

:func:`predict_job` loads a :class:`~napari_vertebra.model.predict.Predictor` (kept by
the widget between predictions) and returns the :class:`RawPrediction` of a MIP: every
detection the model keeps (the Predictor is built with ``box_score_thresh`` 0, never
changed afterwards), so that the widget's score slider re-filters them with the model's
own post-processing (``Predictor.finish``) without predicting again.
:func:`back_to_3d_job` carries MIP labels into the CT's resampled grid. Importing this
module does not import torch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_vertebra.core.progress import ProgressCallback, report, scaled

__all__ = [
    "RawPrediction",
    "avoid_triton",
    "back_to_3d_job",
    "boxes_to_rectangles",
    "load_predictor",
    "mip_spacing",
    "predict_job",
]

#: Inference settings of the widget's Predictor: keep every box detection (up to
#: box_detections_per_img) whatever its score; the slider filters them.
KEEP_ALL = {"box_score_thresh": 0.0}


def boxes_to_rectangles(boxes: np.ndarray) -> list[np.ndarray]:
    """napari rectangles ((4, 2) (row, col) corners) of (N, 4) (x0, y0, x1, y1) boxes.

    Box coordinates are pixel edges (torchvision), napari's are pixel centres: the
    rectangle is shifted by half a pixel so that it hugs the mask's outer pixels.
    """
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, float).reshape(-1, 4):
        r0, c0, r1, c1 = y0 - 0.5, x0 - 0.5, y1 - 0.5, x1 - 0.5
        out.append(np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]]))
    return out


@dataclass
class RawPrediction:
    """What the model said about one MIP, before the score threshold.

    ``detections`` is ``Predictor.detect`` of the MIP at score 0 (CPU tensors: every box
    detection with ``class_probs``, masks only of the at most 17 that survive the
    duplicate suppression, which covers every slider value), ``mip`` the 2D image
    (windowed HU), ``result`` the :class:`PipelineResult` behind the MIP when known
    (needed for "Show in 3D"), ``image_name`` the layer predicted on, ``finish`` the
    predictor's ``finish`` (its post-processing: class set, order, duplicates),
    ``spacing`` the MIP's [row, col] mm per pixel it was predicted at (None: 1 mm,
    assumed).
    """

    detections: dict
    mip: np.ndarray
    checkpoint: str
    image_name: str
    result: Any = None
    default_min_score: float = 0.9
    finish: Callable[..., Any] | None = None
    spacing: list[float] | None = None

    def __post_init__(self) -> None:
        self._at: dict[float, Any] = {}

    @property
    def n_raw(self) -> int:
        """Detections before the score threshold."""
        return len(self.detections["scores"])

    def at(self, min_score: float) -> Any:
        """The :class:`~napari_vertebra.model.predict.Prediction` at ``min_score``."""
        key = round(float(min_score), 6)
        if key not in self._at:
            if self.finish is not None:
                self._at[key] = self.finish(self.detections, self.mip.shape, key, self.spacing)
            else:  # detections from elsewhere: the model's default post-processing
                from napari_vertebra.model.predict import postprocess

                self._at[key] = postprocess(self.detections, self.mip.shape, key)
        return self._at[key]


def mip_spacing(result: Any = None, metadata: dict | None = None) -> list[float] | None:
    """[row mm, col mm] of a MIP: the grid of its PipelineResult ``result``, else what a
    layer's ``metadata`` records (a Preprocess CT grid ``mip_grid``, or ``spacing_mm`` /
    ``spacing`` from an imported COCO file); None when unknown. ValueError for a recorded
    spacing that cannot be one."""
    from napari_vertebra.annotation.regrid import mip_grid, mip_pixel_spacing

    if result is not None:
        return mip_pixel_spacing(mip_grid(result))
    meta = metadata or {}
    if meta.get("mip_grid") is not None:
        found = mip_pixel_spacing(meta["mip_grid"])
        if found is None:
            raise ValueError(f"its mip_grid {meta['mip_grid']!r} holds no positive spacing")
        return found
    from napari_vertebra.model.evaluate import image_spacing

    found = image_spacing(meta, default=None)
    return None if found is None else list(found)


def load_predictor(checkpoint: str, device: str) -> Any:
    """A Predictor of ``checkpoint`` that keeps every detection (see :data:`KEEP_ALL`)."""
    from napari_vertebra.model.predict import Predictor

    return Predictor(checkpoint, device=device, settings=dict(KEEP_ALL))


def predict_job(
    predictor: Any,
    checkpoint: str,
    device: str,
    image: np.ndarray,
    image_name: str,
    ct: Any = None,
    result: Any = None,
    params: Any = None,
    min_score: float | None = None,
    progress: ProgressCallback | None = None,
    spacing: list[float] | None = None,
) -> tuple[Any, RawPrediction]:
    """Worker-thread body: (pre-process a CT,) load the model (unless ``predictor`` is
    given) and run it on the MIP, of ``spacing`` [row, col] mm per pixel (the grid of
    ``result`` when there is one; None: 1 mm). Returns (predictor, raw prediction)."""
    if ct is not None:
        from napari_vertebra.core import run_pipeline

        report(progress, 0.0, "preprocessing the CT")
        result = run_pipeline(ct, params, progress=scaled(progress, 0.0, 0.5))
        image = result.mip
    if result is not None:
        spacing = mip_spacing(result)
    base = 0.5 if ct is not None else 0.0
    avoid_triton()
    _leave_a_core_for_the_viewer()
    if predictor is None:
        report(progress, base, "loading the model")
        predictor = load_predictor(checkpoint, device)
    report(progress, base + 0.2 * (1 - base), "predicting")
    mip = np.asarray(image, np.float32)
    det = detections(predictor, mip, spacing)
    report(progress, 1.0, f"{len(det['scores'])} detections")
    raw = RawPrediction(
        detections=det,
        mip=mip,
        checkpoint=checkpoint,
        image_name=image_name,
        result=result,
        default_min_score=predictor.min_score,
        finish=predictor.finish,
        spacing=spacing,
    )
    if min_score is not None:
        raw.at(min_score)  # post-process here, not on the GUI thread
    return predictor, raw


def avoid_triton() -> None:
    """Keep Triton out of the viewer's process (call before the first torch import).

    torchvision imports ``torch._dynamo``, which imports Triton when it is installed;
    Triton bundles its own LLVM, and loading it into a process whose OpenGL runs on
    Mesa's LLVM-based drivers (llvmpipe under Xvfb or a VM, radeonsi) segfaults napari.
    Eager inference does not use Triton (only ``torch.compile`` does), so the widgets
    hide it: ``import triton`` then raises ImportError and torch goes without. (Loaded
    before the OpenGL context, Triton does no harm; then this does nothing.)
    """
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]


def _leave_a_core_for_the_viewer() -> None:
    """Let torch use all CPU cores but one, so that the viewer stays responsive."""
    import torch

    want = max(1, (os.cpu_count() or 2) - 1)
    if torch.get_num_threads() > want:
        torch.set_num_threads(want)


def back_to_3d_job(
    label_image: np.ndarray, result: Any, progress: ProgressCallback | None = None
) -> tuple[np.ndarray, list[int]]:
    """Worker-thread body: uint8 class labels on the resampled grid from MIP labels
    (:func:`~napari_vertebra.core.mip_labels_to_volume`) and the classes that reached it."""
    from napari_vertebra.core import mip_labels_to_volume

    report(progress, 0.0, "back-projecting")
    vol = mip_labels_to_volume(label_image, result).astype(np.uint8)
    report(progress, 1.0, "done")
    present = [int(c) for c in np.unique(label_image) if c and (vol == c).any()]
    return vol, present


def detections(predictor: Any, mip: np.ndarray, spacing: list[float] | None = None) -> dict:
    """``predictor.detect`` of ``mip`` (of ``spacing`` mm per pixel) at score 0 as CPU
    tensors, for ``predictor.finish`` at any threshold (the widget's slider)."""
    det = predictor.detect(mip, 0.0, spacing)
    return {k: v.detach().cpu() for k, v in det.items()}
