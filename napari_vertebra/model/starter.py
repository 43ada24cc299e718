"""The starter model that ships with the package: found and named on real CT.

``napari_vertebra/weights/starter.pt`` (package data, in an installed wheel too) is a
checkpoint of the ``starter`` configuration trained by ``training/starter.py`` on the
repository's real scans, its weights in half precision. Its ``metrics`` are the figures
of the leave-one-scan-out benchmark (``benchmarks/real_scans.py``), so that a naming it
calls certain says how such namings did on scans the model never saw. The model card
is ``docs/starter_model.md``: data, recipe, figures, limits (not for clinical use).

Imports no torch at module level (the widgets ask for the path before torch loads).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any

__all__ = [
    "FINE_TUNE",
    "STARTER_NAME",
    "export_starter",
    "fine_tune_config",
    "prepare_fine_tune",
    "replay_folder",
    "starter_checkpoint",
]

#: File name of the shipped starter checkpoint (in ``napari_vertebra/weights/``).
STARTER_NAME = "starter.pt"


def starter_checkpoint() -> Path | None:
    """The shipped starter checkpoint, or None when this installation has none."""
    path = Path(str(files("napari_vertebra") / "weights" / STARTER_NAME))
    return path if path.is_file() else None


def export_starter(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    note: str = "",
    validation_on: str = "",
) -> Path:
    """Write ``checkpoint``'s model as a starter file: weights in float16, its config,
    class counts and ``metrics`` (``val_*`` keys: the figures a naming is shown with; the
    checkpoint's own validation when None) with ``validation_on``, what they were
    measured on; no optimizer state, no random states."""
    import torch

    from .build import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(checkpoint)
    state = {k: v.half() if torch.is_floating_point(v) else v for k, v in ckpt["model"].items()}
    return save_checkpoint(
        out,
        model=state,
        config=ckpt["config"],
        class_counts=ckpt.get("class_counts"),
        metrics=dict(ckpt.get("metrics") or {}) if metrics is None else dict(metrics),
        epoch=int(ckpt.get("epoch", 0)),
        starter_note=note,
        validation_on=validation_on,
    )


#: Settings of a fine-tuning run over the starting model's own configuration: a short
#: schedule at a lower learning rate (the model already knows vertebrae).
FINE_TUNE = {"lr": 0.0003, "warmup_iters": 10, "lr_schedule": "cosine", "epochs": 8}


def fine_tune_config(checkpoint: str | os.PathLike, **overrides: Any):
    """The :class:`~napari_vertebra.model.config.TrainConfig` that fine-tunes
    ``checkpoint``: its own configuration, starting from its weights, with
    :data:`FINE_TUNE` and ``overrides`` applied (e.g. ``epochs``)."""
    from .build import config_from_checkpoint, load_checkpoint

    cfg = config_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    return cfg.replace(weights=str(Path(checkpoint).resolve()), **{**FINE_TUNE, **overrides})


def replay_folder() -> Path | None:
    """The shipped COCO folder of real MIPs the starter was trained on (mixed into a
    fine-tuning run so that the model keeps what it knew), or None."""
    path = Path(str(files("napari_vertebra") / "weights" / "starter_replay"))
    return path if (path / "annotations.json").is_file() else None


def prepare_fine_tune(
    project: Any, out_dir: str | os.PathLike, checkpoint: str | os.PathLike, progress=None
) -> tuple[Any, Path, list[str]]:
    """(config, data folder, notes) of a run that fine-tunes ``checkpoint`` on an
    annotation project: :func:`fine_tune_config` and
    :func:`~napari_vertebra.annotation.dataset.fine_tune_dataset` with the starter's real
    MIPs mixed in when the class sets agree. Slow (reads the checkpoint, writes the
    dataset): a viewer calls it off its GUI thread. torch is imported without Triton
    (:func:`~.predict_jobs.avoid_triton`, as Predict does: a viewer on Mesa's OpenGL)."""
    from napari_vertebra.annotation.dataset import fine_tune_dataset

    from .predict_jobs import avoid_triton

    avoid_triton()
    cfg = fine_tune_config(checkpoint)
    if cfg.pixels_per_mm is not None:
        _check_pixel_spacing(project)
    replay = replay_folder() if cfg.class_set == "extended" else None
    notes = fine_tune_dataset(project, out_dir, replay, cfg.class_set, progress)
    return cfg, Path(out_dir), notes


def _check_pixel_spacing(project: Any) -> None:
    """ValueError naming the project's annotated MIPs that do not record their pixel
    spacing, which a model at a fixed scale (config ``pixels_per_mm``) needs."""
    from napari_vertebra.model.evaluate import image_spacing

    missing = [
        Path(im.file_name).stem
        for im in project.images()
        if im.annotations and image_spacing(im.meta, default=None) is None
    ]
    if missing:
        raise ValueError(
            f"the project's MIP(s) {', '.join(missing)} do not record their pixel spacing, "
            "which the model needs (it reads images at a fixed scale in mm): annotate MIPs "
            "made by Preprocess CT, or import a COCO file that records spacing_mm onto the "
            "MIP (Annotate: Import COCO/VIA)"
        )
