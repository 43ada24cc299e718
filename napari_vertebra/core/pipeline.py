"""The whole preprocessing pipeline with re-use of unchanged steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .canal import CanalDetection, detect_canal_details
from .crop import CropBox, CropDecision, apply_crop, decide_crop
from .mip import sagittal_mip
from .params import STEP_PARAMS, PreprocessParams
from .progress import ProgressCallback, report, scaled
from .resample import resample_isotropic, resample_labels
from .volume import Volume
from .window import window_hu

__all__ = [
    "STEPS",
    "PipelineResult",
    "mip_labels",
    "mip_labels_to_volume",
    "run_pipeline",
    "steps_to_rerun",
]

#: Pipeline steps in order; each depends on its own parameters and all earlier steps.
STEPS = ("resample", "window", "canal", "crop", "mip")


@dataclass(frozen=True, eq=False)
class PipelineResult:
    """Every intermediate of :func:`run_pipeline`.

    Grids: ``resampled``, ``windowed`` and ``labels_resampled`` share the isotropic grid
    (``params.spacing_mm``); ``cropped`` and ``labels_cropped`` are its ``crop_box``.
    ``canal_centres`` (N, 3) are (z, y, x) voxels of the resampled grid, one per axial
    slice, ``canal_found`` (N,) says which were found (the others carried across from
    neighbouring slices). ``mip`` (float32, HU) and ``mip_argmax_x`` (int32, x index in
    the cropped grid) are (z1 - z0, y1 - y0): row 0 superior, column 0 anterior.
    ``timings`` gives seconds per step (0 for a step re-used from ``previous``).

    ``warnings`` lists in plain words what the user should know: the source CT's and
    the label map's reading notes (``Volume.warnings``), then the pipeline's own (a
    crop fallback and why, an axis on which the anatomy contradicts the header); empty
    when all is normal. ``decisions`` says what was decided: ``crop`` (a
    :data:`~.crop.CROP_KINDS` value), ``crop_reason``, ``orientation`` ("ok", "doubt"
    or "unknown"), ``orientation_axes`` (the verdict per axis of
    :func:`~.orientation.check_orientation`), ``orientation_evidence`` and
    ``crop_evidence`` (the measured figures), ``read`` and ``labels_read`` (what reading
    the CT and the label map corrected); the attribute ``crop`` holds the whole
    :class:`CropDecision`.
    """

    source: Volume
    params: PreprocessParams
    resampled: Volume
    windowed: Volume
    canal_centres: np.ndarray
    canal_found: np.ndarray
    crop_box: CropBox
    cropped: Volume
    mip: np.ndarray
    mip_argmax_x: np.ndarray
    canal: CanalDetection
    labels_source: Volume | None = None
    labels_resampled: Volume | None = None
    labels_cropped: Volume | None = None
    timings: dict[str, float] = field(default_factory=dict)
    crop: CropDecision | None = None
    warnings: tuple[str, ...] = ()
    decisions: dict[str, Any] = field(default_factory=dict)

    @property
    def found_fraction(self) -> float:
        """Fraction of axial slices where the canal was found (not carried across)."""
        return float(np.mean(self.canal_found)) if len(self.canal_found) else 0.0

    def mip_to_volume_index(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(N, 3) int (z, y, x) voxel of the resampled grid that gave MIP pixels (rows, cols)."""
        rows = np.asarray(rows, int).ravel()
        cols = np.asarray(cols, int).ravel()
        h, w = self.mip.shape
        if rows.shape != cols.shape:
            raise ValueError("rows and cols must have the same length")
        if np.any((rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)):
            raise ValueError(f"MIP pixel outside the {h} x {w} image")
        (_, z1), (y0, _), (x0, _) = self.crop_box
        z = z1 - 1 - rows
        y = y0 + cols
        x = x0 + self.mip_argmax_x[rows, cols]
        return np.stack([z, y, x], axis=1).astype(int)

    def mip_to_physical(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(N, 3) LPS position (x, y, z mm) of the voxel behind MIP pixels (rows, cols)."""
        return self.resampled.index_to_physical(self.mip_to_volume_index(rows, cols))

    def mip_pixel_of_index(self, zyx: np.ndarray) -> np.ndarray:
        """(N, 2) float (row, col) MIP position of (N, 3) (z, y, x) resampled voxels."""
        zyx = np.asarray(zyx, float).reshape(-1, 3)
        (_, z1), (y0, _), _ = self.crop_box
        return np.stack([z1 - 1 - zyx[:, 0], zyx[:, 1] - y0], axis=1)


def _same_params(a: PreprocessParams, b: PreprocessParams, upto: str) -> bool:
    for step in STEPS[: STEPS.index(upto) + 1]:
        for name in STEP_PARAMS[step]:
            if getattr(a, name) != getattr(b, name):
                return False
    return True


def run_pipeline(
    volume: Volume,
    params: PreprocessParams | None = None,
    labels: Volume | None = None,
    progress: ProgressCallback | None = None,
    previous: PipelineResult | None = None,
) -> PipelineResult:
    """Resample, window, find the canal, crop the spine and project (sagittal MIP).

    ``labels`` (an integer map on ``volume``'s grid) follow every geometric step with
    nearest-neighbour interpolation. ``previous`` (a result for the same ``volume``
    object) lets steps whose parameters did not change be re-used instead of re-run.
    """
    params = PreprocessParams() if params is None else params
    if labels is not None and not labels.same_grid(volume):
        raise ValueError(
            f"the label map's grid (shape {labels.shape}, spacing {labels.spacing}) differs "
            f"from the CT's (shape {volume.shape}, spacing {volume.spacing})"
        )
    prev = previous if previous is not None and previous.source is volume else None
    steps = _Steps(params, prev, progress)
    resampled = steps.resample(volume)
    labels_resampled = steps.resample_labels(labels, resampled)
    windowed = steps.window(resampled)
    canal = steps.canal(windowed)
    decision, cropped, labels_cropped = steps.crop(resampled, windowed, canal, labels_resampled)
    mip, argmax_x = steps.mip(cropped)
    report(progress, 1.0, "done")
    return PipelineResult(
        source=volume,
        params=params,
        resampled=resampled,
        windowed=windowed,
        canal_centres=canal.centres,
        canal_found=canal.found,
        crop_box=decision.box,
        cropped=cropped,
        mip=mip,
        mip_argmax_x=argmax_x,
        canal=canal,
        labels_source=labels,
        labels_resampled=labels_resampled,
        labels_cropped=labels_cropped,
        timings=steps.timings,
        crop=decision,
        warnings=_warnings(volume, labels, decision),
        decisions=_decisions(volume, labels, decision),
    )


class _Steps:
    """The pipeline's steps, each re-used from ``prev`` (a result for the same source
    volume) where its parameters and those of the steps before it are unchanged, else
    run; each timed into ``timings`` (seconds)."""

    def __init__(
        self,
        params: PreprocessParams,
        prev: PipelineResult | None,
        progress: ProgressCallback | None,
    ) -> None:
        self.params, self.prev, self.progress = params, prev, progress
        self.timings: dict[str, float] = {}

    def reuse(self, step: str) -> bool:
        return self.prev is not None and _same_params(self.prev.params, self.params, step)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.timings[step] = time.perf_counter() - t

    def resample(self, volume: Volume) -> Volume:
        p = self.params
        with self.timed("resample"):
            if self.reuse("resample"):
                return self.prev.resampled
            report(self.progress, 0.0, f"resampling to {p.spacing_mm:g} mm")
            return resample_isotropic(volume, p.spacing_mm, p.interpolator)

    def resample_labels(self, labels: Volume | None, resampled: Volume) -> Volume | None:
        prev = self.prev
        with self.timed("labels"):
            if labels is None:
                return None
            if (
                self.reuse("resample")
                and prev.labels_source is labels
                and prev.labels_resampled is not None
            ):
                return prev.labels_resampled
            report(self.progress, 0.3, "resampling labels")
            return resample_labels(labels, resampled)

    def window(self, resampled: Volume) -> Volume:
        p = self.params
        with self.timed("window"):
            if self.reuse("window"):
                return self.prev.windowed
            report(self.progress, 0.35, f"HU window {p.hu_min:g}..{p.hu_max:g}")
            return window_hu(resampled, p.hu_min, p.hu_max)

    def canal(self, windowed: Volume) -> CanalDetection:
        with self.timed("canal"):
            if self.reuse("canal"):
                return self.prev.canal
            report(self.progress, 0.45, "finding the spinal canal")
            return detect_canal_details(windowed, self.params, scaled(self.progress, 0.45, 0.9))

    @property
    def reuse_crop(self) -> bool:
        return self.reuse("crop") and self.prev.crop is not None

    def crop(
        self, resampled: Volume, windowed: Volume, canal: CanalDetection, labels: Volume | None
    ) -> tuple[CropDecision, Volume, Volume | None]:
        """The crop decision (with the anatomy checked against the header), the cropped
        volume and the cropped labels (if any)."""
        with self.timed("crop"):
            if self.reuse_crop:
                decision, cropped = self.prev.crop, self.prev.cropped
            else:
                report(self.progress, 0.9, "checking the orientation, cropping the spine")
                decision = decide_crop(windowed, canal, self.params, resampled)
                cropped = apply_crop(windowed, decision.box)
            labels_cropped = apply_crop(labels, decision.box) if labels is not None else None
            return decision, cropped, labels_cropped

    def mip(self, cropped: Volume) -> tuple[np.ndarray, np.ndarray]:
        with self.timed("mip"):
            if self.reuse_crop and self.reuse("mip"):
                return self.prev.mip, self.prev.mip_argmax_x
            report(self.progress, 0.95, "sagittal MIP")
            return sagittal_mip(cropped)


def _warnings(volume: Volume, labels: Volume | None, decision: CropDecision) -> tuple[str, ...]:
    """The reading notes of the CT and the label map, then the crop's, each once."""
    return _unique(
        volume.warnings
        + (tuple(f"labels: {w}" for w in labels.warnings) if labels is not None else ())
        + decision.warnings
    )


def _decisions(volume: Volume, labels: Volume | None, decision: CropDecision) -> dict[str, Any]:
    """:attr:`PipelineResult.decisions`: what was decided and what reading corrected."""
    check = decision.orientation_check
    return {
        "crop": decision.kind,
        "crop_reason": decision.reason,
        "orientation": decision.orientation,
        "orientation_axes": dict(check.axes) if check is not None else {},
        "orientation_evidence": dict(check.evidence) if check is not None else {},
        "crop_evidence": dict(decision.evidence),
        # what reading corrected (HU offset, NaN replaced, DICOM geometry rebuilt)
        "read": list(volume.warnings),
        "labels_read": list(labels.warnings) if labels is not None else [],
    }


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    """The items in order, each once."""
    return tuple(dict.fromkeys(items))


def mip_labels_to_volume(mip_labels: np.ndarray, result: PipelineResult) -> np.ndarray:
    """Carry a 2D label image on the MIP back into 3D: a first estimate, not a segmenter.

    Each labelled MIP pixel labels the run of bone voxels (windowed value > 0) along its
    x-ray that contains the ray's brightest voxel (``mip_argmax_x``). Returns an int32
    array of the resampled grid's shape (0 outside the crop and off bone).
    """
    mip_labels = np.asarray(mip_labels)
    if mip_labels.shape != result.mip.shape:
        raise ValueError(
            f"MIP labels have shape {mip_labels.shape}; the MIP is {result.mip.shape}"
        )
    (z0, z1), (y0, y1), (x0, x1) = result.crop_box
    lab = mip_labels[::-1].astype(np.int32)  # rows back to z ascending
    am = result.mip_argmax_x[::-1].astype(np.intp)
    bone = result.cropped.array > 0
    starts = bone.copy()
    starts[..., 1:] &= ~bone[..., :-1]
    run = np.cumsum(starts, axis=2, dtype=np.int32)
    run_at = np.take_along_axis(run, am[..., None], axis=2)
    on_bone = np.take_along_axis(bone, am[..., None], axis=2)
    mask = bone & (run == run_at) & on_bone & (lab > 0)[..., None]
    out = np.zeros(result.resampled.shape, np.int32)
    out[z0:z1, y0:y1, x0:x1] = np.where(mask, lab[..., None], 0)
    return out


def mip_labels(result: PipelineResult) -> np.ndarray | None:
    """The class label of the voxel behind each MIP pixel (2D uint8), or None without
    labels: the MIP of the labels, the inverse of :func:`mip_labels_to_volume`."""
    if result.labels_cropped is None:
        return None
    lab = np.asarray(result.labels_cropped.array)[::-1]  # rows: superior first, like the MIP
    out = np.take_along_axis(lab, result.mip_argmax_x[..., None].astype(np.intp), axis=2)[..., 0]
    out = np.where(result.mip > 0, out, 0)
    return out.astype(np.uint8)


def steps_to_rerun(
    old: PreprocessParams | None, new: PreprocessParams, same_input: bool = True
) -> list[str]:
    """The pipeline steps that :func:`run_pipeline` re-runs when ``old`` parameters
    become ``new`` (given ``previous=``).

    A step re-runs when one of its own parameters or an earlier step's changed (all of
    them without ``old`` or when the input is new).
    """
    if old is None or not same_input:
        return list(STEPS)
    return [step for step in STEPS if not _same_params(old, new, step)]
