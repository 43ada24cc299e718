"""Constants shared by the widget tests (imported as ``from widget_helpers import ...``,
so that no test module imports another)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The shipped smoke configuration.
SMOKE = ROOT / "napari_vertebra" / "configs" / "smoke.yaml"
#: A very small model and run: seconds per epoch on a laptop CPU.
TINY = {
    "min_size": 128,
    "max_size": 128,
    "batch_size": 2,
    "max_steps_per_epoch": 1,
    "val_max_images": 1,
    "workers": 0,
    "warmup_iters": 0,
    "lr_schedule": "constant",
}


def write_checkpoint(path: Path) -> Path:
    """A small checkpoint file that reads as one of ours (no weights: what Load run's
    check needs, not a model to predict with)."""
    from napari_vertebra.model.predict_jobs import avoid_triton

    avoid_triton()  # as the widgets do: Triton after napari's OpenGL crashes (llvmpipe)
    from napari_vertebra.model.build import save_checkpoint

    return save_checkpoint(path, model={}, config={}, epoch=0)
