"""Annotated MIPs of augmented scans: many realistic training images from one labelled CT.

:func:`augmented_images` changes a CT and its 3D label map together in 3D
(:func:`napari_vertebra.core.augment.augment_scan`: position, field of view, slice
thickness, intensities), runs each change through the pipeline and projects its labels
(:func:`~napari_vertebra.annotation.from3d.labels_to_annotations`), so every image is a
MIP as the pipeline makes it from a scan, with the polygons of that very MIP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from napari_vertebra.core.augment import ScanAugmentation, augment_scan
from napari_vertebra.core.labels import load_convention
from napari_vertebra.core.progress import ProgressCallback, report, scaled
from napari_vertebra.core.volume import Volume

from .from3d import labels_to_annotations
from .types import AnnotatedImage

__all__ = ["augmented_images", "pair_images"]


def augmented_images(
    ct: Volume,
    labels: Volume,
    n: int,
    convention: str | os.PathLike | Mapping = "totalsegmentator",
    seed: int | np.random.Generator = 0,
    params: ScanAugmentation | None = None,
    scan: str = "scan",
    min_vertebrae: int = 1,
    progress: ProgressCallback | None = None,
    **kw,
) -> list[AnnotatedImage]:
    """``n`` annotated MIPs of random 3D changes of ``ct`` and ``labels`` (one grid).

    Each image's ``scan`` is ``scan`` (so a dataset split by scan keeps them together),
    its file name ``<scan>_aug<k>.png`` and its ``meta`` holds ``augmentation`` (what was
    drawn). A change whose MIP shows fewer than ``min_vertebrae`` vertebrae is drawn
    again (at most 3 times per image). The seed makes the images reproducible. ``kw``
    goes to :func:`~napari_vertebra.annotation.from3d.labels_to_annotations`
    (``class_set``, ``min_visible``, ``params``, ``tolerance_px``); the label map is
    not checked against the convention here (:func:`pair_images` checks the scan's own).
    """
    if n < 0:
        raise ValueError(f"the number of augmented images must not be negative, got {n}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    params = ScanAugmentation() if params is None else params
    table = load_convention(convention, kw.get("class_set"))
    ids = tuple(sorted(table))
    totalseg = isinstance(convention, str) and convention.lower() == "totalsegmentator"
    out: list[AnnotatedImage] = []
    for k in range(n):
        report(progress, k / max(n, 1), f"augmented scan {k + 1}/{n} of {scan}")
        for _ in range(3):
            a, b, drawn = augment_scan(ct, labels, rng, params, ids, totalseg)
            im = labels_to_annotations(
                a,
                b,
                convention,
                scan=scan,
                file_name=f"{scan}_aug{k}.png",
                check_fit=False,
                **kw,
            )
            if len(im.annotations) >= min_vertebrae:
                break
        im.meta["augmentation"] = drawn
        out.append(im)
    report(progress, 1.0, f"{n} augmented scans of {scan}")
    return out


def pair_images(
    pair,
    n_augmented: int = 0,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    **kw,
) -> list[AnnotatedImage]:
    """The MIP of a :class:`~napari_vertebra.annotation.dataset.CTLabelPair` with its
    polygons, then ``n_augmented`` MIPs of random 3D changes of it. ``kw`` goes to
    :func:`~napari_vertebra.annotation.from3d.labels_to_annotations` (``class_set``,
    ``min_visible``, ``params``, ``tolerance_px``); the labels may be a file or a
    TotalSegmentator ``segmentations`` folder."""
    from napari_vertebra.core.io import read_ct

    from .layouts import read_label_source

    report(progress, 0.0, f"reading {Path(pair.ct).name}")
    ct = read_ct(pair.ct)
    labels = read_label_source(pair.labels, like=ct)
    share = 1.0 / (1 + n_augmented)
    first = labels_to_annotations(
        ct, labels, pair.convention, progress=scaled(progress, 0.0, share),
        scan=pair.scan_name, labels_name=str(pair.labels), **kw,
    )  # fmt: skip
    if not n_augmented:
        return [first]
    more = augmented_images(
        ct, labels, n_augmented, pair.convention, seed=seed, scan=pair.scan_name,
        progress=scaled(progress, share, 1.0), **kw,
    )  # fmt: skip
    return [first, *more]
