"""Mask R-CNN for vertebrae: training, prediction and evaluation (torch imported lazily).

Importing this package does not import torch; the names below load their module on
first use::

    from napari_vertebra.model import Predictor, train, load_config
    cfg = load_config("smoke", {"epochs": 4})  # a shipped name or a YAML file
    train(cfg, "DATA", "RUN", progress=callback, stop=threading.Event())
    Predictor("RUN/best.pt").predict(mip).annotations()
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DEFAULTS": "config",
    "TrainConfig": "config",
    "shipped_configs": "config",
    "load_config": "config",
    "parse_overrides": "config",
    "order_classes": "anatomy",
    "build_model": "build",
    "load_checkpoint": "build",
    "model_from_checkpoint": "build",
    "save_checkpoint": "build",
    "CheckpointError": "build",
    "VertebraDataset": "data",
    "train": "train",
    "resolve_device": "device",
    "Predictor": "predict",
    "Prediction": "predict",
    "predict": "predict",
    "evaluate_predictor": "evaluate",
    "run_evaluation": "report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
