"""COCO results files of any tool, read and checked against a split's ground truth.

:func:`read_results` takes the detections ``napari-vertebra evaluate --predictions``
scores (:mod:`napari_vertebra.model.evaluate`): a JSON list of {image_id, category_id,
segmentation (RLE or polygons), score[, bbox, file_name, level_confidence]}.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

from .render import mask_rle

__all__ = ["read_results"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _result_errors(k: int, r: Any, gt_images: dict[int, dict], cats: dict[int, int]) -> list:
    tag = f"entry {k}"
    if not isinstance(r, dict):
        return [f"{tag}: not an object"]
    errs = [
        f"{tag}: missing {key!r}"
        for key in ("image_id", "category_id", "segmentation", "score")
        if key not in r
    ]
    if errs:
        return errs
    if (
        isinstance(r["score"], bool)
        or not isinstance(r["score"], (int, float))
        or not math.isfinite(r["score"])
    ):
        errs.append(f"{tag}: score {r['score']!r} is not a number")
    elif not 0.0 <= r["score"] <= 1.0:
        errs.append(f"{tag}: score {r['score']!r} is out of range: a score is a probability 0..1")
    conf = r.get("level_confidence")
    if conf is not None and not (
        isinstance(conf, (int, float)) and not isinstance(conf, bool) and 0.0 <= conf <= 1.0
    ):
        errs.append(f"{tag}: level_confidence {conf!r} is not a probability 0..1")
    if not _is_int(r["category_id"]) or r["category_id"] not in cats:
        errs.append(f"{tag}: category_id {r['category_id']!r} is not a vertebra of the split")
    if not _is_int(r["image_id"]) or r["image_id"] not in gt_images:
        errs.append(f"{tag}: image_id {r['image_id']!r} is not an image of the split")
        return errs
    seg = r["segmentation"]
    if not (isinstance(seg, dict) and "counts" in seg and "size" in seg) and not (
        isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg)
    ):
        errs.append(f"{tag}: segmentation is neither RLE ({{size, counts}}) nor polygons")
    elif isinstance(seg, dict):
        im = gt_images[r["image_id"]]
        if not isinstance(seg["counts"], (str, list)):
            errs.append(f"{tag}: RLE counts must be a string or a list of run lengths")
        elif not isinstance(seg["size"], list) or seg["size"] != [im["height"], im["width"]]:
            errs.append(
                f"{tag}: mask size {seg['size']} is not the image's "
                f"[{im['height']}, {im['width']}] (image_id {r['image_id']})"
            )
    return errs


def _match_file_names(results: list, gt: dict, warnings: list[str]) -> None:
    """Where every entry names its image (``file_name``, as ``napari-vertebra predict``
    writes), match images by file name, not by ``image_id`` (in place)."""
    if not results or not all(isinstance(r, dict) and r.get("file_name") for r in results):
        return
    names = {str(PurePosixPath(im["file_name"])): im["id"] for im in gt["images"]}
    moved = 0
    for r in results:
        given = str(r["file_name"]).replace("\\", "/")
        hits = {n for n in names if given == n or given.endswith("/" + n)}
        if len(hits) != 1:
            raise ValueError(
                f"results entry for {given!r} names {'no' if not hits else 'several'} "
                "image(s) of the split; give results for the split's images"
            )
        img_id = names[hits.pop()]
        if r.get("image_id") != img_id:
            moved += 1
        r["image_id"] = img_id
    if moved:
        warnings.append(
            f"{moved} results entries had another image_id than their file_name's image "
            "in the split; matched by file_name"
        )


def read_results(
    path: str | os.PathLike, gt: dict, warnings: list[str] | None = None
) -> list[dict]:
    """COCO results (a JSON list of {image_id, category_id, segmentation, score[, bbox]})
    of any tool, validated against ``gt`` (:func:`~napari_vertebra.model.evaluate.
    split_ground_truth`).

    Segmentations may be RLE (compressed or not) or polygons; they come back as
    compressed RLE, category ids as class ids 1..17 (by the split's category names), and
    bbox from the mask when absent. Entries that carry ``file_name`` (our ``predict``)
    are matched to images by it. Raises ValueError naming the file and the problems.
    """
    from napari_vertebra.annotation._io import read_json

    warnings = [] if warnings is None else warnings
    p = Path(path)
    data = read_json(p)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]  # a COCO file with scored annotations
    if not isinstance(data, list):
        raise ValueError(f"{p}: not COCO results (expected a JSON list of detections)")
    gt_images = {im["id"]: im for im in gt["images"]}
    cats = gt.get("_categories") or {c["id"]: c["id"] for c in gt["categories"]}
    _match_file_names(data, gt, warnings)
    errors = [e for k, r in enumerate(data) for e in _result_errors(k, r, gt_images, cats)]
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValueError(f"{p}: {'; '.join(errors[:5])}{more}")
    return [_entry(r, gt_images[r["image_id"]], cats, p) for r in data]


def _entry(r: dict, im: dict, cats: dict[int, int], path: Path) -> dict:
    """One validated results entry in our form (compressed RLE, class id, bbox)."""
    from pycocotools import mask as mask_utils

    h, w = im["height"], im["width"]
    seg = r["segmentation"]
    try:
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = {"size": list(seg["size"]), "counts": seg["counts"].encode("ascii")}
        m = mask_utils.decode(rle)
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(
            f"{path}: a segmentation of image {r['image_id']} is unreadable ({e})"
        ) from e
    entry = {
        "image_id": int(r["image_id"]),
        "category_id": int(cats[r["category_id"]]),
        "segmentation": mask_rle(m),
        "score": float(r["score"]),
    }
    conf = r.get("level_confidence")
    if isinstance(conf, (int, float)) and not isinstance(conf, bool) and 0 <= conf <= 1:
        entry["level_confidence"] = float(conf)
    if isinstance(r.get("bbox"), list) and len(r["bbox"]) == 4:
        entry["bbox"] = [float(v) for v in r["bbox"]]
    else:
        entry["bbox"] = [float(v) for v in mask_utils.toBbox(entry["segmentation"])]
    return entry
