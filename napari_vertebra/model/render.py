"""Prediction outputs: COCO result entries (RLE masks), label PNGs and coloured overlays.

No torch at import (the :class:`~napari_vertebra.model.predict.Prediction` type is only
named), so training and evaluation can use :func:`coco_results` without an import circle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from napari_vertebra.core.labels import class_colours_rgba, class_name

if TYPE_CHECKING:
    from .predict import Prediction

__all__ = ["coco_results", "mask_rle", "overlay_rgb", "prediction_results", "save_png"]


def mask_rle(mask: np.ndarray) -> dict:
    """The compressed COCO RLE of a 2D mask, its counts as text (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_results(
    image_id: int,
    masks: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
) -> list[dict]:
    """COCO results entries (RLE segmentation, bbox x,y,w,h from x0,y0,x1,y1, score).

    ``masks`` (N, H, W) bool, ``boxes`` (N, 4) (x0, y0, x1, y1) px, ``classes`` (N,)
    1..17, ``scores`` (N,) the detections' class probabilities."""
    out = []
    for m, b, c, s in zip(masks, boxes, classes, scores, strict=True):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(c),
                "segmentation": mask_rle(m),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                "score": float(s),
            }
        )
    return out


def prediction_results(pred: Prediction, image_id: int, file_name: str) -> list[dict]:
    """COCO results entries of one image, with its file name, the vertebra names,
    ``vertebra_score`` (1 - p(background), for review; ``score`` is the class probability)
    and the image's ``level_confidence`` (the posterior of the whole naming; see
    :mod:`napari_vertebra.model.levels`) when the levels were decoded."""
    out = coco_results(image_id, pred.masks, pred.boxes, pred.classes, pred.scores)
    vs = np.asarray(pred.vertebra_scores, float)
    conf = pred.level_confidence
    for k, entry in enumerate(out):
        entry.update(file_name=file_name, name=class_name(entry["category_id"]))
        if conf is not None:
            entry["level_confidence"] = round(float(conf), 4)
        if vs.shape == (len(out),) and np.isfinite(vs[k]):
            entry["vertebra_score"] = float(vs[k])
    return out


def overlay_rgb(mip: np.ndarray, pred: Prediction, hu_max: float = 1500.0) -> np.ndarray:
    """(H, W, 3) uint8: the MIP in grey with coloured masks and vertebra names."""
    grey = np.clip(np.asarray(mip, float) / hu_max, 0, 1) * 255
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colours = class_colours_rgba()
    for m, c in zip(pred.masks, pred.classes, strict=True):
        col = np.array(colours[int(c)][:3]) * 255
        rgb[m] = 0.55 * rgb[m] + 0.45 * col
    img = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for (r, c), cls in zip(pred.centroids(), pred.classes, strict=True):
        col = tuple(int(v * 255) for v in colours[int(cls)][:3])
        x = min(img.width - 18, c + 0.6 * (pred.shape[1] / 4))
        draw.text((x, r - 5), class_name(int(cls)), fill=col)
    return np.asarray(img)


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save a uint8 2D or (H, W, 3) array as PNG."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(p)
    return p
