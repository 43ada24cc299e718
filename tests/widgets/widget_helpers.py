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
