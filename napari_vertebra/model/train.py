"""Training in the shape of torchvision's detection references.

``get_args_parser()`` -> ``main(args)``; :func:`train` is the same for Python callers
(the napari widget passes ``progress`` and ``stop``); the engine (one epoch, validation,
the collective stop) is :mod:`napari_vertebra.model.engine`. A run folder holds
``last.pt`` (after every epoch and when stopped, fsynced then renamed), ``best.pt``
(best validation ``best_metric``), ``log.csv``, ``config.yaml``, ``progress.jsonl`` (one
JSON line per step and per epoch, which the Train widget follows; see
:mod:`napari_vertebra.model.run`) and TensorBoard events (when tensorboard is installed).
Several GPUs: start with ``torchrun`` (DistributedDataParallel; rank 0 writes).
docs/training.md gives the resume rules and the learning-rate rule.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_vertebra.core.progress import ProgressCallback, report

from .build import CheckpointError, build_model, config_from_checkpoint, load_checkpoint
from .build import save_checkpoint as _save_checkpoint
from .config import (
    RESUME_MUTABLE,
    TrainConfig,
    add_train_arguments,
    as_config,
    load_config,
    parse_overrides,
    read_yaml_keys,
)
from .data import EpochBatchSampler, VertebraDataset, collate, epoch_steps
from .device import dist_info, resolve_device, setup_device
from .engine import (
    LOSS_KEYS,
    LossMeter,
    StopFile,
    StopFlag,
    Stopped,
    evaluate,
    train_one_epoch,
)
from .run import PROGRESS_NAME, ProgressWriter

__all__ = [
    "LOG_FIELDS",
    "StopFile",
    "StopFlag",
    "Stopped",
    "add_train_arguments",
    "effective_lr",
    "evaluate",
    "get_args_parser",
    "main",
    "parameter_groups",
    "resolve_device",
    "resume_config",
    "train",
    "train_one_epoch",
]

log = logging.getLogger(__name__)

LOG_FIELDS = (
    "epoch",
    "step",
    "loss",
    *LOSS_KEYS,
    "lr",
    "val_box_mAP",
    "val_mask_mAP",
    "val_mask_mAP50",
    "val_id_rate",
    "val_mask_mAP_at_threshold",
    "val_localisation_mm",
    "time_s",
)

#: Kept for callers of the former name.
_epoch_steps = epoch_steps


# ------------------------------------------------------------------ configuration
def resume_config(saved: TrainConfig, given: Mapping[str, Any] | None) -> tuple[TrainConfig, dict]:
    """The configuration a resumed run continues with, and the changes applied.

    ``saved`` is the checkpoint's; ``given`` the keys the user set for the resume (from
    ``--config``, ``KEY=VALUE``, ``--epochs``, ``--seed``; a full :class:`TrainConfig`
    counts as all of its keys). A given value equal to the saved one changes nothing.
    Keys of :data:`~napari_vertebra.model.config.RESUME_MUTABLE` (epochs, lr, ...) are
    applied; any other difference is refused with a ValueError that lists them, never
    ignored.
    """
    given = dict(given or {})
    try:
        wanted = saved.replace(**given)
    except ValueError as e:
        raise ValueError(f"resume: {e}") from None
    changed = {
        k: (saved[k], wanted[k]) for k in sorted(given) if wanted[k] != saved[k]
    }  # compared after validation: [1, 2] == (1, 2)
    refused = {k: v for k, v in changed.items() if k not in RESUME_MUTABLE}
    if refused:
        listing = "; ".join(f"{k}: {a!r} in the run, {b!r} given" for k, (a, b) in refused.items())
        raise ValueError(
            f"cannot change {', '.join(refused)} when resuming ({listing}). A resumed run "
            "keeps its model, data order and optimiser; only "
            f"{', '.join(sorted(RESUME_MUTABLE))} may change. Leave them out (a resumed run "
            "reads its configuration from last.pt), or start a new run folder with "
            "'weights: RUN/last.pt'"
        )
    return wanted, changed


def effective_lr(cfg: TrainConfig, world: int) -> float:
    """The learning rate the optimizer uses with ``world`` processes: ``lr`` is the rate
    for a global batch of ``batch_size`` images; with ``lr_scaling: linear`` it grows
    with the global batch (``batch_size`` x ``world``), Goyal et al.'s linear rule."""
    return cfg.lr * (world if cfg.lr_scaling == "linear" else 1)


def _lr_lambda(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
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


def _optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg)
    if not groups:
        raise ValueError("no trainable parameters (trainable_layers 0 and every head frozen?)")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=lr)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train (what the checkpoint's optimizer state fits)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------ random state
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (legacy global state, for third parties)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """CPU, CUDA (this process's device), NumPy and Python random states."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    random.setstate(_tuples(state["python"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _gather(obj: Any, distributed: bool, world: int) -> list[Any]:
    if not distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------ files
def _split(data_dir: Path, name: str) -> Path:
    p = data_dir / name
    if not (p / "annotations.json").is_file():
        raise ValueError(f"{data_dir}: no {name}/annotations.json (expected train/ and val/)")
    return p


def _val_split(data_dir: Path, warn: bool = True) -> Path:
    """The val split, or the train split when val is missing or empty (said in a warning,
    as the Train widget's project mode does): one annotated scan cannot fill a val split
    made by scan, and a run that dies for it after the export helps nobody."""
    p = data_dir / "val"
    n = None
    if (p / "annotations.json").is_file():
        import json

        try:
            n = len(json.loads((p / "annotations.json").read_text(encoding="utf-8"))["images"])
        except (OSError, ValueError, KeyError, TypeError):
            return p  # let the reader say what is wrong with it
        if n:
            return p
    train = _split(data_dir, "train")
    if warn:
        state = "has no images" if n == 0 else "is missing"
        warnings.warn(
            f"{data_dir}: the val split {state}; validating on the train split instead (its "
            "scores say little about new scans: export more scans for a val split)",
            stacklevel=2,
        )
    return train


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _metric_value(metrics: Mapping[str, Any], name: str) -> float:
    v = metrics.get(f"val_{name}")
    return -math.inf if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# ------------------------------------------------------------------ training
def train(
    config: TrainConfig | Mapping[str, Any] | None,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    progress: ProgressCallback | None = None,
    stop: StopFlag | None = None,
    resume: bool = False,
    device: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train Mask R-CNN on ``data_dir/train`` (validating on ``data_dir/val``) into ``run_dir``.

    ``config``: a :class:`TrainConfig` or a mapping of keys (the rest default).
    ``progress(fraction, message)`` follows the whole run; ``stop.is_set()`` is checked
    before every step and stops with a resumable ``last.pt``. ``resume`` continues from
    ``run_dir/last.pt`` exactly where it stopped (mid-epoch too): same model (frozen
    stages, norm layers), optimizer, scheduler, GradScaler, random states, loss sums;
    then ``config`` (None: the checkpoint's) may change only the keys of
    :func:`resume_config`. Returns {"epoch", "stopped", "best_metric", "best",
    "metrics", "run_dir", "changed"}.
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    dev, (distributed, rank, world, _) = setup_device(device)
    main_rank = rank == 0
    last = run_dir / "last.pt"
    ckpt = None
    changed: dict[str, Any] = {}
    if resume:
        if not last.is_file():
            raise ValueError(f"{last}: nothing to resume (no last.pt in the run folder)")
        ckpt = load_checkpoint(last)
        saved = config_from_checkpoint(ckpt, last)
        given = config.to_dict() if isinstance(config, TrainConfig) else config
        cfg, changed = resume_config(saved, given)
        ck_world = int(ckpt.get("world", 1))
        if ck_world != world:
            raise ValueError(
                f"{last}: the run was trained with {ck_world} process(es), not {world}: resume "
                f"it with {ck_world} (the data order and learning rate depend on it), or start "
                "a new run folder with 'weights: RUN/last.pt'"
            )
        if changed and main_rank:
            msg = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            warnings.warn(f"resume: applying {msg}", stacklevel=2)
    else:
        cfg = as_config(config)
    if cfg.sync_bn and distributed and dev.type != "cuda":
        raise ValueError("sync_bn needs CUDA (SyncBatchNorm runs on GPUs); set sync_bn: false")
    events = None  # rank 0 writes the run's progress.jsonl
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        events = ProgressWriter(run_dir / PROGRESS_NAME)
        events.write("setup", message="loading the data and building the model", resume=resume)

    def emit(phase: str, **fields: Any) -> None:
        if events is not None:
            events.write(phase, **fields)

    _seed_all(cfg.seed + rank)
    train_set = VertebraDataset(_split(data_dir, "train"), cfg, train=True)
    # the training prior of each class, for the level decoder (model/levels.py)
    class_counts = [int(c) for c in train_set.class_counts()]
    val_dir = _val_split(data_dir, warn=rank == 0)
    val_set = VertebraDataset(val_dir, cfg, max_images=cfg.val_max_images)
    # the architecture comes from the config alone: frozen stages and norm layers are
    # the same on resume; the weights file is read only when starting
    model = build_model(cfg, load_weights=ckpt is None).to(dev)
    skipped = list(getattr(model, "skipped_keys", []))
    if ckpt is not None:
        if "trainable" in ckpt and list(ckpt["trainable"]) != trainable_names(model):
            raise CheckpointError(
                f"{last}: the rebuilt model does not train the same parameters as the "
                "checkpoint (was it written by another version?); start a new run folder "
                "with 'weights: RUN/last.pt'"
            )
        model.load_state_dict(ckpt["model"])
    trainable = trainable_names(model)
    sampler = EpochBatchSampler(
        train_set, cfg.batch_size, cfg.seed, rank, world, cfg.aspect_ratio_group_factor
    )
    steps_per_epoch = len(sampler)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    lr = effective_lr(cfg, world)
    optimizer = _optimizer(model, cfg, lr)
    lr_lambda = _lr_lambda(cfg, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    scaler = torch.amp.GradScaler("cuda") if dev.type == "cuda" and cfg.amp else None
    start_epoch, skip, global_step = 0, 0, 0
    best = -math.inf
    metrics: dict[str, Any] = {}
    meter = LossMeter()
    if ckpt is not None:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"{last}: its optimizer state does not fit this model ({e}); it was probably "
                "written by an older version: start a new run folder with "
                "'weights: RUN/last.pt'"
            ) from e
        scheduler.lr_lambdas = [lr_lambda] * len(optimizer.param_groups)
        # the learning rate of this config (unchanged, or changed on resume)
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        for g in optimizer.param_groups:
            g["initial_lr"] = lr
            g["lr"] = lr * lr_lambda(scheduler.last_epoch)
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        skip = int(ckpt.get("step_in_epoch", 0))
        global_step = int(ckpt.get("step", 0))
        metrics = dict(ckpt.get("metrics") or {})
        best = float(ckpt.get("best_value", -math.inf))
        if ckpt.get("best_metric") not in (None, cfg.best_metric):
            best = _metric_value(metrics, cfg.best_metric) if metrics else -math.inf
        if ckpt.get("loss_sums"):
            meter = LossMeter(ckpt["loss_sums"]["sums"], ckpt["loss_sums"]["n"])
        rngs = ckpt.get("rng")
        if isinstance(rngs, list) and len(rngs) == world:
            _set_rng_state(rngs[rank], dev)
        if skip >= steps_per_epoch:  # stopped after the epoch's last step
            start_epoch, skip = start_epoch + 1, 0
    if cfg.sync_bn and distributed and not cfg.use_frozen_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=dev.type == "cuda",
        persistent_workers=cfg.workers > 0,
        # its own generator: starting an iteration then draws no number from the global
        # random state, which a resumed run restores and must not see consumed twice
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_gt = None
    writer = None
    if main_rank:
        from .evaluate import ground_truth

        val_gt = ground_truth(val_set.images)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(run_dir / "config.yaml", cfg.to_yaml())
        if skipped:
            (run_dir / "skipped_weights.txt").write_text(
                "\n".join(skipped) + "\n", encoding="utf-8"
            )
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            writer = None
    epochs = cfg.epochs
    total_steps = max(1, (epochs - start_epoch) * steps_per_epoch - skip)
    done_steps = 0
    bar = None
    if verbose and main_rank:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, desc="train", unit="step", file=sys.stderr)
    t0 = time.time()
    position = [start_epoch, skip]  # epoch, steps done in it
    run_steps = epochs * steps_per_epoch  # the whole run's, for progress.jsonl
    emit(
        "start", epoch=start_epoch, epochs=epochs, step=global_step, step_in_epoch=skip,
        steps_in_epoch=steps_per_epoch, total_steps=run_steps, resume=resume,
    )  # fmt: skip

    def save(path: Path, extra_best: bool = False) -> None:
        """Every rank calls this (the random states are gathered); rank 0 writes."""
        rngs = _gather(_rng_state(dev), distributed, world)
        if not main_rank:
            return
        fields = dict(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            epoch=position[0],
            step_in_epoch=position[1],
            step=global_step,
            config=cfg.to_dict(),
            metrics=metrics,
            best_metric=cfg.best_metric,
            best_value=best,
            loss_sums=meter.state(),
            rng=rngs,
            world=world,
            trainable=trainable,
            class_counts=class_counts,
        )
        _save_checkpoint(path, **fields)
        if extra_best:
            _save_checkpoint(run_dir / "best.pt", **fields)

    stopped = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            first = skip if epoch == start_epoch else 0
            if first == 0:
                meter = LossMeter()
            position[:] = [epoch, first]
            sampler.set_epoch(epoch, first)
            train_set.set_epoch(epoch)

            def on_step(k: int, vals: dict[str, float], epoch=epoch, first=first) -> None:
                nonlocal done_steps, global_step
                done_steps += 1
                global_step += 1
                position[1] = first + k + 1
                msg = (
                    f"epoch {epoch + 1}/{epochs} step {first + k + 1}/{steps_per_epoch} "
                    f"loss {vals['loss']:.3f}"
                )
                report(progress, done_steps / total_steps, msg)
                emit(
                    "train", epoch=epoch + 1, epochs=epochs, step=global_step,
                    step_in_epoch=first + k + 1, steps_in_epoch=steps_per_epoch,
                    total_steps=run_steps, lr=optimizer.param_groups[0]["lr"], **vals,
                )  # fmt: skip
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{vals['loss']:.3f}")
                if writer is not None:
                    for key, v in vals.items():
                        writer.add_scalar(f"train/{key}", v, global_step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], global_step)

            means = train_one_epoch(
                net, optimizer, scheduler, loader, dev, epoch, scaler,
                max_steps=steps_per_epoch - first, stop=stop, on_step=on_step,
                grad_clip=cfg.grad_clip, distributed=distributed, meter=meter,
            )  # fmt: skip
            emit("validate", epoch=epoch + 1, epochs=epochs, step=global_step)
            if distributed:  # every rank validates with rank 0's BatchNorm statistics
                for b in model.buffers():
                    torch.distributed.broadcast(b, 0)
            val = evaluate(
                model, val_set, dev, cfg.min_score, cfg.dedup_box_iou, rank, world, val_gt,
                class_counts,
            )  # fmt: skip
            metrics = {f"val_{k}": v for k, v in val.items()}
            position[:] = [epoch + 1, 0]
            value = _metric_value(metrics, cfg.best_metric)
            # the first validated epoch always gives a best.pt, even with no value
            improved = value > best or (best == -math.inf and not (run_dir / "best.pt").exists())
            if improved:
                best = value
            if main_rank:
                row = {"epoch": epoch + 1, "step": global_step, **means}
                row["lr"] = optimizer.param_groups[0]["lr"]
                row.update(metrics)
                row["time_s"] = round(time.time() - t0, 2)
                _append_log(run_dir / "log.csv", row)
                emit("epoch", epochs=epochs, total_steps=run_steps, **row)
                if writer is not None:
                    for k, v in metrics.items():
                        if v is not None:
                            writer.add_scalar(k.replace("val_", "val/"), v, epoch + 1)
            meter = LossMeter()
            save(last, extra_best=improved)
            report(progress, done_steps / total_steps, f"epoch {epoch + 1}/{epochs} done")
        epoch = max(epochs, start_epoch)
        emit("done", epoch=epoch, epochs=epochs, step=global_step, message="finished")
    except Stopped:
        stopped = True
        save(last)
        msg = f"stopped in epoch {epoch + 1} after step {position[1]}"
        report(progress, done_steps / total_steps, msg)
        emit(
            "stopped", epoch=epoch + 1, epochs=epochs, step=global_step,
            step_in_epoch=position[1], message=msg,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        del loader  # shuts persistent workers down
    return {
        "epoch": epoch,
        "stopped": stopped,
        "best_metric": cfg.best_metric,
        "best": best,
        "metrics": metrics,
        "run_dir": str(run_dir),
        "changed": changed,
    }


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Argument parser of the training script (torchvision references style)."""
    return add_train_arguments(
        argparse.ArgumentParser(description="Train Mask R-CNN on vertebra MIPs", add_help=add_help)
    )


def given_keys(args: argparse.Namespace) -> dict[str, Any]:
    """The configuration keys set on the command line: the ``--config`` file's, then
    KEY=VALUE, ``--epochs`` and ``--seed`` (validated; errors name the file)."""
    over = parse_overrides(args.overrides or [])
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.seed is not None:
        over["seed"] = args.seed
    load_config(args.config, over)  # validation, with the file's name in errors
    given = read_yaml_keys(args.config) if args.config else {}
    given.update(over)
    return given


def main(args: argparse.Namespace) -> int:
    """Run training from parsed arguments; prints the final metrics.

    An error is also written to ``RUN/progress.jsonl`` (phase ``error``, when the run
    folder exists), so that a front end following the run can say why it ended; the
    exception goes on as before (the command line prints it).
    """
    try:
        return _main(args)
    except Exception as e:
        if dist_info().rank == 0 and Path(args.output).is_dir():
            ProgressWriter(Path(args.output) / PROGRESS_NAME).write(
                "error", message=str(e).strip() or type(e).__name__, kind=type(e).__name__
            )
        raise


def _main(args: argparse.Namespace) -> int:
    given = given_keys(args)
    stop = StopFile(Path(args.output) / StopFile.NAME)  # the napari widget's Stop
    if dist_info().rank == 0 and stop.is_set():
        # a request of an earlier run; removed before any rank checks it (the ranks meet
        # in DistributedDataParallel's set-up before their first step)
        stop.clear()
        print(f"removed {stop.path} left from an earlier stop", file=sys.stderr)
    out = train(
        given, args.data, args.output, resume=args.resume, device=args.device, verbose=True,
        stop=stop,
    )  # fmt: skip
    if dist_info().rank == 0:
        m = out["metrics"]
        status = "stopped" if out["stopped"] else "finished"

        def fmt(key: str) -> str:
            v = m.get(key)
            return "-" if v is None else f"{v:.3f}"

        print(
            f"{status} after epoch {out['epoch']}: val id rate {fmt('val_id_rate')}, "
            f"mask mAP {fmt('val_mask_mAP')}, box mAP {fmt('val_box_mAP')} "
            f"(raw detections); run folder {out['run_dir']}"
        )
        share = m.get("val_level_certain_share")
        if share is not None:
            from .levels import certainty_check

            note, warning = certainty_check(
                share, m.get("val_level_certain_id_rate"), n_images=m.get("val_n_images")
            )
            print(f"{note}; the rest at {fmt('val_level_uncertain_id_rate')}")
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
