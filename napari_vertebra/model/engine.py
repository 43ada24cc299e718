"""The training engine in torchvision's references' shape: one epoch, validation, stop.

:func:`train_one_epoch` runs the optimizer over a loader; :func:`evaluate` computes the
validation metrics (sharded over the ranks of a torchrun job). A stop request is seen
before every step and before every validation image; the decision is collective
(:func:`stop_requested`), so every rank stops at the same step or image.
:mod:`napari_vertebra.model.train` builds everything and loops over epochs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from .device import gather

__all__ = [
    "LossMeter",
    "StopFile",
    "StopFlag",
    "Stopped",
    "evaluate",
    "stop_requested",
    "train_one_epoch",
]


class StopFlag(Protocol):
    """Anything with ``is_set()`` (e.g. ``threading.Event``)."""

    def is_set(self) -> bool: ...


class Stopped(Exception):
    """Raised by :func:`train_one_epoch` when the (collective) stop decision is taken."""


class StopFile:
    """A stop flag set by creating a file (``RUN/STOP``): how the napari "Train model"
    widget stops the training process gracefully (a resumable ``last.pt`` is saved)."""

    NAME = "STOP"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def is_set(self) -> bool:
        return self.path.exists()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def stop_requested(stop: StopFlag | None, device: torch.device, distributed: bool) -> bool:
    """Whether to stop now. Under torchrun the flags of all ranks are all-reduced (max):
    when any rank sees it, every rank stops at the same step."""
    flag = bool(stop is not None and stop.is_set())
    if not distributed:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class LossMeter:
    """Sums of the losses of the steps of one epoch (kept across a stop and resume)."""

    def __init__(self, sums: dict[str, float] | None = None, n: int = 0):
        self.sums = dict(sums or {})
        self.n = int(n)

    def add(self, vals: dict[str, float]) -> None:
        for k, v in vals.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "n": self.n}


def train_one_epoch(
    model,
    optimizer,
    scheduler,
    loader,
    device: torch.device,
    epoch: int,
    scaler=None,
    max_steps: int | None = None,
    stop: StopFlag | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    grad_clip: float | None = None,
    distributed: bool = False,
    meter: LossMeter | None = None,
) -> dict[str, float]:
    """One pass over ``loader`` (at most ``max_steps`` optimizer steps); returns the mean
    losses (of ``meter``, which may hold the steps before a resume).

    Before each step the stop decision is taken (collectively when ``distributed``);
    :class:`Stopped` is raised when it says stop. ``on_step(k, losses)`` follows each
    step (k counts from 0 in this call).
    """
    model.train()
    meter = meter if meter is not None else LossMeter()
    step = 0
    for images, targets in loader:
        if max_steps is not None and step >= max_steps:
            break
        if stop_requested(stop, device, distributed):
            raise Stopped
        images, targets = _to_device(images, targets, device)
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"loss is {loss.item()} at epoch {epoch + 1} step {step + 1} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} }): training diverged; "
                "lower the learning rate or start from weights"
            )
        _optimizer_step(model, optimizer, loss, scaler, grad_clip)
        scheduler.step()
        vals = {k: float(v.detach()) for k, v in losses.items()}
        vals["loss"] = float(loss.detach())
        meter.add(vals)
        if on_step is not None:
            on_step(step, vals)
        step += 1
    return meter.means()


def _to_device(images, targets, device: torch.device) -> tuple[list, list]:
    nb = device.type == "cuda"
    images = [im.to(device, non_blocking=nb) for im in images]
    targets = [
        {k: (v.to(device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


def _optimizer_step(model, optimizer, loss, scaler, grad_clip: float | None) -> None:
    """Backward pass (scaled with a GradScaler), gradient clipping, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def evaluate(
    model,
    dataset,
    device: torch.device,
    min_score: float = 0.9,
    box_iou: float | None = 0.5,
    rank: int = 0,
    world: int = 1,
    gt: dict | None = None,
    class_counts: Sequence[int] | None = None,
    stop: StopFlag | None = None,
    distributed: bool = False,
) -> dict[str, Any]:
    """Validation metrics of ``model`` on ``dataset`` (a VertebraDataset, no augmentation).

    The predictions at ``min_score`` are named as ``Predictor`` names them: the dataset's
    config (class set, fixed-scale tiling, level decoder settings) and ``class_counts``
    (the training vertebrae per class: the decoder's class prior), so ``id_rate`` and the
    level confidence's check (``level_certain_share`` ...) are what prediction gives.

    Each rank predicts its share of the images (every ``world``-th from ``rank``); the
    COCO results are gathered on rank 0, which computes the metrics of
    :func:`napari_vertebra.model.evaluate.detection_metrics` (``mask_mAP``/``box_mAP``
    of the raw detections, ``id_rate`` ... at ``min_score``) and shares them with the
    other ranks, so no rank waits on a long evaluation alone. ``gt``: the ground truth of
    ``dataset`` made once (:func:`~napari_vertebra.model.evaluate.ground_truth`). Returns
    the metrics with list/dict values left out (numbers and None only).

    Before each round of images (one per rank) the stop decision is taken, collectively
    when ``distributed`` (every rank takes part in every round, also one whose share is
    one image shorter); :class:`Stopped` is raised when it says stop.
    """
    from .evaluate import detection_metrics, ground_truth, named_results

    idx = list(range(rank, len(dataset), world))
    raw: list[dict] = []
    kept: list[dict] = []
    for k in range(-(-len(dataset) // world)):  # rounds: ceil(len / world)
        if stop_requested(stop, device, distributed):
            raise Stopped
        if k >= len(idx):
            continue
        i = idx[k]
        r, p = named_results(
            model, [dataset.images[i].image], dataset.cfg, min_score, box_iou, ids=[i + 1],
            device=device, class_counts=class_counts,
        )  # fmt: skip
        raw += r
        kept += p
    if world > 1:
        gathered = gather((raw, kept), world)
        raw = [r for g in gathered for r in g[0]]
        kept = [r for g in gathered for r in g[1]]
    metrics: dict[str, Any] = {}
    if rank == 0:
        gt = gt if gt is not None else ground_truth(dataset.images)
        full = detection_metrics(gt, raw, kept, min_score)
        metrics = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in full.items()
            if not k.startswith("_") and (v is None or isinstance(v, (int, float)))
        }
    if world > 1:
        import torch.distributed as dist

        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics
