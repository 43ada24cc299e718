"""Training in the shape of torchvision's detection references.

``get_args_parser()`` -> ``main(args)``; :func:`train` is the same for Python callers
(the napari widget passes ``progress`` and ``stop``). A run folder holds ``last.pt``
(every epoch, atomic), ``best.pt`` (best validation mask mAP), ``log.csv``,
``config.yaml`` and TensorBoard events (when tensorboard is installed). Several GPUs:
start with ``torchrun`` (DistributedDataParallel; rank 0 writes).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml

from napari_vertebra.core.progress import ProgressCallback, report

from .build import build_model, load_checkpoint, save_checkpoint
from .config import add_train_arguments, load_config, parse_overrides
from .data import VertebraDataset, coco_ground_truth, collate

__all__ = [
    "LOG_FIELDS",
    "add_train_arguments",
    "evaluate",
    "get_args_parser",
    "main",
    "resolve_device",
    "train",
    "train_one_epoch",
]

LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")
LOG_FIELDS = (
    "epoch",
    "step",
    "loss",
    *LOSS_KEYS,
    "lr",
    "val_box_mAP",
    "val_mask_mAP",
    "val_mask_mAP50",
    "time_s",
)


class StopFlag(Protocol):
    """Anything with ``is_set()`` (e.g. ``threading.Event``)."""

    def is_set(self) -> bool: ...


class Stopped(Exception):
    """Raised inside the loop when the stop flag is set (caught by :func:`train`)."""


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


def resolve_device(device: str | None) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or None (CUDA when available); clear error for
    CUDA where there is none."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} (use cpu or cuda)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available here "
            "(no NVIDIA GPU or a CPU-only PyTorch); use --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use cpu or cuda)")
    return dev


def _dist_info() -> tuple[bool, int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (
        world > 1,
        int(os.environ.get("RANK", "0")),
        world,
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def _epoch_steps(n_images: int, batch_size: int, world: int = 1) -> tuple[int, bool]:
    """(steps per epoch, drop_last) for each of ``world`` ranks: a rank sees its share of
    the images, and a last partial batch is dropped unless it would be the only one."""
    per_rank = math.ceil(n_images / world)
    drop_last = per_rank > batch_size
    return (per_rank // batch_size if drop_last else 1), drop_last


def _lr_lambda(cfg: dict, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, int(cfg["epochs"]) * steps_per_epoch)
    warm = int(cfg["warmup_iters"])
    sched = str(cfg["lr_schedule"])
    milestones = [int(e) * steps_per_epoch for e in cfg["lr_steps"]]
    gamma = float(cfg["lr_gamma"])
    if sched not in ("multistep", "cosine", "constant"):
        raise ValueError(f"lr_schedule must be multistep, cosine or constant; got {sched!r}")

    def f(it: int) -> float:
        w = min(1.0, 0.001 + (1 - 0.001) * it / warm) if warm > 0 else 1.0
        if sched == "multistep":
            return w * gamma ** sum(it >= m for m in milestones)
        if sched == "cosine":
            return w * 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
        return w

    return f


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
) -> dict[str, float]:
    """One pass over ``loader``; returns mean losses. Raises :class:`Stopped` when
    ``stop`` is set (checked between steps)."""
    model.train()
    sums: dict[str, float] = {}
    n = 0
    for step, (images, targets) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        if stop is not None and stop.is_set():
            raise Stopped
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [
            {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets
        ]
        with torch.autocast(device.type, enabled=scaler is not None):
            losses = model(images, targets)
            loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(
                f"loss is {loss.item()} at epoch {epoch} step {step} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} }): training diverged; "
                "lower the learning rate or start from weights"
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        scheduler.step()
        vals = {k: float(v.detach()) for k, v in losses.items()}
        vals["loss"] = float(loss.detach())
        for k, v in vals.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if on_step is not None:
            on_step(step, vals)
    return {k: v / max(n, 1) for k, v in sums.items()}


@torch.inference_mode()
def evaluate(model, dataset: VertebraDataset, device: torch.device, batch_size: int = 2) -> dict:
    """COCO box and mask mAP (pycocotools COCOeval) of the raw detections on ``dataset``.

    Returns {"box_mAP", "box_mAP50", "mask_mAP", "mask_mAP50"} (0..1; -1 when undefined).
    """
    from .render import coco_results

    model.eval()
    results = []
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        images = [dataset[i][0].to(device) for i in idx]
        outputs = model(images)
        for i, out in zip(idx, outputs, strict=True):
            masks = (out["masks"][:, 0] > 0.5).cpu().numpy()
            boxes = out["boxes"].cpu().numpy()
            results += coco_results(
                i + 1, masks, boxes, out["labels"].tolist(), out["scores"].tolist()
            )
    return coco_map(coco_ground_truth(dataset), results)


def coco_map(gt: dict, results: list[dict]) -> dict[str, float]:
    """Box and mask mAP of COCO ``results`` against the ground-truth dict ``gt``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = {"box_mAP": 0.0, "box_mAP50": 0.0, "mask_mAP": 0.0, "mask_mAP50": 0.0}
    if not results:
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        for iou_type, key in (("bbox", "box"), ("segm", "mask")):
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out[f"{key}_mAP"] = float(ev.stats[0])
            out[f"{key}_mAP50"] = float(ev.stats[1])
    return out


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (legacy global state, for third parties)
    torch.manual_seed(seed)


def _split(data_dir: Path, name: str) -> Path:
    p = data_dir / name
    if not (p / "annotations.json").is_file():
        raise ValueError(f"{data_dir}: no {name}/annotations.json (expected train/ and val/)")
    return p


def train(
    config: dict[str, Any],
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    progress: ProgressCallback | None = None,
    stop: StopFlag | None = None,
    resume: bool = False,
    device: str | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train Mask R-CNN on ``data_dir/train`` (validating on ``data_dir/val``) into ``run_dir``.

    ``config`` is a full configuration (see :func:`napari_vertebra.model.config.load_config`).
    ``progress(fraction, message)`` follows the whole run; ``stop.is_set()`` is checked
    between steps and stops with a resumable ``last.pt``. ``resume`` continues from
    ``run_dir/last.pt`` (model, optimizer, scheduler, epoch, RNG); ``config["epochs"]``
    may be raised to train longer. Returns {"epoch", "stopped", "best_mask_mAP",
    "metrics", "run_dir"}.
    """
    cfg = dict(config)
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    distributed, rank, world, local_rank = _dist_info()
    if distributed:
        import torch.distributed as dist

        dev = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    else:
        dev = resolve_device(device)
    main_rank = rank == 0
    last = run_dir / "last.pt"
    ckpt = None
    if resume:
        if not last.is_file():
            raise ValueError(f"{last}: nothing to resume (no last.pt in the run folder)")
        ckpt = load_checkpoint(last)
        epochs = int(cfg["epochs"])
        cfg = dict(ckpt["config"])
        cfg["epochs"] = epochs if epochs > 0 else int(cfg["epochs"])
    _seed_all(int(cfg["seed"]) + rank)
    train_set = VertebraDataset(_split(data_dir, "train"), cfg, train=True)
    val_set = VertebraDataset(_split(data_dir, "val"), cfg, max_images=cfg["val_max_images"])
    model_cfg = dict(cfg)
    if ckpt is not None:
        if model_cfg.get("frozen_bn") is None:
            model_cfg["frozen_bn"] = cfg.get("weights") is not None
        model_cfg["weights"] = None
    model = build_model(model_cfg).to(dev)
    skipped = getattr(model, "skipped_keys", [])
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    bs = int(cfg["batch_size"])
    steps_per_epoch, drop_last = _epoch_steps(len(train_set), bs, world)
    if cfg["max_steps_per_epoch"]:
        steps_per_epoch = min(steps_per_epoch, int(cfg["max_steps_per_epoch"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt_name = str(cfg["optimizer"]).lower()
    if opt_name == "sgd":
        optimizer = torch.optim.SGD(
            params, lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
            weight_decay=float(cfg["weight_decay"]),
        )  # fmt: skip
    elif opt_name == "adamw":
        optimizer = torch.optim.AdamW(
            params, lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"])
        )
    else:
        raise ValueError(f"optimizer must be sgd or adamw; got {cfg['optimizer']!r}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    use_amp = dev.type == "cuda" and bool(cfg["amp"])
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    start_epoch, best, global_step = 0, -1.0, 0
    metrics: dict[str, float] = {}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        best = float(ckpt.get("best_mask_mAP", -1.0))
        global_step = int(ckpt.get("step", 0))
        metrics = dict(ckpt.get("metrics") or {})
        if "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"])
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    writer = None
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(
            yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8"
        )
        if skipped:
            (run_dir / "skipped_weights.txt").write_text(
                "\n".join(skipped) + "\n", encoding="utf-8"
            )
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            writer = None
    epochs = int(cfg["epochs"])
    total_steps = max(1, (epochs - start_epoch) * steps_per_epoch)
    done_steps = 0
    bar = None
    if verbose and main_rank:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, desc="train", unit="step", file=sys.stderr)
    t0 = time.time()

    epoch_rng = torch.get_rng_state()

    def checkpoint_fields(epoch_done: int) -> dict[str, Any]:
        return dict(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            epoch=epoch_done,
            step=global_step,
            config=cfg,
            metrics=metrics,
            best_mask_mAP=best,
            rng=torch.get_rng_state() if epoch_done > epoch else epoch_rng,
        )

    stopped = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch, epochs):
            train_set.set_epoch(epoch)
            sampler: Any
            if distributed:
                sampler = torch.utils.data.DistributedSampler(
                    train_set, shuffle=True, seed=int(cfg["seed"])
                )
                sampler.set_epoch(epoch)
            else:
                g = torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + epoch)
                sampler = torch.utils.data.RandomSampler(train_set, generator=g)
            epoch_rng = torch.get_rng_state()
            loader = torch.utils.data.DataLoader(
                train_set,
                batch_size=bs,
                sampler=sampler,
                generator=torch.Generator().manual_seed(int(cfg["seed"]) * 1000 + epoch + 7),
                num_workers=int(cfg["workers"]),
                collate_fn=collate,
                drop_last=drop_last,
            )

            def on_step(step: int, vals: dict[str, float], epoch=epoch) -> None:
                nonlocal done_steps, global_step
                done_steps += 1
                global_step += 1
                lr = optimizer.param_groups[0]["lr"]
                msg = (
                    f"epoch {epoch + 1}/{epochs} step {step + 1}/{steps_per_epoch} "
                    f"loss {vals['loss']:.3f}"
                )
                report(progress, done_steps / total_steps, msg)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{vals['loss']:.3f}")
                if writer is not None:
                    for k, v in vals.items():
                        writer.add_scalar(f"train/{k}", v, global_step)
                    writer.add_scalar("train/lr", lr, global_step)

            means = train_one_epoch(
                net, optimizer, scheduler, loader, dev, epoch, scaler,
                max_steps=steps_per_epoch, stop=stop, on_step=on_step,
                grad_clip=float(cfg["grad_clip"]) if cfg["grad_clip"] else None,
            )  # fmt: skip
            if main_rank:
                val = evaluate(model, val_set, dev)
                metrics = {f"val_{k}": v for k, v in val.items()}
                row = {"epoch": epoch + 1, "step": global_step, **means}
                row["lr"] = optimizer.param_groups[0]["lr"]
                row.update(metrics)
                row["time_s"] = round(time.time() - t0, 2)
                _append_log(run_dir / "log.csv", row)
                if writer is not None:
                    for k, v in metrics.items():
                        writer.add_scalar(k.replace("val_", "val/"), v, epoch + 1)
                improved = val["mask_mAP"] > best
                if improved:
                    best = val["mask_mAP"]
                fields = checkpoint_fields(epoch + 1)
                save_checkpoint(last, **fields)
                if improved:
                    save_checkpoint(run_dir / "best.pt", **fields)
            if distributed:
                torch.distributed.barrier()
            report(progress, done_steps / total_steps, f"epoch {epoch + 1}/{epochs} done")
        epoch = epochs
    except Stopped:
        stopped = True
        if main_rank:  # the interrupted epoch is repeated on resume
            save_checkpoint(last, **checkpoint_fields(epoch))
        report(progress, done_steps / total_steps, f"stopped in epoch {epoch + 1}")
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    return {
        "epoch": epoch,
        "stopped": stopped,
        "best_mask_mAP": best,
        "metrics": metrics,
        "run_dir": str(run_dir),
    }


def _append_log(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Argument parser of the training script (torchvision references style)."""
    return add_train_arguments(
        argparse.ArgumentParser(description="Train Mask R-CNN on vertebra MIPs", add_help=add_help)
    )


def main(args: argparse.Namespace) -> int:
    """Run training from parsed arguments; prints the final metrics."""
    over = parse_overrides(args.overrides or [])
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.seed is not None:
        over["seed"] = args.seed
    if args.resume and args.config is None:
        cfg = load_config(None, over)
        if args.epochs is None:
            cfg["epochs"] = 0  # keep the checkpoint's
    else:
        cfg = load_config(args.config, over)
    stop = StopFile(Path(args.output) / StopFile.NAME)  # the napari widget's Stop
    out = train(
        cfg, args.data, args.output, resume=args.resume, device=args.device, verbose=True,
        stop=stop,
    )  # fmt: skip
    if _dist_info()[1] == 0:
        m = out["metrics"]
        status = "stopped" if out["stopped"] else "finished"
        print(
            f"{status} after epoch {out['epoch']}: val mask mAP {m.get('val_mask_mAP', 0):.3f}, "
            f"box mAP {m.get('val_box_mAP', 0):.3f}; run folder {out['run_dir']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
