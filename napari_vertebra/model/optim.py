"""The optimisation of a training run: parameter groups, optimizer, learning-rate schedule.

As in torchvision's detection references: SGD with momentum (or AdamW), weight decay
but none on normalisation layers and biases (``norm_weight_decay``), a linear warm-up,
then multistep, cosine or constant. ``lr`` is the rate of a global batch of
``batch_size`` images; with ``lr_scaling: linear`` it grows with the number of processes
(docs/training.md gives the rule).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .config import TrainConfig

__all__ = [
    "effective_lr",
    "lr_lambda",
    "make_optimizer",
    "parameter_groups",
    "trainable_names",
]


def effective_lr(cfg: TrainConfig, world: int) -> float:
    """The learning rate the optimizer uses with ``world`` processes: ``lr`` is the rate
    for a global batch of ``batch_size`` images; with ``lr_scaling: linear`` it grows
    with the global batch (``batch_size`` x ``world``), Goyal et al.'s linear rule."""
    return cfg.lr * (world if cfg.lr_scaling == "linear" else 1)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The factor on the learning rate at each optimizer step (``LambdaLR``'s lambda):
    the warm-up over ``warmup_iters`` steps times the ``lr_schedule``."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = cfg.warmup_iters
    milestones = [e * steps_per_epoch for e in cfg.lr_steps]

    def f(it: int) -> float:
        w = min(1.0, 0.001 + (1 - 0.001) * it / warm) if warm > 0 else 1.0
        if cfg.lr_schedule == "multistep":
            return w * cfg.lr_gamma ** sum(it >= m for m in milestones)
        if cfg.lr_schedule == "cosine":
            return w * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        return w

    return f


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weights with ``weight_decay``; normalisation layers'
    parameters and every bias with ``norm_weight_decay`` (torchvision references'
    ``norm_weight_decay``; None: ``weight_decay`` too). Frozen parameters are left out;
    the order is the model's (deterministic, so a resumed optimizer state fits)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if isinstance(module, _NORMS) or name == "bias" else decay).append(p)
    nwd = cfg.weight_decay if cfg.norm_weight_decay is None else cfg.norm_weight_decay
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": nwd},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """The config's optimizer over :func:`parameter_groups` at learning rate ``lr``."""
    groups = parameter_groups(model, cfg)
    if not groups:
        raise ValueError("no trainable parameters (trainable_layers 0 and every head frozen?)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train (what the checkpoint's optimizer state fits)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
