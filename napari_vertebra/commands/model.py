"""Model sub-commands: ``train``, ``predict``, ``evaluate`` and ``synth``.

torch is imported inside the run functions only, so ``napari-vertebra --help`` and the
other commands stay fast and work without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import add_common_args, add_fractions, at_least, positive

__all__ = ["register", "run_evaluate", "run_predict", "run_synth", "run_train"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the model commands to the ``napari-vertebra`` parser."""
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_synth(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train Mask R-CNN on COCO splits (DIR/train, DIR/val)",
        description="Train Mask R-CNN. --config takes a YAML file or a shipped "
        "configuration by name (paper, smoke, synth-r50). RUN gets last.pt (every epoch and "
        "when stopped), best.pt (best validation best_metric, default the identification "
        "rate), progress.jsonl (one line per step and per epoch), log.csv (one row per "
        "epoch), config.yaml (and TensorBoard events if installed). --resume "
        "continues exactly where last.pt stopped; changes other than epochs, lr and a few "
        "inference keys are refused. Several GPUs: start with torchrun (see "
        "training/torchrun.sh); lr is for one process's batch and scales linearly with the "
        "number of processes (lr_scaling). See docs/training.md.",
    )
    from napari_vertebra.model.config import add_train_arguments  # no torch

    add_train_arguments(p)
    p.set_defaults(func=run_train)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="find and label vertebrae on MIPs or CT scans",
        description="Predict vertebrae. An input is a MIP (16-bit PNG written by the "
        "annotation tools, or .npy of windowed HU) or a CT (any format read_ct reads; the "
        "preprocessing pipeline runs first). Writes OUT/predictions.json (COCO results), "
        "OUT/<name>_labels.png (class ids 0..21) and OUT/<name>_overlay.png. A "
        "prediction's score is the probability of its class (vertebra_score: 1 - "
        "p(background), for review). Without a checkpoint, the starter model that ships "
        "with the package predicts (docs/starter_model.md: trained on four real scans, "
        "not for clinical use).",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="[CHECKPOINT] INPUT",
        help="MIP (.png, .npy) or CT; a first argument ending in .pt is the checkpoint",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint",
        help="a checkpoint from napari-vertebra train (RUN/best.pt); default: the shipped "
        "starter model",
    )
    add_common_args(
        p, "output folder", device=True,
        min_score="minimum class probability of a detection (default: the config's, the "
        "paper's 0.9; see docs/model.md)",
    )  # fmt: skip
    p.add_argument(
        "--hu-scale",
        type=positive,
        default=None,
        help="PNG stored value per HU (default: annotation.coco HU_SCALE = 40)",
    )
    p.add_argument(
        "--spacing",
        type=positive,
        metavar="MM",
        help="mm per pixel of the MIP inputs (default: the report.json beside a MIP of "
        "'napari-vertebra preprocess', the pipeline's grid for a CT); a model with a fixed "
        "scale (config pixels_per_mm: paper, levels) refuses a MIP whose spacing it cannot "
        "know",
    )
    p.add_argument("--no-order", action="store_true", help="skip the anatomical ordering")
    p.set_defaults(func=run_predict)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="identification rate, Dice per vertebra and COCO mAP on a test split",
        description="Evaluate a checkpoint, or a COCO results file of any tool "
        "(--predictions), on a COCO split (a folder with annotations.json, as 'dataset "
        "build' writes it). Writes OUT/metrics.json (id_rate: VerSe identification rate, "
        "the prediction with the vertebra's label within --max-dist mm and that vertebra "
        "the closest true one, averaged over images; id_rate_per_image, id_rate_pooled, "
        "localisation_mm, dice_per_class, mean_dice, box_mAP/mask_mAP of the raw "
        "detections and *_at_threshold at --min-score) and OUT/dice_per_class.png, and "
        "prints a table. Distances use each image's pixel spacing (1 mm when the split "
        "does not give one).",
    )
    p.add_argument(
        "checkpoint", nargs="?", help="a checkpoint from napari-vertebra train (or --predictions)"
    )
    p.add_argument(
        "--predictions",
        metavar="RESULTS.json",
        help="COCO results (list of {image_id, category_id, segmentation (RLE or polygons), "
        "score}) to evaluate instead of a checkpoint",
    )
    p.add_argument("--data", required=True, help="COCO split folder (e.g. DIR/test)")
    add_common_args(
        p, "output folder", device=True,
        min_score="minimum class probability of a prediction (checkpoint: default the "
        "config's, 0.9; --predictions: default none, every entry counts)",
    )  # fmt: skip
    p.add_argument(
        "--max-dist",
        type=positive,
        default=20.0,
        help="identification distance, mm (default 20, VerSe)",
    )
    p.set_defaults(func=run_evaluate)


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write synthetic spine MIPs with COCO annotations (train/val/test)",
        description="Synthetic sagittal spine MIPs in the layout of 'dataset build': "
        "DIR/train|val|test/annotations.json + 16-bit PNGs, split by column (scan). By "
        "default whole columns (C5..sacrum, with the spine variants of docs/levels.md) "
        "drawn at --spacing mm per pixel (1 mm, as the pipeline's MIPs: the scale the "
        "paper and levels configs assume), whole-vertebra outlines (as labels from 3D "
        "outline them), each image's spacing in its COCO meta (spacing_mm), and "
        "--views-per-image partial views of each column. With --size H W instead: T1..L5 "
        "scaled to fill H x W px images (vertebral-body outlines, no physical scale, no "
        "spacing recorded), for the configs that resize every image (smoke, synth-r50); "
        "a fixed-scale config refuses them.",
    )
    add_common_args(p, "output folder")
    p.add_argument(
        "--n", type=at_least(3), default=60,
        help="number of columns (scans), or of images with --size (default 60)",
    )  # fmt: skip
    p.add_argument(
        "--views-per-image", type=at_least(0), default=None, metavar="N",
        help="partial views per column besides the full column (default 4)",
    )  # fmt: skip
    p.add_argument(
        "--spacing", type=positive, default=1.0, metavar="MM",
        help="mm per pixel of the columns (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--class-set", choices=("paper", "extended"), default="paper",
        help="levels labelled on the columns: paper (T1..L5) or extended (also C7, T13, L6, "
        "sacrum; docs/levels.md)",
    )  # fmt: skip
    p.add_argument(
        "--size", type=at_least(1), nargs=2, metavar=("H", "W"),
        help="scaled images of H x W px instead of columns at a physical scale",
    )  # fmt: skip
    p.add_argument(
        "--partial", action="store_true", help="with --size: every other image a partial view"
    )
    p.add_argument("--seed", type=at_least(0), default=0, help="random seed (default 0)")
    add_fractions(p, "shares of the columns (or images) in train, val and test")
    p.set_defaults(func=run_synth)


def run_train(args: argparse.Namespace) -> int:
    """``napari-vertebra train``."""
    from napari_vertebra.model.train import main

    return main(args)


def _preprocess_report(path: Path) -> dict:
    """The report.json beside a MIP of ``napari-vertebra preprocess`` ({} when none)."""
    report = path.with_name("report.json")
    if not report.is_file():
        return {}
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_input(path: Path, hu_scale: float | None):
    """(2D MIP in windowed HU, kind, mm per pixel or None when unknown) from a PNG/.npy
    MIP (the spacing of the report.json beside a MIP of ``preprocess``) or a CT."""
    import numpy as np

    name = path.name.lower()
    if name.endswith((".npy", ".png", ".tif", ".tiff")):
        report = _preprocess_report(path)
        spacing = (report.get("params") or {}).get("spacing_mm")
        if name.endswith(".npy"):
            try:
                return np.load(path, allow_pickle=False), "mip", spacing
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: cannot read .npy ({e})") from e
        from napari_vertebra.annotation.image_files import HU_SCALE, read_image

        # a MIP from `napari-vertebra preprocess` names its scale
        hu_scale = hu_scale or report.get("mip_png_hu_scale") or HU_SCALE
        return read_image(path, hu_scale), "mip", spacing
    from napari_vertebra.core import PreprocessParams, read_ct, run_pipeline
    from napari_vertebra.core.io import is_supported_path

    if not path.exists():
        raise ValueError(f"{path}: input not found")
    if not is_supported_path(path):
        raise ValueError(f"{path}: not a MIP (.png, .npy) or a CT file/folder")
    params = PreprocessParams()
    return run_pipeline(read_ct(path), params).mip, "ct", params.spacing_mm


def _mip_spacing(path: Path, found: float | None, given: float | None, predictor) -> float | None:
    """The spacing to predict ``path`` at: ``--spacing``, else the one found; a model at
    a fixed scale refuses a MIP whose spacing is unknown."""
    spacing = given if given is not None else found
    if spacing is None and predictor.tile_rows is not None:
        raise ValueError(
            f"{path}: the pixel spacing of this MIP is unknown (no report.json of "
            "napari-vertebra preprocess beside it), and the model sees MIPs at a fixed "
            f"scale ({predictor.config.pixels_per_mm:g} px per mm): give --spacing MM (1 "
            "for the MIPs of napari-vertebra preprocess and labels-to-coco)"
        )
    return spacing


def run_predict(args: argparse.Namespace) -> int:
    """``napari-vertebra predict``."""
    import numpy as np

    from napari_vertebra.model.predict import Predictor
    from napari_vertebra.model.render import overlay_rgb, prediction_results, save_png

    out = Path(args.output)
    checkpoint, inputs = _checkpoint_and_inputs(args.checkpoint, args.inputs)
    predictor = Predictor(checkpoint, device=args.device, min_score=args.min_score)
    predictor.order = not args.no_order
    results, images = [], []
    used: set[str] = set()
    for k, inp in enumerate(inputs, start=1):
        path = Path(inp)
        mip, kind, found = _read_input(path, args.hu_scale)
        spacing = _mip_spacing(path, found, args.spacing, predictor)
        try:
            pred = predictor.predict(mip, spacing=spacing)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        stem = path.name.split(".")[0] or f"input{k}"
        while stem in used:
            stem += "_"
        used.add(stem)
        out.mkdir(parents=True, exist_ok=True)
        save_png(out / f"{stem}_labels.png", pred.label_image())
        save_png(out / f"{stem}_overlay.png", overlay_rgb(mip, pred, predictor.hu_max))
        if kind == "ct":
            np.save(out / f"{stem}_mip.npy", mip.astype(np.float32))
        entry = {"id": k, "file_name": str(path), "height": mip.shape[0], "width": mip.shape[1]}
        if spacing is not None:
            entry["spacing_mm"] = float(spacing)
        if pred.levels is not None:
            entry.update(pred.levels.as_dict())
        images.append(entry)
        results += prediction_results(pred, k, str(path))
        summary = f" ({pred.level_summary})" if pred.level_summary and len(pred) else ""
        print(f"{path}: {len(pred)} vertebrae {' '.join(pred.names)}{summary}")
    (out / "predictions.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "images.json").write_text(json.dumps(images, indent=1), encoding="utf-8")
    print(f"wrote {out / 'predictions.json'}")
    return 0


def _checkpoint_and_inputs(given: str | None, paths: list[str]) -> tuple[Path, list[str]]:
    """The checkpoint to predict with (``--checkpoint``, a first path ending in .pt/.pth,
    else the shipped starter model) and the inputs."""
    from napari_vertebra.model.starter import starter_checkpoint

    if given is None and paths and Path(paths[0]).suffix in (".pt", ".pth"):
        given, paths = paths[0], paths[1:]
    if not paths:
        raise ValueError("predict needs at least one INPUT (a MIP or a CT)")
    if given is not None:
        return Path(given), paths
    starter = starter_checkpoint()
    if starter is None:
        raise ValueError(
            "no checkpoint given and this installation has no starter model "
            "(napari_vertebra/weights/starter.pt): give --checkpoint RUN/best.pt"
        )
    print(f"predicting with the starter model {starter} (docs/starter_model.md)")
    return starter, paths


def run_evaluate(args: argparse.Namespace) -> int:
    """``napari-vertebra evaluate``."""
    if (args.checkpoint is None) == (args.predictions is None):
        raise ValueError(
            "evaluate needs a CHECKPOINT or --predictions RESULTS.json (exactly one of them)"
        )
    if args.predictions is not None:
        from napari_vertebra.model.report import format_table, run_results_evaluation

        metrics = run_results_evaluation(
            args.predictions, args.data, args.output, args.min_score, args.max_dist
        )
        for w in metrics.get("warnings", []):
            print(f"warning: {w}", file=sys.stderr)
    else:
        from napari_vertebra.model.report import format_table, run_evaluation

        metrics = run_evaluation(
            args.checkpoint, args.data, args.output, args.device, args.min_score, args.max_dist
        )
    print(format_table(metrics))
    print(f"wrote {Path(args.output) / 'metrics.json'}")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """``napari-vertebra synth``."""
    from napari_vertebra.synth import write_synth, write_synth_columns

    out, fractions = Path(args.output), args.fractions
    if args.size is not None:
        if args.views_per_image is not None:
            raise ValueError("--views-per-image goes with columns; --size images take --partial")
        counts = write_synth(out, args.n, tuple(args.size), args.partial, args.seed, fractions)
        what = f"{args.size[0]} x {args.size[1]} px images (no physical scale)"
    else:
        if args.partial:
            raise ValueError("--partial goes with --size; columns get --views-per-image views")
        views = 4 if args.views_per_image is None else args.views_per_image
        counts = write_synth_columns(
            out, args.n, views, args.class_set, args.spacing, args.seed, fractions
        )
        what = f"images of {args.n} columns at {args.spacing:g} mm per pixel"
    print(f"wrote {counts} {what} to {out}", file=sys.stdout)
    return 0
