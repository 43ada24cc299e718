"""Fixtures of the model tests: tiny synthetic COCO data and a tiny model config."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")
pytest.importorskip("pycocotools")

ROOT = Path(__file__).resolve().parents[2]
SMOKE_YAML = ROOT / "napari_vertebra" / "configs" / "smoke.yaml"

#: A very small model for mechanics tests (not for learning).
TINY = {
    "backbone": "resnet18",
    "min_size": 96,
    "max_size": 96,
    "anchor_sizes": [8, 16, 32, 64, 128],
    "aspect_ratios": [0.5, 1.0],
    "fpn_channels": 16,
    "box_head_dim": 32,
    "mask_head_layers": [16],
    "rpn_pre_nms_top_n_train": 50,
    "rpn_post_nms_top_n_train": 30,
    "rpn_pre_nms_top_n_test": 30,
    "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 32,
    "rpn_batch_size_per_image": 32,
    "batch_size": 2,
    "epochs": 2,
    "optimizer": "adamw",
    "lr": 0.001,
    "lr_schedule": "constant",
    "warmup_iters": 0,
    "max_steps_per_epoch": 2,
    "val_max_images": 2,
    "workers": 0,
    "min_score": 0.0,
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """DIR with train/val/test COCO splits of 96 x 48 px synthetic MIPs."""
    from napari_vertebra.synth import write_synth

    out = tmp_path_factory.mktemp("synth_tiny")
    write_synth(out, 8, size=(96, 48), seed=5, fractions=(4, 2, 2))
    return out


@pytest.fixture(scope="session")
def tiny_column_data(tmp_path_factory) -> Path:
    """DIR with train/val/test COCO splits of synthetic columns at 4 mm per pixel (about
    150 x 35 px; their spacing recorded, as a model at a fixed scale needs it)."""
    from napari_vertebra.synth import write_synth_columns

    out = tmp_path_factory.mktemp("synth_columns")
    write_synth_columns(out, 3, views_per_column=1, pixel_mm=4.0, seed=5)
    return out


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    """The tiny model's configuration keys (a copy)."""
    return dict(TINY)


@pytest.fixture()
def tiny_config() -> dict:
    """Full config of the tiny model."""
    from napari_vertebra.model.config import load_config

    return load_config(None, TINY)
