"""The report of an evaluation: a text table, the Dice box plot and the files written.

``napari-vertebra evaluate CHECKPOINT --data SPLIT -o OUT`` (:func:`run_evaluation`) and
``napari-vertebra evaluate --predictions RESULTS.json --data SPLIT -o OUT``
(:func:`run_results_evaluation`) compute the metrics of :mod:`napari_vertebra.model.
evaluate` and write ``OUT/metrics.json`` and ``OUT/dice_per_class.png`` (a box plot of
Dice per vertebra like the paper's figure 7); :func:`format_table` is what they print.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_vertebra.core.progress import ProgressCallback

from .calibration import CERTAIN
from .evaluate import ID_MAX_DIST_MM, detection_metrics, evaluate_predictor, split_ground_truth
from .results import read_results

__all__ = [
    "dice_png",
    "format_table",
    "run_evaluation",
    "run_results_evaluation",
    "write_report",
]


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _level_lines(metrics: dict[str, Any]) -> list[str]:
    share = metrics.get("level_certain_share")
    if share is None:
        return []
    cut = metrics.get("level_certain_cutoff", CERTAIN)
    sure, rest = metrics.get("level_certain_id_rate"), metrics.get("level_uncertain_id_rate")
    lines = [
        f"level confidence: {share:.0%} of images called certain (>= {cut:g}), identified "
        f"at {_fmt(sure)}; the rest at {_fmt(rest)}"
    ]
    if sure is not None and sure < cut:
        lines.append(
            f"  warning: the images called certain are identified at {sure:.2f}, below "
            f"{cut:g}: on these images the level confidence overstates how sure the naming "
            "is (see docs/levels.md)"
        )
    return lines


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text summary table of :func:`detection_metrics`'s metrics."""
    lines = [
        f"images {metrics['n_images']}  true vertebrae {metrics['n_true']}  "
        f"predicted {metrics['n_pred']}",
        f"raw detections:  box mAP {metrics['box_mAP']:.3f}  mask mAP {metrics['mask_mAP']:.3f}"
        f"  mask mAP50 {metrics['mask_mAP50']:.3f}",
    ]
    if "mask_mAP_at_threshold" in metrics:
        lines.append(
            f"at score >= {_fmt(metrics.get('min_score'), '.2f')}:  box mAP "
            f"{metrics['box_mAP_at_threshold']:.3f}  mask mAP "
            f"{metrics['mask_mAP_at_threshold']:.3f}"
        )
    lines += [
        f"identification rate {metrics['id_rate']:.3f} (mean over images; pooled "
        f"{metrics['id_rate_pooled']:.3f})  localisation {_fmt(metrics['localisation_mm'], '.1f')}"
        f" mm  mean Dice {metrics['mean_dice']:.3f}  neighbour confusions "
        f"{metrics['n_neighbour_confusions']}",
        *_level_lines(metrics),
        "",
        f"{'vertebra':<9}{'n':>4}{'Dice':>8}",
    ]
    for name, v in metrics["dice_per_class"].items():
        n = len(metrics.get("_dice_values", {}).get(name, []))
        lines.append(f"{name:<9}{n:>4}{('   -' if v is None else f'{v:8.3f}'):>8}")
    return "\n".join(lines)


def dice_png(metrics: dict[str, Any]) -> bytes:
    """Box plot of Dice per vertebra class (matplotlib, Agg) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    vals = metrics["_dice_values"]
    names = list(vals)
    fig, ax = plt.subplots(figsize=(9, 3.5), dpi=100)
    data = [vals.get(n) or [np.nan] for n in names]
    ax.boxplot(data, tick_labels=names, showfliers=True)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Dice")
    ax.set_title(
        f"Dice per vertebra (mean {metrics['mean_dice']:.3f}, id rate {metrics['id_rate']:.3f})"
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(metrics: dict[str, Any], out_dir: str | os.PathLike, **extra: Any) -> None:
    """OUT/metrics.json (public keys plus ``extra``) and OUT/dice_per_class.png, together."""
    from napari_vertebra.annotation._atomic import AtomicBatch

    out = Path(out_dir)
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    public.update(extra)
    text = json.dumps(public, indent=1)
    png = dice_png(metrics)
    with AtomicBatch() as batch:
        batch.add(out / "metrics.json", text.encode("utf-8"))
        batch.add(out / "dice_per_class.png", png)


def run_evaluation(
    checkpoint: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    min_score: float | None = None,
    max_dist: float = ID_MAX_DIST_MM,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """:func:`~napari_vertebra.model.evaluate.evaluate_predictor` of a checkpoint on a
    split; writes OUT/metrics.json and OUT/dice_per_class.png."""
    from .predict import Predictor

    predictor = Predictor(checkpoint, device=device, min_score=min_score)
    metrics = evaluate_predictor(predictor, split_dir, max_dist, progress)
    write_report(metrics, out_dir, checkpoint=str(checkpoint), split=str(split_dir))
    return metrics


def run_results_evaluation(
    predictions: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    min_score: float | None = None,
    max_dist: float = ID_MAX_DIST_MM,
) -> dict[str, Any]:
    """Evaluate a COCO results file of any tool against a split (same metrics as
    :func:`run_evaluation`); writes OUT/metrics.json and OUT/dice_per_class.png.

    ``box_mAP``/``mask_mAP`` rank every entry of the file; identification, localisation
    and Dice use the entries with ``score >= min_score`` (all when None), one per label.
    """
    gt = split_ground_truth(split_dir)
    warnings: list[str] = []
    results = read_results(predictions, gt, warnings)
    metrics = detection_metrics(gt, results, None, min_score, max_dist)
    metrics["warnings"] = warnings
    write_report(metrics, out_dir, predictions=str(predictions), split=str(split_dir))
    return metrics
