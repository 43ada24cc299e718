"""Training in the shape of torchvision's detection references.

``get_args_parser()`` -> ``main(args)``; :func:`train` is the same for Python callers
(the napari widget passes ``progress`` and ``stop``): restore the run's state, build,
loop over the epochs (:mod:`napari_vertebra.model.engine`: one epoch, validation, the
collective stop), save. A run folder holds ``last.pt`` (after every epoch and when
stopped, fsynced then renamed), ``best.pt`` (best validation ``best_metric``),
``config.yaml``, and what :class:`~napari_vertebra.model.logger.TrainLogger` writes:
``progress.jsonl`` (one JSON line per step and per epoch, which the Train widget
follows), ``log.csv`` (one row per epoch) and TensorBoard events (when tensorboard is
installed). Several GPUs: start with ``torchrun`` (DistributedDataParallel; rank 0
writes). docs/training.md gives the resume rules and the learning-rate rule.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_vertebra.annotation._atomic import atomic_write_text, interrupts_held
from napari_vertebra.annotation.dataset import val_split_problem
from napari_vertebra.core.progress import ProgressCallback

from .build import CheckpointError, build_model, save_checkpoint
from .config import (
    TrainConfig,
    add_train_arguments,
    as_config,
    load_config,
    parse_overrides,
    read_yaml_keys,
)
from .data import EpochBatchSampler, VertebraDataset, collate
from .device import dist_info, setup_device
from .engine import LossMeter, StopFile, StopFlag, Stopped, evaluate, train_one_epoch
from .logger import TrainLogger
from .optim import effective_lr, lr_lambda, make_optimizer, trainable_names
from .resume import ResumeState, metric_value, resume_checkpoint, seed_all

__all__ = ["get_args_parser", "given_keys", "main", "train"]


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
    state = val_split_problem(data_dir)
    if not state:
        return data_dir / "val"
    train = _split(data_dir, "train")
    if warn:
        warnings.warn(
            f"{data_dir}: the val split {state}; validating on the train split instead (its "
            "scores say little about new scans: export more scans for a val split)",
            stacklevel=3,
        )
    return train


# ------------------------------------------------------------------ one process's training
@dataclass
class _Training:
    """One process's training (built by :func:`_build`): its rank, the data, the model
    and its optimisation, and the run folder rank 0 saves into."""

    cfg: TrainConfig
    run_dir: Path
    dev: torch.device
    rank: int
    world: int
    distributed: bool
    train_set: VertebraDataset
    val_set: VertebraDataset
    model: nn.Module
    sampler: EpochBatchSampler
    steps_per_epoch: int
    lr: float
    lr_lambda: Callable[[int], float]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any
    net: nn.Module | None = None
    loader: Any = None
    val_gt: dict | None = None

    def __post_init__(self) -> None:
        #: the training prior of each class, for the level decoder (model/levels.py)
        self.class_counts = [int(c) for c in self.train_set.class_counts()]
        self.trainable = trainable_names(self.model)
        #: Ctrl+C held while the weights, the optimizer and the step counts are updated
        #: (from an optimizer step until the step is counted), so that it always finds
        #: them in agreement (:meth:`save_interrupted`)
        self._held: Any = None
        self.optimizer.register_step_pre_hook(self._hold_interrupts)

    def _hold_interrupts(self, *_args: Any) -> None:
        if self._held is None:
            self._held = interrupts_held()
            self._held.__enter__()

    def release_interrupts(self) -> None:
        """End the hold of :meth:`_hold_interrupts` (a Ctrl+C that came meanwhile raises
        KeyboardInterrupt now)."""
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)

    def restore(self, ckpt: dict[str, Any]) -> ResumeState:
        """Continue from ``ckpt`` (``last.pt``): optimizer, scheduler (at this config's
        learning rate, which a resume may change), GradScaler, random states."""
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(
                f"{self.run_dir / 'last.pt'}: its optimizer state does not fit this model "
                f"({e}); it was probably written by an older version: start a new run "
                "folder with 'weights: RUN/last.pt'"
            ) from e
        groups = self.optimizer.param_groups
        self.scheduler.lr_lambdas = [self.lr_lambda] * len(groups)
        self.scheduler.base_lrs = [self.lr] * len(groups)
        for g in groups:
            g["initial_lr"] = self.lr
            g["lr"] = self.lr * self.lr_lambda(self.scheduler.last_epoch)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        state = ResumeState.from_checkpoint(ckpt, self.cfg.best_metric)
        state.restore_rng(self.dev, self.rank, self.world)
        return state

    def wrap(self) -> None:
        """SyncBatchNorm and DistributedDataParallel around the loaded model; the loader."""
        cfg, dev = self.cfg, self.dev
        if cfg.sync_bn and self.distributed and not cfg.use_frozen_bn:
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.net = self.model
        if self.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None
            )
        self.loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=collate,
            pin_memory=dev.type == "cuda",
            persistent_workers=cfg.workers > 0,
            # its own generator: starting an iteration then draws no number from the global
            # random state, which a resumed run restores and must not see consumed twice
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    def write_run_files(self, skipped: list[str]) -> None:
        """Rank 0: the validation ground truth (made once), config.yaml, the starting
        weights' skipped keys."""
        if self.rank != 0:
            return
        from .evaluate import ground_truth

        self.val_gt = ground_truth(self.val_set.images)
        atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        if skipped:
            text = "\n".join(skipped) + "\n"
            (self.run_dir / "skipped_weights.txt").write_text(text, encoding="utf-8")

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def run_epoch(
        self, epoch: int, state: ResumeState, logger: TrainLogger, stop: StopFlag | None
    ) -> None:
        """Train ``epoch`` from ``state``'s step on, validate, save ``last.pt`` (and
        ``best.pt`` when it improved), log; :class:`Stopped` on a stop request, before a
        step or a validation image (``state`` then says where: a resumed run validates
        an epoch whose steps are all done)."""
        first = state.step_in_epoch
        if first == 0:
            state.losses = LossMeter()
        self.sampler.set_epoch(epoch, first)
        self.train_set.set_epoch(epoch)

        def on_step(_k: int, losses: dict[str, float]) -> None:
            state.step += 1
            state.step_in_epoch += 1
            logger.step(state, losses, self.current_lr())
            self.release_interrupts()

        means = train_one_epoch(
            self.net, self.optimizer, self.scheduler, self.loader, self.dev, epoch,
            self.scaler, max_steps=self.steps_per_epoch - first, stop=stop, on_step=on_step,
            grad_clip=self.cfg.grad_clip, distributed=self.distributed, meter=state.losses,
        )  # fmt: skip
        logger.validating(state)
        metrics = self.validate(stop)
        with interrupts_held():  # the epoch's end is recorded and saved whole
            state.metrics = metrics
            state.epoch, state.step_in_epoch = epoch + 1, 0
            value = metric_value(state.metrics, self.cfg.best_metric)
            # the first validated epoch always gives a best.pt, even with no value
            first_best = state.best == -math.inf and not (self.run_dir / "best.pt").exists()
            improved = value > state.best or first_best
            if improved:
                state.best = value
            state.losses = LossMeter()
            self.save(state, best_too=improved)
        logger.epoch(epoch + 1, state.step, means, self.current_lr(), state.metrics)

    def validate(self, stop: StopFlag | None = None) -> dict[str, Any]:
        """The ``val_*`` metrics of the model on the val split (every rank takes part);
        :class:`Stopped` when ``stop`` is seen before an image (collectively)."""
        if self.distributed:  # every rank validates with rank 0's BatchNorm statistics
            for b in self.model.buffers():
                torch.distributed.broadcast(b, 0)
        cfg = self.cfg
        val = evaluate(
            self.model, self.val_set, self.dev, cfg.min_score, cfg.dedup_box_iou, self.rank,
            self.world, self.val_gt, self.class_counts, stop=stop,
            distributed=self.distributed,
        )  # fmt: skip
        return {f"val_{k}": v for k, v in val.items()}

    def save_interrupted(self, state: ResumeState, logger: TrainLogger) -> None:
        """After a Ctrl+C: save ``last.pt`` at the interrupted step (resumable there: the
        step in progress is done again), unless the run has several processes (whose
        collective save cannot be reached); then ``last.pt`` stays as it was. Says which
        on stderr."""
        self.release_interrupts()
        last = self.run_dir / "last.pt"
        if self.distributed:
            if self.rank == 0:
                kept = f"{last} is kept as last saved" if last.exists() else "nothing saved"
                print(f"interrupted: {kept}", file=sys.stderr)
            return
        self.save(state)
        logger.stopped(state)
        print(f"interrupted: saved {last}; --resume continues from it", file=sys.stderr)

    def save(self, state: ResumeState, best_too: bool = False) -> None:
        """``last.pt`` (and ``best.pt``): every rank calls this (the random states are
        gathered); rank 0 writes."""
        state.capture_rng(self.dev, self.distributed, self.world)
        if self.rank != 0:
            return
        fields = dict(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            config=self.cfg.to_dict(),
            world=self.world,
            trainable=self.trainable,
            class_counts=self.class_counts,
            **state.checkpoint_fields(self.cfg.best_metric),
        )
        save_checkpoint(self.run_dir / "last.pt", **fields)
        if best_too:
            save_checkpoint(self.run_dir / "best.pt", **fields)


def _datasets(cfg: TrainConfig, data_dir: Path, rank: int) -> tuple[VertebraDataset, ...]:
    """The train and val datasets of ``data_dir`` (read and checked)."""
    train_set = VertebraDataset(_split(data_dir, "train"), cfg, train=True)
    val_dir = _val_split(data_dir, warn=rank == 0)
    return train_set, VertebraDataset(val_dir, cfg, max_images=cfg.val_max_images)


def _build(
    cfg: TrainConfig,
    datasets: tuple[VertebraDataset, ...],
    run_dir: Path,
    device: str | None,
    ckpt: dict | None,
) -> tuple[_Training, list[str]]:
    """The process's training on the (train, val) ``datasets`` (the model loaded from
    ``ckpt`` when resuming) and the starting weights' skipped keys."""
    dev, (distributed, rank, world, _) = setup_device(device)
    if cfg.sync_bn and distributed and dev.type != "cuda":
        raise ValueError("sync_bn needs CUDA (SyncBatchNorm runs on GPUs); set sync_bn: false")
    seed_all(cfg.seed + rank)
    train_set, val_set = datasets
    # the architecture comes from the config alone: frozen stages and norm layers are
    # the same on resume; the weights file is read only when starting
    model = build_model(cfg, load_weights=ckpt is None).to(dev)
    skipped = list(getattr(model, "skipped_keys", []))
    if ckpt is not None:
        if "trainable" in ckpt and list(ckpt["trainable"]) != trainable_names(model):
            raise CheckpointError(
                f"{run_dir / 'last.pt'}: the rebuilt model does not train the same "
                "parameters as the checkpoint (was it written by another version?); start "
                "a new run folder with 'weights: RUN/last.pt'"
            )
        model.load_state_dict(ckpt["model"])
    sampler = EpochBatchSampler(
        train_set, cfg.batch_size, cfg.seed, rank, world, cfg.aspect_ratio_group_factor
    )
    steps = min(len(sampler), cfg.max_steps_per_epoch or len(sampler))
    lr, schedule = effective_lr(cfg, world), lr_lambda(cfg, steps)
    optimizer = make_optimizer(model, cfg, lr)
    training = _Training(
        cfg, run_dir, dev, rank, world, distributed, train_set, val_set, model, sampler,
        steps, lr, schedule, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        torch.amp.GradScaler("cuda") if dev.type == "cuda" and cfg.amp else None,
    )  # fmt: skip
    return training, skipped


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

    ``config``: a :class:`TrainConfig` or a mapping of keys (the rest default); the data
    are checked before ``run_dir`` is written to. ``progress(fraction, message)`` follows
    the run; ``stop.is_set()`` (before every step and every validation image) stops with a
    resumable ``last.pt``, as does KeyboardInterrupt (at once,
    :meth:`_Training.save_interrupted`; it goes on). ``resume`` continues from
    ``run_dir/last.pt`` exactly where it stopped (mid-epoch or mid-validation too): same
    model, optimizer, scheduler, GradScaler, random states, loss sums; ``config`` (None:
    the checkpoint's) may change only the keys of ``resume_config``
    (:mod:`~napari_vertebra.model.resume`). Returns {"epoch", "stopped", "best_metric",
    "best", "metrics", "run_dir", "changed"}.
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    info = dist_info()
    ckpt, cfg, changed = None, as_config(config), {}
    if resume:
        ckpt, cfg, changed = resume_checkpoint(run_dir, config, info.world, info.rank == 0)
    datasets = _datasets(cfg, data_dir, info.rank)  # before anything is written
    logger = TrainLogger(run_dir if info.rank == 0 else None, progress, verbose)
    logger.setup(resume)
    t, skipped = _build(cfg, datasets, run_dir, device, ckpt)
    state = t.restore(ckpt) if ckpt is not None else ResumeState()
    t.wrap()
    t.write_run_files(skipped)
    logger.start(state, cfg.epochs, t.steps_per_epoch, resume)
    stopped = False
    try:
        for epoch in range(state.epoch, cfg.epochs):
            t.run_epoch(epoch, state, logger, stop)
    except Stopped:
        stopped = True
        t.save(state)
        logger.stopped(state)
    except KeyboardInterrupt:  # Ctrl+C: the command line exits with 130
        t.save_interrupted(state, logger)
        raise
    else:
        logger.finished(state)
    finally:
        t.release_interrupts()  # (after an error inside an optimizer step)
        logger.close()
        t.loader = None  # shuts persistent workers down
    return {
        "epoch": state.epoch,
        "stopped": stopped,
        "best_metric": cfg.best_metric,
        "best": state.best,
        "metrics": state.metrics,
        "run_dir": str(run_dir),
        "changed": changed,
    }


# ------------------------------------------------------------------ command line
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
    exception goes on (the command line prints it).
    """
    try:
        return _main(args)
    except Exception as e:
        if dist_info().rank == 0 and Path(args.output).is_dir():
            TrainLogger(Path(args.output)).error(e)
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
        _print_summary(out)
    return 0


def _print_summary(out: dict[str, Any]) -> None:
    """The final validation metrics and the level confidence's check, on stdout."""
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
        from .calibration import certainty_check

        note, warning = certainty_check(
            share, m.get("val_level_certain_id_rate"), n_images=m.get("val_n_images")
        )
        print(f"{note}; the rest at {fmt('val_level_uncertain_id_rate')}")
        if warning:
            print(f"warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
