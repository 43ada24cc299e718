"""Fixed physical scale: the model sees MIPs at a set number of pixels per mm.

torchvision's Mask R-CNN resizes every image so that its short side is ``min_size``: a
full 600 x 140 mm MIP is enlarged 1.7x, a partial view of 240 x 140 mm 4.3x, and a
vertebra's pixel height then depends on the field of view instead of on its level. With
``pixels_per_mm`` set in the config, :class:`FixedScaleTransform` scales every MIP (1 mm
per pixel, as the pipeline writes them) by that factor, the same in training,
validation and prediction; augmentation varies it by ``aug_scale`` (a patient-like
+-10 %), not by the field of view.

Images larger than ``max_size`` at that scale are never squeezed by the model's input
path: training crops them to a random window (:func:`fit_rows`), prediction tiles them
(:func:`row_tiles`, merged in :mod:`napari_vertebra.model.predict`). Should a caller feed
a larger image straight to the model anyway, the transform scales it down to fit and
counts it in ``squeezed`` (the only case of a scale other than ``pixels_per_mm``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

__all__ = ["TILE_OVERLAP_MM", "FixedScaleTransform", "fit_rows", "max_extent_mm", "row_tiles"]

#: Overlap (mm) of neighbouring prediction tiles: more than the tallest outline (the
#: sacrum, about 100 mm on a sagittal MIP) so that every vertebra is whole in one tile.
TILE_OVERLAP_MM = 128.0


def max_extent_mm(pixels_per_mm: float, max_size: int) -> float:
    """The longest image side (mm, = px of a 1 mm MIP) the model sees without tiling."""
    return float(max_size) / float(pixels_per_mm)


class FixedScaleTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform that scales by a fixed factor instead of to ``min_size``.

    ``pixels_per_mm`` is the factor for a 1 mm/px MIP; ``max_size`` the longest side the
    model may see (larger inputs are scaled down to fit and counted in ``squeezed``:
    callers tile or crop first). Normalisation, batching and ``postprocess`` (boxes and
    masks back to the input size) are torchvision's.
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
        self.squeezed = 0

    def scale_for(self, height: int, width: int) -> float:
        """The factor applied to an image of ``height`` x ``width`` px."""
        s = self.pixels_per_mm
        longest = max(height, width)
        if longest * s > self.max_size + 1e-6:
            return self.max_size / longest
        return s

    def resize(self, image: torch.Tensor, target: dict | None = None):
        """Scale ``image`` (C, H, W) and its target by :meth:`scale_for`."""
        h, w = image.shape[-2:]
        s = self.scale_for(int(h), int(w))
        if s != self.pixels_per_mm:
            self.squeezed += 1
        if abs(s - 1.0) > 1e-9:
            image = F.interpolate(
                image[None],
                scale_factor=s,
                mode="bilinear",
                recompute_scale_factor=True,
                align_corners=False,
            )[0]
        if target is None:
            return image, target
        if "masks" in target and abs(s - 1.0) > 1e-9:
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
