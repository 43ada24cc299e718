"""Evaluation on a COCO test split: COCO mAP, Dice per vertebra, identification rate.

Writes ``OUT/metrics.json`` (``mask_mAP``, ``box_mAP``, ``mean_dice``, ``dice_per_class``
by name, ``id_rate``, neighbour confusions, ...) and ``OUT/dice_per_class.png`` (a box
plot of Dice per vertebra like the paper's figure 7).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_vertebra.core.labels import VERTEBRAE
from napari_vertebra.core.progress import ProgressCallback, report

from .metrics import centroids, dice_per_vertebra, identify

__all__ = ["evaluate_predictor", "format_table", "run_evaluation"]


def evaluate_predictor(
    predictor,
    split_dir: str | os.PathLike,
    max_dist: float = 20.0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Metrics of a :class:`~napari_vertebra.model.predict.Predictor` on a COCO split.

    COCO box/mask mAP (pycocotools) are computed on the final predictions (after the
    score filter and anatomical ordering; the score is the vertebra confidence). Dice
    per true vertebra uses the prediction of the same class (0 when missing);
    identification: the closest prediction within ``max_dist`` px has the true class.
    """
    from .data import VertebraDataset, coco_ground_truth
    from .render import coco_results
    from .train import coco_map

    ds = VertebraDataset(split_dir, {"hu_max": predictor.hu_max})
    results: list[dict] = []
    dices: dict[int, list[float]] = {c: [] for c in range(1, len(VERTEBRAE) + 1)}
    n_gt = n_id = n_pred = 0
    confusions: dict[str, int] = {}
    per_image = []
    for i, im in enumerate(ds.images):
        report(progress, i / len(ds), f"predicting {im.file_name}")
        pred = predictor.predict(im.image)
        gt_cls, gt_masks = ds.masks(i)
        d = dice_per_vertebra(gt_cls, gt_masks, pred.classes, pred.masks)
        ok, conf = identify(gt_cls, centroids(gt_masks), pred.classes, pred.centroids(), max_dist)
        for c, v in zip(gt_cls, d, strict=True):
            dices[int(c)].append(float(v))
        for t, p in conf:
            key = f"{VERTEBRAE[t - 1]}->{VERTEBRAE[p - 1]}"
            confusions[key] = confusions.get(key, 0) + 1
        n_gt += len(gt_cls)
        n_id += int(ok.sum())
        n_pred += len(pred)
        per_image.append(
            {
                "file_name": im.file_name,
                "n_true": len(gt_cls),
                "n_pred": len(pred),
                "identified": int(ok.sum()),
                "mean_dice": float(d.mean()) if len(d) else None,
            }
        )
        results += coco_results(i + 1, pred.masks, pred.boxes, pred.classes, pred.scores)
    report(progress, 0.95, "COCO mAP")
    maps = coco_map(coco_ground_truth(ds), results)
    all_d = [v for vs in dices.values() for v in vs]
    metrics: dict[str, Any] = {
        **maps,
        "mean_dice": float(np.mean(all_d)) if all_d else 0.0,
        "dice_per_class": {
            VERTEBRAE[c - 1]: (float(np.mean(v)) if v else None) for c, v in dices.items()
        },
        "id_rate": n_id / n_gt if n_gt else 0.0,
        "id_max_dist_px": max_dist,
        "n_images": len(ds),
        "n_true": n_gt,
        "n_pred": n_pred,
        "n_identified": n_id,
        "neighbour_confusions": dict(sorted(confusions.items())),
        "n_neighbour_confusions": int(sum(confusions.values())),
        "min_score": predictor.min_score,
        "per_image": per_image,
        "_dice_values": {VERTEBRAE[c - 1]: v for c, v in dices.items()},
    }
    report(progress, 1.0, "evaluated")
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text summary table of :func:`evaluate_predictor`'s metrics."""
    lines = [
        f"images {metrics['n_images']}  true vertebrae {metrics['n_true']}  "
        f"predicted {metrics['n_pred']}",
        f"box mAP {metrics['box_mAP']:.3f}  mask mAP {metrics['mask_mAP']:.3f}  "
        f"mask mAP50 {metrics['mask_mAP50']:.3f}",
        f"mean Dice {metrics['mean_dice']:.3f}  identification rate {metrics['id_rate']:.3f}  "
        f"neighbour confusions {metrics['n_neighbour_confusions']}",
        "",
        f"{'vertebra':<9}{'n':>4}{'Dice':>8}",
    ]
    for name, v in metrics["dice_per_class"].items():
        n = len(metrics.get("_dice_values", {}).get(name, []))
        lines.append(f"{name:<9}{n:>4}{('   -' if v is None else f'{v:8.3f}'):>8}")
    return "\n".join(lines)


def plot_dice(metrics: dict[str, Any], path: str | os.PathLike) -> Path:
    """Box plot of Dice per vertebra class (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    vals = metrics["_dice_values"]
    names = list(VERTEBRAE)
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
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p


def run_evaluation(
    checkpoint: str | os.PathLike,
    split_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    device: str = "cpu",
    min_score: float | None = None,
    max_dist: float = 20.0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split; writes metrics.json and dice_per_class.png."""
    from .predict import Predictor

    predictor = Predictor(checkpoint, device=device, min_score=min_score)
    metrics = evaluate_predictor(predictor, split_dir, max_dist, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_dice(metrics, out / "dice_per_class.png")
    public = {k: v for k, v in metrics.items() if not k.startswith("_")}
    public["checkpoint"] = str(checkpoint)
    public["split"] = str(split_dir)
    (out / "metrics.json").write_text(json.dumps(public, indent=1), encoding="utf-8")
    return metrics
