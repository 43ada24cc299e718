"""GPU training and inference figures of the paper configuration, in one command.

    python benchmarks/gpu.py                      # on a CUDA machine, under 8 minutes
    python benchmarks/gpu.py --dry-run            # the whole code path on CPU, tiny
    python benchmarks/gpu.py --device cpu --steps 2 [--small]

Trains the paper configuration (``--config``, default the shipped ``paper``) on
synthetic sagittal MIPs at the real aspect (600 x 140 px, a full T1..L5 column at 1 mm;
:func:`napari_vertebra.synth.synth_spine`) and prints one table:

- training, s/step and images/s, for fp32, AMP fp16 (with a GradScaler) and AMP bf16,
  each with ``channels_last`` off and on, and the peak GPU memory of each
  (``torch.cuda.max_memory_allocated``), from batches already on the GPU;
- the data path: the same training step fed by a DataLoader over
  :class:`~napari_vertebra.model.data.VertebraDataset` (augmentation on, pinned memory,
  persistent workers) with 2, 4 and 8 workers, and the fraction of the time the GPU
  waits for data;
- inference, ms per MIP at batch 1: ours (:class:`~napari_vertebra.model.predict.Predictor`
  at the config's minimum confidence and at 0.05) vs torchvision's default path
  (``model([image])`` with torchvision's RPN/ROI numbers, the mask head on every
  detection).

Every timed region ends with ``torch.cuda.synchronize()``. The weights are random (the
paper's start, a COCO file, is not needed to time it): when the config names starting
weights, the model is built as that run would be (frozen stages, FrozenBatchNorm) without
loading them. With random weights the number of detections differs from a trained
model's, which changes the inference times of the heads (said in the table).

Each phase has a time budget (a share of ``--budget`` seconds, default 420): a phase
stops early when its budget is spent and says how many steps it timed. A phase that
fails prints its error and the others go on.

Exit status: 0 when it ran (failed phases are marked in the table), 2 when CUDA was
asked for (the default) and this machine has none: it then prints "no CUDA" and measures
nothing; 1 when the model cannot even be built (the error is printed). ``--dry-run``
(CPU, 2 steps, a small model and image) exercises every phase quickly; its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Exit status when CUDA is asked for and absent (nothing measured).
EXIT_NO_CUDA = 2
#: (rows, cols) of a full-column MIP at 1 mm.
MIP_SIZE = (600, 140)
#: Share of the budget per phase family.
SHARES = {"train": 0.5, "data": 0.33, "infer": 0.17}
#: Settings of --dry-run: small enough for two CPU cores in seconds.
DRY_RUN_CONFIG = {
    "backbone": "resnet18",
    "stride_in_1x1": False,  # the paper's detectron2 layout needs a bottleneck ResNet
    "min_size": 128,
    "max_size": 128,
    "fpn_channels": 32,
    "box_head_dim": 64,
    "mask_head_layers": [32],
    "rpn_pre_nms_top_n_train": 100,
    "rpn_post_nms_top_n_train": 50,
    "rpn_pre_nms_top_n_test": 50,
    "rpn_post_nms_top_n_test": 20,
    "box_batch_size_per_image": 32,
    "batch_size": 2,
}


@dataclass
class Row:
    """One line of the table."""

    phase: str
    steps: int = 0
    s_per_step: float = math.nan
    images_per_s: float = math.nan
    peak_gib: float = math.nan
    wait: float = math.nan
    ms: float = math.nan
    note: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="paper", help="shipped name or YAML (default paper)")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--steps", type=int, help="timed steps per training variant (40)")
    ap.add_argument("--warmup", type=int, help="untimed steps before timing (5)")
    ap.add_argument("--data-steps", type=int, help="timed steps per worker count (30)")
    ap.add_argument("--workers", type=int, nargs="+", help="loader workers (2 4 8)")
    ap.add_argument("--infer-repeats", type=int, help="timed MIPs per inference path (30)")
    ap.add_argument("--images", type=int, help="synthetic MIPs generated (60)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all phases")
    ap.add_argument("--small", action="store_true", help="a small model and image (CPU)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, 2 steps, small: code path")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    args = ap.parse_args(argv)
    defaults = dict(steps=40, warmup=5, data_steps=30, workers=[2, 4, 8], infer_repeats=30,
                    images=60)  # fmt: skip
    if args.dry_run:
        args.device, args.small = "cpu", True
        defaults.update(steps=2, warmup=0, data_steps=2, workers=[2], infer_repeats=2, images=6)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# ------------------------------------------------------------------------- helpers


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _clock(dev) -> float:
    """perf_counter after the device has finished its queued work."""
    _sync(dev)
    return time.perf_counter()


def _config(args: argparse.Namespace):
    """(config mapping, note) of the run: the named config, small for --small."""
    from napari_vertebra.model.config import load_config

    over: dict[str, Any] = dict(DRY_RUN_CONFIG) if args.small else {}
    if args.batch_size:
        over["batch_size"] = args.batch_size
    return load_config(args.config, over), f"config {args.config}"


def _build(cfg, settings: str = "task"):
    """The model the config trains; with starting weights named, their architecture
    (frozen stages, FrozenBatchNorm) without loading the file."""
    from napari_vertebra.model.build import build_model

    data = cfg.to_dict()
    if data.get("weights"):
        try:
            return build_model(data, settings=settings, load_weights=False), True
        except TypeError:  # a build_model without load_weights
            data["weights"] = None
            data["frozen_bn"] = True
    return build_model(data, settings=settings), False


def _samples(n: int, size: tuple[int, int], seed: int = 0) -> list[tuple]:
    """(MIP float32 HU, class ids, masks (N, H, W) bool) of ``n`` synthetic columns."""
    from napari_vertebra.annotation.polygons import rasterize
    from napari_vertebra.synth import synth_spine

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        im, anns = synth_spine(rng, size)
        masks = np.stack([rasterize(a.polygons[0], im.shape) for a in anns])
        out.append((im, np.array([a.class_id for a in anns]), masks))
    return out


def _target(cls: np.ndarray, masks: np.ndarray, dev) -> dict:
    import torch

    boxes = []
    for m in masks:
        rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
    return {
        "boxes": torch.tensor(np.array(boxes), dtype=torch.float32, device=dev),
        "labels": torch.as_tensor(cls, dtype=torch.int64, device=dev),
        "masks": torch.from_numpy(masks.astype(np.uint8)).to(dev),
    }


def _optimizer(model, cfg):
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=float(cfg.lr), momentum=float(cfg.momentum), weight_decay=1e-4
    )


def _step(model, opt, images, targets, dtype, scaler, dev) -> float:
    """One training step (forward, backward, optimizer); the loss as a float."""
    import torch

    with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    return loss.detach()


# -------------------------------------------------------------------------- phases


def train_variant(model, init, cfg, batches, dev, amp: str, channels_last: bool, steps: int,
                  warmup: int, budget: float) -> Row:  # fmt: skip
    """Time ``steps`` training steps on batches already on the device."""
    import torch

    name = f"train {amp}{' channels_last' if channels_last else ''}"
    model.load_state_dict(init)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    model.train()
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    opt = _optimizer(model, cfg)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    losses = []
    for i in range(warmup):
        images, targets = batches[i % len(batches)]
        _step(model, opt, images, targets, dtype, scaler, dev)
    t0 = _clock(dev)
    done = 0
    for i in range(steps):
        images, targets = batches[(warmup + i) % len(batches)]
        losses.append(_step(model, opt, images, targets, dtype, scaler, dev))
        done += 1
        if time.perf_counter() - start > budget:
            break
    elapsed = _clock(dev) - t0
    bs = len(batches[0][0])
    row = Row(name, steps=done, s_per_step=elapsed / max(done, 1))
    row.images_per_s = bs * done / elapsed if elapsed > 0 else math.nan
    if dev.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated(dev) / 2**30
    finite = all(bool(torch.isfinite(v)) for v in losses)
    row.note = ("" if done == steps else f"budget: {done}/{steps} steps; ") + (
        "" if finite else "non-finite loss (random weights); "
    )
    model.to(memory_format=torch.contiguous_format)
    return row


def data_phase(model, init, cfg, split_dir: Path, workers: int, dev, amp: str, steps: int,
               warmup: int, budget: float) -> Row:  # fmt: skip
    """Training fed by a DataLoader: the fraction of time spent waiting for batches."""
    import torch

    from napari_vertebra.model.data import VertebraDataset, collate

    ds = VertebraDataset(split_dir, cfg, train=True)
    bs = int(cfg.batch_size)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=bs, shuffle=True, drop_last=True, collate_fn=collate,
        num_workers=workers, pin_memory=dev.type == "cuda",
        persistent_workers=workers > 0,
    )  # fmt: skip
    model.load_state_dict(init)
    model.train()
    dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None
    opt = _optimizer(model, cfg)

    def batches():
        epoch = 0
        while True:
            ds.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = batches()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    wait = total = 0.0
    done = 0
    for i in range(warmup + steps):
        t0 = _clock(dev)
        images, targets = next(it)
        images = [im.to(dev, non_blocking=True) for im in images]
        targets = [
            {k: v.to(dev, non_blocking=True) if hasattr(v, "to") else v for k, v in t.items()}
            for t in targets
        ]
        t1 = time.perf_counter()
        _step(model, opt, images, targets, dtype, scaler, dev)
        t2 = _clock(dev)
        if i >= warmup:
            wait += t1 - t0
            total += t2 - t0
            done += 1
        if i >= warmup and time.perf_counter() - start > budget:
            break
    it.close()
    row = Row(f"data {workers} workers ({amp})", steps=done, s_per_step=total / max(done, 1))
    row.images_per_s = bs * done / total if total > 0 else math.nan
    row.wait = wait / total if total > 0 else math.nan
    if dev.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated(dev) / 2**30
    row.note = "" if done == steps else f"budget: {done}/{steps} steps"
    return row


def infer_phase(state, cfg, mips, dev, repeats: int, budget: float) -> list[Row]:
    """ms per MIP at batch 1: ours (Predictor) vs torchvision's default forward."""
    import torch

    from napari_vertebra.model.data import image_to_tensor
    from napari_vertebra.model.predict import Predictor

    rows = []
    ours_model, _ = _build(cfg, "task")
    ours_model.load_state_dict(state)
    tv_model, _ = _build(cfg, "torchvision")
    tv_model.load_state_dict(state)
    hu_max = float(cfg.hu_max)
    min_score = float(cfg.min_score)
    ours = Predictor(ours_model, device=str(dev), config=cfg)
    tv_model.to(dev).eval()

    def tv(im):
        with torch.inference_mode():
            return tv_model([image_to_tensor(im, hu_max).to(dev)])[0]

    cases = [
        (f"infer ours (min_score {min_score:g})", lambda im: ours.predict(im)),
        ("infer ours (min_score 0.05)", lambda im: ours.predict(im, min_score=0.05)),
        ("infer torchvision default", tv),
    ]
    for name, fn in cases:
        try:
            fn(mips[0])  # warm-up
            _sync(dev)
            times, counts = [], []
            start = time.perf_counter()
            for k in range(repeats):
                im = mips[k % len(mips)]
                t0 = _clock(dev)
                out = fn(im)
                times.append(_clock(dev) - t0)
                counts.append(len(out) if not isinstance(out, dict) else len(out["labels"]))
                if time.perf_counter() - start > budget / len(cases):
                    break
            row = Row(name, steps=len(times), ms=1000 * float(np.median(times)))
            row.note = f"{np.mean(counts):.1f} detections/MIP (random weights)"
        except Exception as e:  # keep going: report the failure in the table
            row = Row(name, error=f"{type(e).__name__}: {e}")
            traceback.print_exc()
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- table


def _fmt(v: float, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(rows: list[Row]) -> str:
    """The figures as a fixed-width text table."""
    head = ("phase", "steps", "s/step", "images/s", "peak GiB", "data wait", "ms/MIP", "note")
    lines = [
        f"{head[0]:<34} {head[1]:>5} {head[2]:>7} {head[3]:>8} {head[4]:>8} {head[5]:>9} "
        f"{head[6]:>7}  {head[7]}"
    ]
    for r in rows:
        note = f"FAILED: {r.error}" if r.error else r.note.rstrip("; ")
        wait = "-" if math.isnan(r.wait) else f"{100 * r.wait:.0f} %"
        lines.append(
            f"{r.phase:<34} {r.steps:>5} {_fmt(r.s_per_step, '.3f'):>7} "
            f"{_fmt(r.images_per_s, '.1f'):>8} {_fmt(r.peak_gib, '.2f'):>8} {wait:>9} "
            f"{_fmt(r.ms, '.1f'):>7}  {note}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run every phase and print the table; the exit status (see the module docstring)."""
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"no CUDA: this machine has no CUDA GPU that torch {torch.__version__} can use "
            f"(CUDA build {torch.version.cuda or 'none'}); nothing was measured. "
            "benchmarks/gpu.py measures a GPU; `--dry-run` runs its code path on CPU.",
            flush=True,
        )
        return EXIT_NO_CUDA
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = False  # MIP sizes vary: no per-shape autotuning
    t_start = time.perf_counter()
    budget = {k: args.budget * v for k, v in SHARES.items()}
    size = (128, 32) if args.small else MIP_SIZE
    try:
        cfg, cfg_note = _config(args)
        bs = int(cfg.batch_size)
        torch.manual_seed(0)
        model, as_transfer = _build(cfg)
        model.to(dev)
    except Exception as e:  # nothing can be measured without the model
        traceback.print_exc()
        print(f"setup failed, nothing measured: {type(e).__name__}: {e}")
        return 1
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(
        f"device {name}  torch {torch.__version__}  {cfg_note}: {cfg.backbone}, "
        f"min/max size {cfg.min_size}/{cfg.max_size}, batch {bs}, "
        f"{'starting-weights architecture (random values)' if as_transfer else 'random start'}"
        f"\nsynthetic MIPs {size[0]} x {size[1]} px; budget {args.budget:.0f} s",
        flush=True,
    )
    rows: list[Row] = []
    samples = _samples(4 * bs, size)  # training batches and inference MIPs
    tensors = []
    from napari_vertebra.model.data import image_to_tensor

    for im, cls, masks in samples:
        tensors.append((image_to_tensor(im, float(cfg.hu_max)).to(dev), _target(cls, masks, dev)))
    batches = [
        tuple(zip(*tensors[k : k + bs], strict=True)) for k in range(0, len(tensors) - bs + 1, bs)
    ]
    amps = ["fp32", "fp16", "bf16"]
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        amps.remove("bf16")
    if dev.type == "cpu":  # fp16 autocast on CPU is emulated and very slow: CUDA only
        amps.remove("fp16")
        rows.append(Row("train fp16 (GradScaler)", note="skipped on CPU (CUDA only)"))
    variants = [(a, cl) for a in amps for cl in (False, True)]
    for amp, cl in variants:
        try:
            row = train_variant(model, init, cfg, batches, dev, amp, cl, args.steps,
                                args.warmup, budget["train"] / len(variants))  # fmt: skip
        except Exception as e:
            traceback.print_exc()
            row = Row(
                f"train {amp}{' channels_last' if cl else ''}", error=f"{type(e).__name__}: {e}"
            )
        rows.append(row)
        print(format_table([row]).splitlines()[1], flush=True)
    # the data path
    amp_data = "fp16" if bool(cfg.amp) and dev.type == "cuda" else "fp32"
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        try:
            from napari_vertebra.annotation.coco import write_coco
            from napari_vertebra.synth import synth_dataset

            images = synth_dataset(args.images, size, seed=1, prefix="train")
            for im in images:  # timed as columns at 1 mm (MIP_SIZE): the paper's scale
                im.meta["spacing_mm"] = 1.0
            split = Path(tmp) / "train"
            write_coco(images, split)
            for w in args.workers:
                try:
                    row = data_phase(model, init, cfg, split, w, dev, amp_data, args.data_steps,
                                     args.warmup, budget["data"] / len(args.workers))  # fmt: skip
                except Exception as e:
                    traceback.print_exc()
                    row = Row(f"data {w} workers", error=f"{type(e).__name__}: {e}")
                rows.append(row)
                print(format_table([row]).splitlines()[1], flush=True)
        except Exception as e:
            traceback.print_exc()
            rows.append(Row("data (synthetic COCO split)", error=f"{type(e).__name__}: {e}"))
    # inference
    try:
        rows += infer_phase(init, cfg, [s[0] for s in samples], dev, args.infer_repeats,
                            budget["infer"])  # fmt: skip
    except Exception as e:
        traceback.print_exc()
        rows.append(Row("infer", error=f"{type(e).__name__}: {e}"))
    print()
    print(format_table(rows))
    print(
        f"\ntraining rows: batches already on the device; 'data' rows: the DataLoader path "
        f"(augmentation, pin_memory, persistent workers), data wait = time blocked on the "
        f"next batch / step time; ms/MIP: median at batch 1, fp32, synchronised. "
        f"Total {time.perf_counter() - t_start:.0f} s."
    )
    failed = sum(bool(r.error) for r in rows)
    if failed:
        print(f"{failed} phase(s) failed (see above); the others ran.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
