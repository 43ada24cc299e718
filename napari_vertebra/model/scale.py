"""Fixed physical scale: the model sees MIPs at a set number of pixels per mm.

torchvision's Mask R-CNN resizes every image so that its short side is ``min_size``: a
full 600 x 140 mm MIP is enlarged 1.7x, a partial view of 240 x 140 mm 4.3x, and a
vertebra's pixel height then depends on the field of view instead of on its level. With
``pixels_per_mm`` set in the config, :class:`FixedScaleTransform` scales every MIP to
that many pixels per mm, the same in training, validation and prediction; augmentation
varies it by ``aug_scale`` (a patient-like +-10 %), not by the field of view. The
training data are resampled to 1 mm per pixel (the pipeline's MIPs are 1 mm) from each
image's recorded spacing (:func:`napari_vertebra.model.data.at_one_mm`); prediction
tells the transform the spacing of the MIP it is given (:func:`input_spacing`, 1 mm by
default), and an image whose spacing is not known is refused where it is read.

Images larger than ``max_size`` at that scale are never squeezed by the model's input
path: training crops them to a random window (:func:`fit_rows`), prediction tiles them
(:func:`row_tiles`) and merges the tiles' detections (:func:`merge_tiles`). Should a caller feed
a larger image straight to the model anyway, the transform scales it down to fit and
counts it in ``squeezed`` (the only case of a scale other than ``pixels_per_mm``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from .anatomy import MaskSuppressor, box_suppression
from .detect import iou_tag

__all__ = [
    "TILE_OVERLAP_MM",
    "FixedScaleTransform",
    "fit_rows",
    "input_spacing",
    "merge_tiles",
    "row_tiles",
    "spacing_pair",
]

#: Overlap (mm) of neighbouring prediction tiles: more than the tallest outline (the
#: sacrum, about 100 mm on a sagittal MIP) so that every vertebra is whole in one tile.
TILE_OVERLAP_MM = 128.0


class FixedScaleTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform that scales by a fixed factor instead of to ``min_size``.

    ``pixels_per_mm`` is the factor for a 1 mm/px MIP, :attr:`spacing` the (row, col) mm
    per pixel of the images given (1 mm; :func:`input_spacing` sets it); ``max_size`` the
    longest side the model may see (larger inputs are scaled down to fit and counted in
    ``squeezed``: callers tile or crop first). Normalisation, batching and
    ``postprocess`` (boxes and masks back to the input size) are torchvision's.
    """

    def __init__(
        self,
        pixels_per_mm: float,
        max_size: int,
        image_mean: list[float],
        image_std: list[float],
        size_divisible: int = 32,
    ):
        super().__init__(
            min_size=int(max_size),
            max_size=int(max_size),
            image_mean=image_mean,
            image_std=image_std,
            size_divisible=size_divisible,
        )
        self.pixels_per_mm = float(pixels_per_mm)
        self.spacing = (1.0, 1.0)
        self.squeezed = 0

    def factors(self, height: int, width: int) -> tuple[float, float]:
        """The (row, col) factors applied to an image of ``height`` x ``width`` px."""
        sr, sc = (self.pixels_per_mm * s for s in self.spacing)
        longest = max(height * sr, width * sc)
        if longest > self.max_size + 1e-6:
            return sr * self.max_size / longest, sc * self.max_size / longest
        return sr, sc

    def scale_for(self, height: int, width: int) -> float:
        """The factor applied to the rows of an image of ``height`` x ``width`` px (and
        to its columns when its pixels are square): :meth:`factors`' first."""
        return self.factors(height, width)[0]

    def resize(self, image: torch.Tensor, target: dict | None = None):
        """Scale ``image`` (C, H, W) and its target by :meth:`factors`."""
        h, w = image.shape[-2:]
        s = self.factors(int(h), int(w))
        if s[0] < self.pixels_per_mm * self.spacing[0] - 1e-9:
            self.squeezed += 1
        scaled = max(abs(s[0] - 1.0), abs(s[1] - 1.0)) > 1e-9
        if scaled:
            image = F.interpolate(
                image[None],
                scale_factor=s,
                mode="bilinear",
                recompute_scale_factor=True,
                align_corners=False,
            )[0]
        if target is None:
            return image, target
        if "masks" in target and scaled:
            m = target["masks"]
            target["masks"] = F.interpolate(m[:, None].float(), size=tuple(image.shape[-2:]))[
                :, 0
            ].byte()
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pixels_per_mm={self.pixels_per_mm}, "
            f"max_size={self.max_size}, mean={self.image_mean}, std={self.image_std})"
        )


def spacing_pair(spacing: float | Sequence[float] | None) -> tuple[float, float]:
    """(row mm, col mm) of a spacing given as one number, a pair or None (1 mm)."""
    if spacing is None:
        return 1.0, 1.0
    v = np.asarray(spacing, float).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, 2)
    if v.size != 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"{spacing!r} is not a positive pixel spacing (mm, or [row, col] mm)")
    return float(v[0]), float(v[1])


@contextlib.contextmanager
def input_spacing(model: torch.nn.Module, spacing: float | Sequence[float] | None):
    """Within the block a model at a fixed scale takes its images as ``spacing`` mm per
    pixel (see :func:`spacing_pair`); other models resize every image and ignore it."""
    t = getattr(model, "transform", None)
    if not isinstance(t, FixedScaleTransform):
        yield
        return
    old, t.spacing = t.spacing, spacing_pair(spacing)
    try:
        yield
    finally:
        t.spacing = old


def fit_rows(height: int, width: int, limit_px: float, rng) -> tuple[int, int] | None:
    """A random (first, end) row window of at most ``limit_px`` rows, or None when the
    image fits (training crops a tall MIP this way instead of squeezing it).

    Only rows are cut: a sagittal MIP is tall and narrow; a width over the limit cannot
    be cropped without cutting vertebrae and raises ValueError.
    """
    if width > limit_px + 1e-6:
        raise ValueError(
            f"a MIP {width} px wide exceeds the model's {limit_px:.0f} px at its fixed scale; "
            "raise max_size or lower pixels_per_mm"
        )
    if height <= limit_px + 1e-6:
        return None
    keep = int(limit_px)
    r0 = int(rng.integers(0, height - keep + 1))
    return r0, r0 + keep


def row_tiles(height: int, limit_px: float, overlap_px: float) -> list[tuple[int, int]]:
    """(first, end) row ranges covering ``height`` rows with tiles of at most ``limit_px``
    rows overlapping by ``overlap_px`` (one tile when the image fits)."""
    limit = int(limit_px)
    if height <= limit:
        return [(0, int(height))]
    overlap = int(min(overlap_px, limit // 2))
    step = limit - overlap
    starts = [*range(0, height - limit, step), height - limit]
    return [(s, s + limit) for s in sorted(set(starts))]


def merge_tiles(
    parts: list[tuple[int, int, dict[str, torch.Tensor]]],
    shape: tuple[int, int],
    min_score: float,
    box_iou: float | None,
    cap: int,
) -> dict[str, torch.Tensor]:
    """One :func:`~napari_vertebra.model.detect.raw_detections` dict for a tall MIP from
    those of its row tiles.

    ``parts`` are (first row, end row, detections of that tile). An instance touching a
    tile's cut edge (not the image's) is dropped: the overlap is wider than any vertebra,
    so the neighbouring tile holds it whole. The rest, by decreasing score, go through the
    box and mask duplicate suppression again, at most ``cap``.
    """
    h, w = shape
    boxes = []
    for r0, _, d in parts:
        b = d["boxes"].detach().cpu().clone()
        b[:, 1] += r0
        b[:, 3] += r0
        boxes.append(b)

    def cat(key: str, empty: torch.Tensor) -> torch.Tensor:
        return torch.cat([d[key].cpu() for *_, d in parts]) if parts else empty

    kept, masks = _whole_instances(parts, boxes, h, w)
    all_boxes = torch.cat(boxes) if boxes else torch.zeros((0, 4))
    all_scores = cat("scores", torch.zeros(0))
    order = sorted(range(len(kept)), key=lambda j: -float(all_scores[kept[j]]))
    cand = np.array([kept[j] for j in order], dtype=int)
    sel = box_suppression(all_boxes.numpy()[cand], box_iou) if len(cand) else cand
    sup = MaskSuppressor()
    final, final_masks = [], []
    for j in sel:
        m = masks[order[j]]
        if len(final) < cap and sup.offer((m[0] > 0.5).numpy()):
            final.append(int(cand[j]))
            final_masks.append(m)
    return {
        "boxes": all_boxes,
        "labels": cat("labels", torch.zeros(0, dtype=torch.int64)),
        "scores": all_scores,
        "class_probs": cat("class_probs", torch.zeros((0, cap + 1))),
        "masks": torch.stack(final_masks) if final_masks else torch.zeros((0, 1, h, w)),
        "keep": torch.as_tensor(final, dtype=torch.int64),
        "mask_min_score": torch.tensor(float(min_score), dtype=torch.float64),
        "box_iou": torch.tensor(iou_tag(box_iou), dtype=torch.float64),
        "mask_rois": torch.tensor(sum(int(d["mask_rois"]) for *_, d in parts)),
    }


def _whole_instances(
    parts: list[tuple[int, int, dict[str, torch.Tensor]]],
    boxes: list[torch.Tensor],
    h: int,
    w: int,
) -> tuple[list[int], list[torch.Tensor]]:
    """(indices into the tiles' detections one after the other, (1, h, w) masks) of the
    kept instances of each tile that touch no cut edge of it (``boxes``: the tiles'
    boxes in image rows)."""
    edge = 2.0  # px
    kept, masks, offset = [], [], 0
    for (r0, r1, d), b in zip(parts, boxes, strict=True):
        for k, i in enumerate(d["keep"].cpu().numpy().astype(int)):
            y0, y1 = float(b[i, 1]), float(b[i, 3])
            if (r0 > 0 and y0 <= r0 + edge) or (r1 < h and y1 >= r1 - edge):
                continue
            full = torch.zeros((1, h, w), dtype=d["masks"].dtype)
            full[:, r0:r1] = d["masks"][k].cpu()
            kept.append(offset + int(i))
            masks.append(full)
        offset += len(b)
    return kept, masks
