"""Torch dataset over a COCO split folder (``annotations.json`` + 16-bit PNG MIPs).

Images are windowed-HU sagittal MIPs (row 0 superior, col 0 anterior). The model sees
``clip(HU / hu_max, 0, 1)`` replicated to 3 channels (torchvision's transform then
normalises). Training augmentations respect anatomy: intensity/contrast jitter and
noise, small rotations and scaling, random partial views (a run of rows; vertebrae cut
below ``aug_min_visible`` of their area are dropped). Never flipped: an up-down flip turns
L5 into T1 and a left-right flip puts anterior on the wrong side.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_vertebra.annotation.coco import read_coco
from napari_vertebra.annotation.polygons import rasterize
from napari_vertebra.annotation.types import AnnotatedImage

from .config import DEFAULTS

__all__ = ["VertebraDataset", "coco_ground_truth", "collate", "image_to_tensor", "split_json"]


def split_json(split_dir: str | os.PathLike) -> Path:
    """``split_dir/annotations.json`` (or the file itself); ValueError when missing."""
    p = Path(split_dir)
    if p.is_dir():
        p = p / "annotations.json"
    if not p.is_file():
        raise ValueError(f"{p}: COCO annotations not found (expected a split folder)")
    return p


def image_to_tensor(image: np.ndarray, hu_max: float = 1500.0) -> torch.Tensor:
    """(3, H, W) float tensor in 0..1 from a 2D windowed-HU MIP (rows, cols)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(
            f"expected a 2D grayscale MIP (rows, cols); got an array of shape {a.shape}"
        )
    x = torch.from_numpy(np.clip(a.astype(np.float32) / float(hu_max), 0, 1))
    return x.unsqueeze(0).expand(3, -1, -1).contiguous()


class VertebraDataset(torch.utils.data.Dataset):
    """Images and Mask R-CNN targets (boxes, labels 1..17, masks) of one COCO split.

    ``train=True`` turns augmentation on; its random numbers depend on (seed, epoch,
    index) only, so runs and resumed runs see the same samples (call :meth:`set_epoch`).
    """

    def __init__(
        self,
        split_dir: str | os.PathLike,
        config: dict[str, Any] | None = None,
        train: bool = False,
        max_images: int | None = None,
    ):
        self.cfg = dict(DEFAULTS)
        self.cfg.update(config or {})
        self.path = split_json(split_dir)
        images = read_coco(self.path, load_images=True)
        if max_images:
            images = images[: int(max_images)]
        if not images:
            raise ValueError(f"{self.path}: the COCO split has no images")
        if not any(im.annotations for im in images):
            raise ValueError(f"{self.path}: the COCO split has no annotations (no vertebrae)")
        self.images: list[AnnotatedImage] = images
        self.train = train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation random numbers of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def masks(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(class ids (N,), masks (N, H, W) bool) of image ``index`` (no augmentation)."""
        im = self.images[index]
        shape = (im.height, im.width)
        cls = np.array([a.class_id for a in im.annotations], dtype=np.int64)
        if cls.size == 0:
            return cls, np.zeros((0, *shape), bool)
        return cls, np.stack([rasterize(a.polygons, shape) for a in im.annotations])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        im = self.images[index]
        if im.image is None:
            raise ValueError(f"{self.path}: image {im.file_name} has no pixels")
        image = np.asarray(im.image, np.float32) / float(self.cfg["hu_max"])
        cls, masks = self.masks(index)
        if self.train:
            rng = np.random.default_rng([int(self.cfg["seed"]), self.epoch, index])
            image, cls, masks = augment(image, cls, masks, self.cfg, rng)
        return _to_sample(image, cls, masks, index)


def _to_sample(image, cls, masks, index):
    keep = masks.reshape(len(masks), -1).any(1) if len(masks) else np.zeros(0, bool)
    cls, masks = cls[keep], masks[keep]
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        rows = np.flatnonzero(m.any(1))
        cols = np.flatnonzero(m.any(0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    x = torch.from_numpy(np.clip(image, 0, 1).astype(np.float32))
    target = {
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(cls.astype(np.int64)),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
        "image_id": int(index),
    }
    return x.unsqueeze(0).expand(3, -1, -1).contiguous(), target


def augment(
    image: np.ndarray,
    cls: np.ndarray,
    masks: np.ndarray,
    cfg: dict[str, Any],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anatomy-respecting augmentation of a 0..1 image and its (N, H, W) masks (no flips)."""
    h, w = image.shape
    # partial view: keep a run of rows, drop vertebrae cut below the visibility threshold
    if rng.random() < float(cfg["aug_partial_prob"]) and len(masks):
        keep_h = int(h * rng.uniform(float(cfg["aug_min_rows"]), 1.0))
        r0 = int(rng.integers(0, h - keep_h + 1))
        area = masks.reshape(len(masks), -1).sum(1)
        image = image[r0 : r0 + keep_h]
        masks = masks[:, r0 : r0 + keep_h]
        vis = masks.reshape(len(masks), -1).sum(1) / np.maximum(area, 1)
        ok = vis >= float(cfg["aug_min_visible"])
        cls, masks = cls[ok], masks[ok]
        h = keep_h
    # small rotation and scale about the centre (same output size)
    deg = float(cfg["aug_rotate_deg"])
    sc = float(cfg["aug_scale"])
    if deg > 0 or sc > 0:
        a = np.deg2rad(rng.uniform(-deg, deg))
        s = rng.uniform(1 - sc, 1 + sc)
        m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
        c = np.array([(h - 1) / 2, (w - 1) / 2])
        off = c - m @ c
        image = ndi.affine_transform(image, m, off, order=1, mode="constant", cval=0.0)
        if len(masks):
            masks = np.stack(
                [ndi.affine_transform(mk.astype(np.uint8), m, off, order=0) > 0 for mk in masks]
            )
    # intensity: contrast (gamma), brightness, noise
    g = float(cfg["aug_contrast"])
    image = np.clip(image, 0, 1) ** rng.uniform(1 - g, 1 + g)
    image = image * rng.uniform(1 - float(cfg["aug_intensity"]), 1 + float(cfg["aug_intensity"]))
    if float(cfg["aug_noise"]) > 0:
        image = image + rng.normal(0, float(cfg["aug_noise"]), image.shape) * (image > 0)
    return np.clip(image, 0, 1).astype(np.float32), cls, masks


def collate(batch):
    """Lists of images and targets (torchvision detection models take lists)."""
    return tuple(zip(*batch, strict=True))


def coco_ground_truth(dataset: VertebraDataset) -> dict:
    """An in-memory COCO ground-truth dict (RLE masks) for pycocotools' COCOeval.

    Image ids are dataset indices + 1. Used for evaluation only; the files on disk are
    written by :func:`napari_vertebra.annotation.coco.write_coco`.
    """
    from pycocotools import mask as mask_utils

    from napari_vertebra.core.labels import VERTEBRAE

    images, anns = [], []
    for i, im in enumerate(dataset.images):
        images.append({"id": i + 1, "height": im.height, "width": im.width})
        cls, masks = dataset.masks(i)
        for c, m in zip(cls, masks, strict=True):
            if not m.any():
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(c),
                    "segmentation": rle,
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(m.sum()),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(VERTEBRAE)]
    return {"images": images, "annotations": anns, "categories": cats}
