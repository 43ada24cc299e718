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

__all__ = ["STARTER_NAME", "export_starter", "starter_checkpoint"]

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
) -> Path:
    """Write ``checkpoint``'s model as a starter file: weights in float16, its config,
    class counts and ``metrics`` (``val_*`` keys: the figures a naming is shown with; the
    checkpoint's own validation when None); no optimizer state, no random states."""
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
    )
