"""Model and training configuration: defaults, YAML loading, overrides (no torch).

A configuration is a flat dict; YAML files give a subset of the keys, the rest come
from :data:`DEFAULTS`. Unknown keys are an error (a typo should not silently train the
wrong model). Command-line overrides use ``key=value`` with YAML-parsed values.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULTS", "add_train_arguments", "load_config", "parse_overrides"]

#: Every configuration key with its default (the paper's setup: ResNet-101-FPN, 1024 px).
DEFAULTS: dict[str, Any] = {
    # model
    "backbone": "resnet101",  # resnet18 | resnet34 | resnet50 (v2) | resnet101
    "weights": None,  # local file: COCO Mask R-CNN state dict or ImageNet resnet state dict
    "frozen_bn": None,  # None: FrozenBatchNorm with starting weights, BatchNorm without
    "trainable_layers": 3,  # backbone stages trained when starting from weights (0..5)
    # px: GeneralizedRCNNTransform min_size/max_size (longest side <= max); a list of
    # min_size values trains multi-scale (one per batch; inference uses the last)
    "min_size": 1024,
    "max_size": 1024,
    "anchor_sizes": [24, 48, 96, 192, 384],  # px at the input scale, one per FPN level
    "aspect_ratios": [0.5, 1.0, 2.0],  # height / width
    "fpn_channels": 256,
    "box_head_dim": 1024,
    "mask_head_layers": [256, 256, 256, 256],
    "rpn_pre_nms_top_n_train": 600,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 128,
    "box_batch_size_per_image": 128,
    "box_positive_fraction": 0.25,
    # detections kept by the box stage, ranked by class score: a vertebra comes once per
    # likely class, and a weakly trained model spreads its classes (60 lost vertebrae)
    "box_detections_per_img": 100,
    "box_score_thresh": 0.05,
    "min_score": 0.9,  # the paper's minimum confidence for predictions
    # duplicates: a detection whose box has IoU above this with a higher-scored one is
    # dropped before its mask is computed (null: mask overlap only)
    "dedup_box_iou": 0.5,
    # input scale: MIPs are windowed HU (read_coco undoes the PNG's hu_scale); the model
    # sees clip(HU / hu_max, 0, 1) replicated to 3 channels
    "hu_max": 1500.0,
    # training
    "epochs": 24,
    "batch_size": 5,
    "optimizer": "sgd",  # sgd | adamw
    "lr": 0.001,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "lr_schedule": "multistep",  # multistep | cosine | constant
    "lr_steps": [16, 22],  # epochs (multistep)
    "lr_gamma": 0.1,
    "warmup_iters": 100,
    "grad_clip": 10.0,
    "workers": 2,
    "seed": 0,
    "amp": True,  # mixed precision, used only on CUDA
    "max_steps_per_epoch": None,  # cap (for smoke runs)
    "val_max_images": None,
    # augmentation (anatomy-respecting: never flipped)
    "aug_intensity": 0.15,  # +- fraction brightness
    "aug_contrast": 0.2,  # +- fraction contrast (gamma)
    "aug_noise": 0.02,  # std of added noise (0..1 scale)
    "aug_rotate_deg": 5.0,
    "aug_scale": 0.1,  # +- fraction
    "aug_partial_prob": 0.3,  # probability of a random run of rows
    "aug_min_rows": 0.4,  # the partial view keeps at least this fraction of the rows
    "aug_min_visible": 0.5,  # drop vertebrae with less of their area left
}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=0.01", "backbone=resnet50"]`` -> {key: YAML-parsed value}."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def load_config(
    path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults updated with the YAML file at ``path`` and then with ``overrides``."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of configuration keys")
        _update(cfg, data, str(p))
    if overrides:
        _update(cfg, dict(overrides), "overrides")
    return cfg


def _update(cfg: dict, data: Mapping, where: str) -> None:
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown configuration keys {unknown}")
    cfg.update(copy.deepcopy(dict(data)))


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The training options (shared by ``napari-vertebra train`` and training/train.py)."""
    parser.add_argument("--config", help="YAML configuration (e.g. training/paper.yaml)")
    parser.add_argument("--data", required=True, help="folder with train/ and val/ COCO splits")
    parser.add_argument("-o", "--output", required=True, help="run folder")
    parser.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides, e.g. lr=0.01"
    )
    return parser
