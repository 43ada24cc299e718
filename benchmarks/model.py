"""Inference and training speed of our Mask R-CNN settings vs torchvision's defaults.

    .venv/bin/python benchmarks/model.py [--backbone resnet50] [--sizes 512 1024]
        [--checkpoint RUN/last.pt] [--aspect 4] [--repeats 2] [--device cpu] [--threads 2]

Same images, same backbone and weights. The images are synthetic full-column MIPs of
size x size/aspect px (default 4: the aspect of a real cropped MIP, a full spine at 1 mm
is about 600 x 140 px; the bundled lumbar sample's MIP is 336 x 136 for 6 vertebrae), so
that "size" is the input size the model sees. "ours" is :class:`Predictor` with the
task's RPN/ROI settings (300/100 test proposals, box_detections_per_img detections; the
mask head runs only on the detections that survive the score threshold and the duplicate
suppression: class-agnostic box IoU, then mask overlap). "torchvision" uses the
library's default settings (1000/1000 proposals, 100 detections) and its default eval
forward, the mask head on every detection: "tv fwd" times ``model(images)`` alone, "tv
pred" the same forward plus the class probabilities and our post-processing
(:func:`full_detections` + :func:`postprocess`), i.e. the same prediction on
torchvision's path. ratio = tv pred / ours, ratio fwd = tv fwd / ours. "same
detections": images on which ours and tv pred give the same classes, in order, with
boxes of IoU > 0.5 (at the checkpoint's min_score). "= full": ours equals
:func:`full_detections` + :func:`postprocess` with our settings (classes, boxes, scores
and masks), i.e. computing fewer masks changed nothing. "dets": detections before the
score threshold (what the full mask head would run on); "mask rois": boxes ours runs the
mask head on; "kept": vertebrae in ours's prediction.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _images(size: int, n: int, aspect: float = 4.0, seed: int = 0) -> list[tuple]:
    """(MIP, true vertebra outlines) pairs."""
    from napari_vertebra.synth import synth_spine

    rng = np.random.default_rng(seed)
    return [synth_spine(rng, (size, round(size / aspect))) for _ in range(n)]


def _quality(preds, truths, size: int) -> tuple[float, float]:
    """Mean Dice per true vertebra and identification rate of predictions (centroid
    within 20 px at 512 px, scaled with the size)."""
    from napari_vertebra.annotation.polygons import rasterize
    from napari_vertebra.model.metrics import centroids, dice_per_vertebra, identify

    dices, ids = [], []
    for p, (im, anns) in zip(preds, truths, strict=True):
        gc = np.array([a.class_id for a in anns])
        gm = np.stack([rasterize(a.polygons[0], im.shape) for a in anns])
        dices.extend(dice_per_vertebra(gc, gm, p.classes, p.masks))
        ok, _ = identify(gc, centroids(gm), p.classes, p.centroids(), 20.0 * size / 512)
        ids.extend(ok)
    return float(np.mean(dices)), float(np.mean(ids))


def _sync() -> None:
    """Wait for the queued CUDA work, so that a clock reading covers it (no-op on CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _median_time(fn, images, repeats: int) -> tuple[float, list]:
    fn(images[0])  # warm-up
    times, out = [], []
    for _ in range(repeats):
        for im in images:
            _sync()
            t = time.perf_counter()
            out.append(fn(im))
            _sync()
            times.append(time.perf_counter() - t)
    return float(np.median(times)), out[: len(images)]


def _full_predict(predictor, im):
    """The prediction on torchvision's eval forward (mask head on every detection)."""
    from napari_vertebra.model.data import image_to_tensor
    from napari_vertebra.model.detect import full_detections
    from napari_vertebra.model.predict import _check_image, postprocess

    a = _check_image(im)
    t = image_to_tensor(a, predictor.hu_max).to(predictor.device)
    det = full_detections(predictor.model, [t])[0]
    return postprocess(det, a.shape, predictor.min_score, box_iou=predictor.box_iou)


def _tv_forward(predictor, im):
    """torchvision's default path as a user calls it: model(images)."""
    import torch

    from napari_vertebra.model.data import image_to_tensor

    with torch.inference_mode():
        return predictor.model([image_to_tensor(im, predictor.hu_max).to(predictor.device)])


def _counts(predictor, images) -> tuple[float, float, float]:
    """Mean detections before the score threshold, mean boxes the mask head runs on and
    mean vertebrae kept, by ours."""
    from napari_vertebra.model.data import image_to_tensor
    from napari_vertebra.model.detect import raw_detections

    n_det, n_roi, n_kept = [], [], []
    for im in images:
        t = image_to_tensor(im, predictor.hu_max).to(predictor.device)
        d = raw_detections(predictor.model, [t], predictor.min_score, predictor.box_iou)[0]
        n_det.append(len(d["scores"]))
        n_roi.append(int(d["mask_rois"]))
        n_kept.append(len(d["keep"]))
    return float(np.mean(n_det)), float(np.mean(n_roi)), float(np.mean(n_kept))


def _identical(a, b) -> bool:
    return (
        len(a) == len(b)
        and np.array_equal(a.classes, b.classes)
        and np.array_equal(a.boxes, b.boxes)
        and np.array_equal(a.scores, b.scores)
        and np.array_equal(a.masks, b.masks)
    )


def _same(a, b) -> bool:
    import torch
    from torchvision.ops import box_iou

    if len(a) != len(b) or not np.array_equal(a.classes, b.classes):
        return False
    if len(a) == 0:
        return True
    iou = box_iou(torch.as_tensor(a.boxes), torch.as_tensor(b.boxes)).diagonal()
    return bool((iou > 0.5).all())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument(
        "--config", default=None, help="YAML whose inference settings replace the checkpoint's"
    )
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--aspect", type=float, default=4.0, help="image height / width")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from napari_vertebra.model.build import build_model, load_checkpoint
    from napari_vertebra.model.config import load_config
    from napari_vertebra.model.device import resolve_device
    from napari_vertebra.model.predict import Predictor

    torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        base = dict(ckpt["config"])
        base["frozen_bn"] = base.get("frozen_bn") or base.get("weights") is not None
        base["weights"] = None
        state = ckpt["model"]
        sizes = sorted({*args.sizes, int(base["max_size"])})
        if args.config:
            from napari_vertebra.model.predict import TEST_SETTINGS

            over = load_config(args.config)
            base.update({k: over[k] for k in TEST_SETTINGS})
    else:
        base = load_config(None, {"backbone": args.backbone})
        state = None
        sizes = args.sizes
    torch.manual_seed(0)
    rows = []
    for size in sizes:
        cfg = {**base, "min_size": size, "max_size": size}
        pairs = _images(size, args.images, args.aspect)
        ims = [im for im, _ in pairs]
        preds = {}
        for settings in ("task", "torchvision"):
            model = build_model(cfg, settings=settings)
            if state is None:
                state = model.state_dict()
            model.load_state_dict(state)
            preds[settings] = Predictor(model, device=str(dev), config=cfg)
        ours, tv = preds["task"], preds["torchvision"]
        t_ours, p_ours = _median_time(ours.predict, ims, args.repeats)
        t_tv, p_tv = _median_time(lambda im, tv=tv: _full_predict(tv, im), ims, args.repeats)
        t_fwd, _ = _median_time(lambda im, tv=tv: _tv_forward(tv, im), ims, args.repeats)
        same = sum(_same(a, b) for a, b in zip(p_ours, p_tv, strict=True))
        full = all(
            _identical(a, _full_predict(ours, im)) for a, im in zip(p_ours, ims, strict=True)
        )
        rows.append(
            (size, t_ours, _counts(ours, ims), t_tv, t_fwd, _counts(tv, ims)[0], same, full,
             _quality(p_ours, pairs, size), _quality(p_tv, pairs, size))
        )  # fmt: skip
    # training throughput (our settings, batch 2, smallest size)
    size = train_size = sizes[0]
    cfg = {**base, "min_size": size, "max_size": size}
    model = build_model(cfg).to(dev)
    model.load_state_dict(state, strict=False)
    from napari_vertebra.annotation.polygons import rasterize
    from napari_vertebra.model.data import image_to_tensor
    from napari_vertebra.synth import synth_spine

    rng = np.random.default_rng(1)
    batch = []
    for _ in range(2):
        im, anns = synth_spine(rng, (size, round(size / args.aspect)))
        masks = np.stack([rasterize(a.polygons[0], im.shape) for a in anns])
        boxes = [
            (np.nonzero(m.any(0))[0][0], np.nonzero(m.any(1))[0][0],
             np.nonzero(m.any(0))[0][-1] + 1, np.nonzero(m.any(1))[0][-1] + 1)
            for m in masks
        ]  # fmt: skip
        batch.append(
            (
                image_to_tensor(im).to(dev),
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32, device=dev),
                    "labels": torch.tensor([a.class_id for a in anns], device=dev),
                    "masks": torch.from_numpy(masks.astype(np.uint8)).to(dev),
                },
            )
        )
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(args.train_steps + 1):
        _sync()
        t = time.perf_counter()
        loss = sum(model([b[0] for b in batch], [b[1] for b in batch]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        _sync()
        times.append(time.perf_counter() - t)
    ips = 2 / float(np.median(times[1:]))
    peak = (
        f", peak memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB"
        if dev.type == "cuda"
        else ""
    )
    print(
        f"\nbackbone {base['backbone']}  device {dev}  threads {torch.get_num_threads()}  "
        f"weights {'from ' + args.checkpoint if args.checkpoint else 'random'}"
    )
    head = ("input px", "ours s/img", "dets", "mask rois", "kept", "tv pred s/img",
            "tv fwd s/img", "tv dets", "ratio", "ratio fwd", "same detections", "= full",
            "Dice", "id", "tv Dice", "tv id")  # fmt: skip
    widths = (9, 11, 5, 9, 5, 14, 13, 8, 6, 9, 16, 6, 5, 5, 7, 5)
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    n = args.images
    for size, t_ours, (dets, rois, kept), t_tv, t_fwd, tv_dets, same, full, q, qt in rows:
        print(
            f"{f'{size}x{round(size / args.aspect)}':>9} {t_ours:>11.3f} {dets:>5.1f} "
            f"{rois:>9.1f} {kept:>5.1f} {t_tv:>14.3f} {t_fwd:>13.3f} {tv_dets:>8.1f} "
            f"{t_tv / t_ours:>6.2f} {t_fwd / t_ours:>9.2f} {f'{same}/{n} images':>16} "
            f"{full!s:>6} {q[0]:>5.2f} {q[1]:>5.2f} {qt[0]:>7.2f} {qt[1]:>5.2f}"
        )
    print(
        "Dice, id: ours against the synthetic truth (is the model trained?); tv Dice, tv id:\n"
        "the same for torchvision's path (where the detections differ, which one is right)"
    )
    print(
        f"training (ours, batch 2, fp32, {train_size} px): {ips:.2f} images/s{peak}\n"
        "(timed regions end with torch.cuda.synchronize() on CUDA; AMP, channels_last, "
        "batch 5 at 1024 px, memory and data-loader workers: benchmarks/gpu.py)"
    )


if __name__ == "__main__":
    main()
