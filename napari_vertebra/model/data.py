"""Torch dataset over a COCO split folder (``annotations.json`` + 16-bit PNG MIPs).

Images are windowed-HU sagittal MIPs (row 0 superior, col 0 anterior). The model sees
``clip(HU / hu_max, 0, 1)`` replicated to 3 channels (torchvision's transform then
normalises). Training augmentations respect anatomy: intensity/contrast jitter and
noise, small rotations and scaling, random partial views (a run of rows; vertebrae cut
below ``aug_min_visible`` of their area are dropped). Never flipped: an up-down flip turns
L5 into T1 and a left-right flip puts anterior on the wrong side.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_vertebra.annotation.coco import read_coco
from napari_vertebra.annotation.polygons import rasterize
from napari_vertebra.annotation.types import AnnotatedImage

from .config import TrainConfig, as_config
from .scale import fit_rows

__all__ = [
    "EpochBatchSampler",
    "VertebraDataset",
    "aspect_group",
    "at_one_mm",
    "collate",
    "epoch_steps",
    "image_to_tensor",
    "split_json",
]


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


#: A mask stored cropped to its bounding box: (row0, col0, bool crop).
_CroppedMask = tuple[int, int, np.ndarray]


class VertebraDataset(torch.utils.data.Dataset):
    """Images and Mask R-CNN targets (boxes, labels 1..17, masks) of one COCO split.

    With a fixed scale (config ``pixels_per_mm``, which is per mm) every image must
    record its pixel spacing (``spacing_mm`` in its meta) and is resampled to 1 mm per
    pixel (:func:`at_one_mm`); one without is refused. Masks are rasterised once, when
    the dataset is made, and kept cropped to their boxes. ``train=True`` turns
    augmentation on; its random numbers depend on (seed, epoch, index) only, so runs and
    resumed runs see the same samples. The epoch comes with the index
    (``dataset[(index, epoch)]``, as :class:`EpochBatchSampler` yields them, so
    persistent loader workers follow it) or from :meth:`set_epoch`.
    """

    def __init__(
        self,
        split_dir: str | os.PathLike,
        config: TrainConfig | dict[str, Any] | None = None,
        train: bool = False,
        max_images: int | None = None,
    ):
        self.cfg = as_config(config)
        self.path = split_json(split_dir)
        images = read_coco(self.path, load_images=True)
        if max_images:
            images = images[: int(max_images)]
        if not images:
            raise ValueError(f"{self.path}: the COCO split has no images")
        if not any(im.annotations for im in images):
            raise ValueError(f"{self.path}: the COCO split has no annotations (no vertebrae)")
        _check_class_set(images, self.cfg, self.path)
        if self.cfg.pixels_per_mm is not None:
            images = [at_one_mm(im, self.path) for im in images]
        self.images: list[AnnotatedImage] = images
        self.train = train
        self.epoch = 0
        self._masks: list[list[_CroppedMask]] = [_rasterize_cropped(im) for im in images]

    def class_counts(self) -> np.ndarray:
        """Annotated vertebrae per class of the config's class set: (K,) ints, column j =
        class id j + 1 (stored in checkpoints for the level decoder's class prior)."""
        from napari_vertebra.core.labels import get_class_set

        k = len(get_class_set(self.cfg.class_set).ids)  # ids 1..K, checked when loaded
        ids = [int(a.class_id) for im in self.images for a in im.annotations]
        return np.bincount(ids, minlength=k + 1)[1:].astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation random numbers of ``epoch`` (for integer indices)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def masks(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(class ids (N,), masks (N, H, W) bool) of image ``index`` (no augmentation)."""
        im = self.images[index]
        shape = (im.height, im.width)
        cls = np.array([a.class_id for a in im.annotations], dtype=np.int64)
        out = np.zeros((len(cls), *shape), bool)
        for k, (r0, c0, crop) in enumerate(self._masks[index]):
            out[k, r0 : r0 + crop.shape[0], c0 : c0 + crop.shape[1]] = crop
        return cls, out

    def _rngs(self, index: int, epoch: int) -> tuple[np.random.Generator, np.random.Generator]:
        seed = [self.cfg.seed, int(epoch), int(index)]
        return np.random.default_rng(seed), np.random.default_rng([*seed, 1])

    def output_shape(self, index: int, epoch: int | None = None) -> tuple[int, int]:
        """(rows, cols) of sample ``index`` in ``epoch`` after augmentation (a partial view
        keeps a run of rows), computed without loading it: for aspect-ratio grouping."""
        im = self.images[index]
        if not self.train:
            return im.height, im.width
        rows = self._rows(index, self._ep(epoch))
        return (rows[1] - rows[0] if rows else im.height), im.width

    def _rows(self, index: int, epoch: int) -> tuple[int, int] | None:
        """(first, end) rows that sample ``index`` keeps in ``epoch``: a random partial
        view, then, at a fixed scale, a window that fits ``max_size`` (None: all)."""
        im = self.images[index]
        rng = self._rngs(index, epoch)[1]
        rows = _partial_rows(im.height, bool(im.annotations), self.cfg, rng)
        if self.cfg.pixels_per_mm is None:
            return rows
        r0, r1 = rows or (0, im.height)
        limit = self.cfg.max_size / self.cfg.pixels_per_mm
        fit = fit_rows(r1 - r0, im.width, limit, rng)
        if fit is None:
            return rows
        return r0 + fit[0], r0 + fit[1]

    def _ep(self, epoch: int | None) -> int:
        return self.epoch if epoch is None else int(epoch)

    def __getitem__(self, index) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        epoch = None
        if isinstance(index, tuple):
            index, epoch = index
        im = self.images[index]
        if im.image is None:
            raise ValueError(f"{self.path}: image {im.file_name} has no pixels")
        image = np.asarray(im.image, np.float32) / self.cfg.hu_max
        cls, masks = self.masks(index)
        if self.train:
            rng = self._rngs(index, self._ep(epoch))[0]
            rows = self._rows(index, self._ep(epoch))
            image, cls, masks = augment(image, cls, masks, self.cfg, rng, rows)
        return _to_sample(image, cls, masks, index)


def at_one_mm(im: AnnotatedImage, where: Any) -> AnnotatedImage:
    """``im`` resampled to 1 mm per pixel (bilinear) with its polygons, from its
    recorded spacing (:func:`~napari_vertebra.model.evaluate.known_spacing`: ValueError
    naming ``where`` when there is none); ``im`` itself when it is 1 mm already."""
    from .evaluate import known_spacing

    spacing = known_spacing({"file_name": im.file_name, "meta": im.meta}, where)
    if np.allclose(spacing, 1.0, rtol=0, atol=1e-6):
        return im
    shape = tuple(
        max(1, round(n * s)) for n, s in zip((im.height, im.width), spacing, strict=True)
    )
    zoom = np.array(shape, float) / (im.height, im.width)
    image = None
    if im.image is not None:
        pixels = np.asarray(im.image, np.float32)
        image = ndi.zoom(pixels, zoom, order=1, grid_mode=True, mode="grid-constant")
    # (row, col) px with pixel centres at integers: the edges scale with the grid
    anns = [
        replace(a, polygons=[(np.asarray(p, float) + 0.5) * zoom - 0.5 for p in a.polygons])
        for a in im.annotations
    ]
    meta = {k: v for k, v in (im.meta or {}).items() if k != "spacing"}
    meta.update(spacing_mm=1.0, resampled_from_mm=list(spacing))
    return replace(im, height=shape[0], width=shape[1], annotations=anns, image=image, meta=meta)


def _check_class_set(images: list[AnnotatedImage], cfg: TrainConfig, where) -> None:
    """ValueError when an annotation's level is not a class of the config's class set."""
    from napari_vertebra.core.labels import class_name, get_class_set

    cs = get_class_set(cfg.class_set)
    allowed = set(cs.ids)
    found: dict[int, str] = {}
    for im in images:
        for a in im.annotations:
            if int(a.class_id) not in allowed and int(a.class_id) not in found:
                found[int(a.class_id)] = im.file_name
    if found:
        names = ", ".join(f"{class_name(c)} (first in {f})" for c, f in sorted(found.items()))
        raise ValueError(
            f"{where}: the annotations hold {names}, which the {cs.name} class set does not "
            f"have ({', '.join(cs.levels)}); train with 'class_set: extended' in the config"
        )


def _rasterize_cropped(im: AnnotatedImage) -> list[_CroppedMask]:
    out: list[_CroppedMask] = []
    shape = (im.height, im.width)
    for a in im.annotations:
        m = rasterize(a.polygons, shape)
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size == 0:
            out.append((0, 0, np.zeros((0, 0), bool)))
            continue
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append((int(r0), int(c0), m[r0:r1, c0:c1].copy()))
    return out


def _partial_rows(
    height: int, has_masks: bool, cfg: TrainConfig, rng: np.random.Generator
) -> tuple[int, int] | None:
    """(first, end) rows of a random partial view, or None (the whole image)."""
    if not has_masks or rng.random() >= cfg.aug_partial_prob:
        return None
    keep_h = max(1, int(height * rng.uniform(cfg.aug_min_rows, 1.0)))
    r0 = int(rng.integers(0, height - keep_h + 1))
    return r0, r0 + keep_h


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
    cfg: TrainConfig,
    rng: np.random.Generator,
    rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anatomy-respecting augmentation of a 0..1 image and its (N, H, W) masks (no flips).

    ``rows`` (first, end) keeps a partial view: vertebrae cut below
    ``aug_min_visible`` of their area are dropped.
    """
    h, w = image.shape
    if rows is not None and len(masks):
        r0, r1 = rows
        area = masks.reshape(len(masks), -1).sum(1)
        image = image[r0:r1]
        masks = masks[:, r0:r1]
        vis = masks.reshape(len(masks), -1).sum(1) / np.maximum(area, 1)
        ok = vis >= cfg.aug_min_visible
        cls, masks = cls[ok], masks[ok]
        h = r1 - r0
    # small rotation and scale about the centre (same output size)
    deg = cfg.aug_rotate_deg
    sc = cfg.aug_scale
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
    g = cfg.aug_contrast
    image = np.clip(image, 0, 1) ** rng.uniform(1 - g, 1 + g)
    image = image * rng.uniform(1 - cfg.aug_intensity, 1 + cfg.aug_intensity)
    if cfg.aug_noise > 0:
        image = image + rng.normal(0, cfg.aug_noise, image.shape) * (image > 0)
    return np.clip(image, 0, 1).astype(np.float32), cls, masks


def epoch_steps(n_images: int, batch_size: int, world: int = 1) -> tuple[int, bool]:
    """(batches per epoch, drop_last) for each of ``world`` ranks: a rank sees its share of
    the images, and a last partial batch is dropped unless it would be the only one."""
    per_rank = math.ceil(n_images / world)
    drop_last = per_rank > batch_size
    return (per_rank // batch_size if drop_last else 1), drop_last


def aspect_group(rows: int, cols: int, factor: int) -> int:
    """Group of an image by its aspect ratio: ``factor`` bins per doubling of rows / cols
    (torchvision's references group by aspect ratio so that a batch pads little)."""
    if factor <= 0:
        return 0
    return int(np.floor(np.log2(max(rows, 1) / max(cols, 1)) * factor))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, epoch)`` for one rank: a shuffled order per (seed, epoch),
    shared by every rank and split between them (as DistributedSampler does), grouped by
    aspect ratio of the augmented samples (as torchvision's GroupedBatchSampler does),
    deterministic, and able to start an epoch after ``skip`` batches (resuming mid-epoch).

    The number of batches is :func:`epoch_steps`; :meth:`set_epoch` chooses the epoch
    (read when the loader starts iterating, so the loader can be built once).
    """

    def __init__(
        self,
        dataset: VertebraDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        group_factor: int = 2,
    ):
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world = int(rank), int(world)
        self.group_factor = int(group_factor)
        self.n_batches, self.drop_last = epoch_steps(len(dataset), self.batch_size, self.world)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Iterate over ``epoch``, leaving out its first ``skip`` batches."""
        self.epoch, self.skip = int(epoch), int(skip)

    def batches(self, epoch: int) -> list[list[int]]:
        """Every batch of this rank in ``epoch`` (image indices)."""
        n = len(self.dataset)
        g = torch.Generator().manual_seed(self.seed * 1000 + int(epoch))
        order = torch.randperm(n, generator=g).tolist()
        per_rank = math.ceil(n / self.world)
        order += order[: per_rank * self.world - n]  # pad as DistributedSampler does
        mine = order[self.rank :: self.world]
        if not self.drop_last:
            return [mine]
        bs = self.batch_size
        buffers: dict[int, list[int]] = {}
        out: list[list[int]] = []
        for i in mine:
            key = aspect_group(*self.dataset.output_shape(i, epoch), self.group_factor)
            buf = buffers.setdefault(key, [])
            buf.append(i)
            if len(buf) == bs:
                out.append(buf.copy())
                buf.clear()
        pos = {i: k for k, i in enumerate(mine)}
        rest = sorted((i for b in buffers.values() for i in b), key=pos.__getitem__)
        out += [rest[k : k + bs] for k in range(0, len(rest) - bs + 1, bs)]
        return out

    def __iter__(self):
        for batch in self.batches(self.epoch)[self.skip :]:
            yield [(i, self.epoch) for i in batch]

    def __len__(self) -> int:
        return max(0, self.n_batches - self.skip)


def collate(batch):
    """Lists of images and targets (torchvision detection models take lists)."""
    return tuple(zip(*batch, strict=True))
