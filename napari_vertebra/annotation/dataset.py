"""Build a training dataset: full MIPs + partial views, split by scan, one COCO per split.

Output::

    out_dir/train/annotations.json   out_dir/train/images/*.png
    out_dir/val/...                  out_dir/test/...
    out_dir/dataset.json             scans per split, image counts, settings

Splits are made by scan (patient): every image of a scan (its full MIP and all its
partial views) goes to the same split. See :func:`split_scans` for small scan counts.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from napari_vertebra.core.labels import LEVEL_IDS, class_set_for
from napari_vertebra.core.progress import ProgressCallback, report, scaled

from ._atomic import AtomicBatch
from .coco import read_coco, stage_coco, write_coco
from .partial import partial_views
from .project import AnnotationProject, safe_key
from .types import AnnotatedImage, VertebraAnnotation
from .validate import image_size_problem, keep_polygon

__all__ = [
    "SPLITS",
    "CTLabelPair",
    "assign_splits",
    "build_dataset",
    "check_dataset",
    "dataset_class_set",
    "export_project_dataset",
    "fine_tune_dataset",
    "read_pairs_csv",
    "split_scans",
    "val_split_problem",
    "validation_note",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CTLabelPair:
    """A CT and its 3D vertebra label map (paths), the label convention and a scan name
    (default: the CT file name without suffix)."""

    ct: str | os.PathLike
    labels: str | os.PathLike
    convention: str | os.PathLike | Mapping = "totalsegmentator"
    scan: str | None = None

    @property
    def scan_name(self) -> str:
        return self.scan or safe_key(Path(self.ct).name)


def read_pairs_csv(
    path: str | os.PathLike, convention: str | os.PathLike | Mapping = "totalsegmentator"
) -> list[CTLabelPair]:
    """Read a pairs CSV: a header row with columns ``ct`` and ``labels`` (required) and
    ``scan`` and ``convention`` (optional, per row); relative paths are relative to the
    CSV's folder. ``convention`` is the default for rows without one."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found") from None
    if not rows or not {"ct", "labels"} <= set(rows[0]):
        raise ValueError(f"{path}: a pairs CSV needs a header with columns 'ct' and 'labels'")
    out = []
    for i, row in enumerate(rows, start=2):
        ct, lab = (row.get("ct") or "").strip(), (row.get("labels") or "").strip()
        if not ct or not lab:
            raise ValueError(f"{path}, line {i}: empty 'ct' or 'labels'")
        out.append(
            CTLabelPair(
                path.parent / ct,
                path.parent / lab,
                (row.get("convention") or "").strip() or convention,
                (row.get("scan") or "").strip() or None,
            )
        )
    return out


def split_scans(
    scans: Sequence[str], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[str]]:
    """Assign each distinct scan to train / val / test (seeded shuffle).

    Counts follow ``fractions`` (largest remainder), but every split with a positive
    fraction gets at least one scan when there are enough scans. With fewer scans than
    such splits, they are filled in the order train, val, test and the rest stay empty
    (1 scan: train only; 2 scans: train and val).
    """
    fr = np.asarray(fractions, float)
    if fr.shape != (3,) or np.any(fr < 0) or fr.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    fr = fr / fr.sum()
    uniq = sorted(set(scans))
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    n = len(order)
    active = [i for i in range(3) if fr[i] > 0]
    if n <= len(active):
        counts = [0, 0, 0]
        for i in active[:n]:
            counts[i] = 1
    else:
        raw = fr * n
        counts = [1 if i in active else 0 for i in range(3)]
        while sum(counts) < n:
            i = max(active, key=lambda k: (raw[k] - counts[k], -k))
            counts[i] += 1
    out, k = {}, 0
    for name, c in zip(SPLITS, counts, strict=True):
        out[name] = sorted(order[k : k + c])
        k += c
    return out


def assign_splits(
    scans: Sequence[str],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    fixed: Mapping[str, str] | None = None,
) -> dict[str, list[str]]:
    """{split: scans}: the scans of ``fixed`` ({scan: "train" | "val" | "test"}) where
    it puts them, the others by :func:`split_scans` (``fractions``, ``seed``). Raises
    ValueError naming a split name or a scan that is not one of ``scans``."""
    fixed = dict(fixed or {})
    bad = {s: n for s, n in fixed.items() if n not in SPLITS}
    if bad:
        raise ValueError(f"split by scan: {bad} (each scan goes to one of {', '.join(SPLITS)})")
    unknown = sorted(set(fixed) - set(scans))
    if unknown:
        raise ValueError(
            f"split by scan: {', '.join(unknown)} not among the scans "
            f"({', '.join(sorted(set(scans)))})"
        )
    out = split_scans([s for s in scans if s not in fixed], fractions, seed)
    for scan, name in fixed.items():
        out[name] = sorted({*out[name], scan})
    return out


Input = AnnotatedImage | CTLabelPair | str | os.PathLike


def _validated(image: AnnotatedImage) -> AnnotatedImage:
    """``image`` with its polygons checked like a file's (refused: ValueError naming the
    image and annotation; clipped to the image: a note in ``warnings``)."""
    errors: list[str] = []
    notes = list(image.warnings)
    shape = (image.height, image.width)
    size_msg = image_size_problem(*shape)
    if size_msg:
        raise ValueError(f"{image.file_name}: {size_msg}")
    anns = []
    for a in image.annotations:
        polys = []
        for j, p in enumerate(a.polygons):
            kept = keep_polygon(
                p, shape, f"{image.file_name}: {a.name}: polygon {j}", errors, notes
            )
            if kept is not None:
                polys.append(kept)
        anns.append(VertebraAnnotation(a.class_id, polys, a.score))
    if errors:
        raise ValueError("; ".join(errors))
    return replace(image, annotations=anns, warnings=notes)


def _load_inputs(
    inputs: Sequence[Input],
    progress: ProgressCallback | None,
    min_visible: float,
    tolerance_px: float,
    params=None,
    class_set: str | None = None,
    augment_3d: int = 0,
    seed: int = 0,
) -> list[AnnotatedImage]:
    """The annotated images of ``inputs`` (see :func:`build_dataset`), validated."""
    kw = {"tolerance_px": tolerance_px}
    if params is not None:
        kw["params"] = params
    if class_set is not None:
        kw["class_set"] = class_set

    images: list[AnnotatedImage] = []
    for k, item in enumerate(inputs):
        sub = scaled(progress, k / max(1, len(inputs)), (k + 1) / max(1, len(inputs)))
        if isinstance(item, AnnotatedImage):
            if item.image is None:
                raise ValueError(f"{item.file_name}: the dataset builder needs the image pixels")
            images.append(_validated(item))
        elif isinstance(item, CTLabelPair):
            from .augmented import pair_images

            images += pair_images(item, augment_3d, seed + k, sub, min_visible=min_visible, **kw)
        else:
            p = Path(item)
            report(sub, 0.0, f"reading {p.name}")
            for im in read_coco(p, load_images=True):
                im.warnings = [f"{p}: {w}" for w in im.warnings]
                if im.scan is None:
                    im.scan = safe_key(PurePosixPath(im.file_name).stem)
                images.append(im)
    return images


def _expand_folders(inputs: Sequence[Input]) -> list[Input]:
    """``inputs`` with every folder replaced by the CT / label pairs of its VerSe or
    TotalSegmentator layout."""
    from .layouts import find_pairs

    out: list[Input] = []
    for item in inputs:
        is_folder = isinstance(item, (str, os.PathLike)) and Path(item).is_dir()
        out += find_pairs(item) if is_folder else [item]
    return out


def _views_by_scan(
    images: Sequence[AnnotatedImage],
    views_per_image: int,
    seed: int,
    include_full: bool,
    progress: ProgressCallback | None,
    min_vertebrae: int,
    max_vertebrae: int,
    min_visible: float,
    tolerance_px: float,
) -> dict[str, list[AnnotatedImage]]:
    """{scan: its dataset images}: per image its full image (``include_full``) and its
    partial views (seeded), under unique file names in ``images/``."""
    rng = np.random.default_rng(seed)
    per_scan: dict[str, list[AnnotatedImage]] = {}
    used: set[str] = set()

    def unique(name: str) -> str:
        base, k = name, 1
        while name in used:
            name = f"{base}_{k}"
            k += 1
        used.add(name)
        return name

    for k, im in enumerate(images):
        report(progress, 0.6 + 0.3 * k / len(images), f"partial views of {im.file_name}")
        scan = im.scan or safe_key(PurePosixPath(im.file_name).stem)
        stem = PurePosixPath(im.file_name).stem
        base = unique(safe_key(scan if stem == scan else f"{scan}_{stem}"))
        out = per_scan.setdefault(scan, [])
        if include_full:
            meta = dict(im.meta or {}, view="full", source=im.file_name)
            name = f"images/{base}_full.png"
            out.append(
                AnnotatedImage(name, im.height, im.width, im.annotations, im.image, scan, meta)
            )
        views = partial_views(
            im, views_per_image, rng, min_vertebrae, max_vertebrae, min_visible,
            tolerance_px=tolerance_px,
        )  # fmt: skip
        for j, v in enumerate(views):
            r0, r1 = v.meta["rows"]
            v.file_name = f"images/{base}_v{j:03d}_rows{r0}-{r1}.png"
            v.scan = scan
            out.append(v)
    return per_scan


def _write_splits(
    out_dir: Path,
    per_scan: dict[str, list[AnnotatedImage]],
    split: dict[str, list[str]],
    summary: dict,
) -> dict[str, Path]:
    """Write one COCO per split and ``dataset.json`` (``summary`` with the splits and the
    class set added) together, or nothing; {split: path of its annotations.json}."""
    # one category list for every split: the smallest class set holding all levels used
    cset = class_set_for(
        a.class_id for ims in per_scan.values() for im in ims for a in im.annotations
    )
    summary["class_set"] = cset.name
    paths = {}
    with AtomicBatch() as batch:  # all splits are written together, or none
        for name in SPLITS:
            split_images = [im for s in split[name] for im in per_scan[s]]
            paths[name] = stage_coco(batch, split_images, out_dir / name, class_set=cset)
            summary["splits"][name] = {
                "scans": split[name],
                "images": len(split_images),
                "annotations": sum(len(i.annotations) for i in split_images),
            }
        batch.add(out_dir / "dataset.json", json.dumps(summary, indent=1).encode("utf-8"))
    return paths


def build_dataset(
    inputs: Sequence[Input],
    out_dir: str | os.PathLike,
    views_per_image: int = 10,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    min_visible: float = 0.5,
    include_full: bool = True,
    progress: ProgressCallback | None = None,
    min_vertebrae: int = 4,
    max_vertebrae: int = 17,
    tolerance_px: float = 1.0,
    params=None,
    class_set: str | None = None,
    split_by_scan: Mapping[str, str] | None = None,
    augment_3d: int = 0,
) -> dict[str, Path]:
    """Build ``out_dir/{train,val,test}/annotations.json`` (+ ``images/*.png``).

    ``class_set`` (default the paper's) chooses the levels that 3D label maps give
    (``"extended"``: also C7, T13, L6 and the sacrum).

    ``inputs``: COCO files (with their images), :class:`CTLabelPair` (turned into
    annotations with :func:`~napari_vertebra.annotation.from3d.labels_to_annotations`,
    ``params`` = PreprocessParams), folders in the VerSe or TotalSegmentator layout
    (their CT / label pairs, :func:`~napari_vertebra.annotation.layouts.find_pairs`) or
    :class:`AnnotatedImage` with pixels. ``augment_3d``: per CT / label pair, that many
    MIPs of random 3D changes of the scan besides its own
    (:func:`~napari_vertebra.annotation.augmented.augmented_images`). Per image,
    ``views_per_image`` partial views (:func:`~napari_vertebra.annotation.partial.
    partial_views`, seeded) plus the full image when ``include_full``. Split by scan
    (:func:`split_scans`; ``split_by_scan`` {scan: split} puts those scans where it says,
    :func:`assign_splits`); each COCO image records its ``scan``. Every split file is
    written (possibly with no images); ``out_dir/dataset.json`` summarises (with
    ``warnings``: what validating the inputs repaired, see ``docs/annotations.md``;
    refused inputs raise ValueError and nothing is written). Files of the
    same names are replaced; other files already in ``out_dir`` are left alone. Returns
    {split: path of its annotations.json}.
    """
    images = _load_inputs(
        _expand_folders(inputs), scaled(progress, 0.0, 0.6), min_visible, tolerance_px,
        params, class_set, augment_3d, seed,
    )  # fmt: skip
    if not images:
        raise ValueError("no input images for the dataset")
    per_scan = _views_by_scan(
        images, views_per_image, seed, include_full, progress,
        min_vertebrae, max_vertebrae, min_visible, tolerance_px,
    )  # fmt: skip
    split = assign_splits(list(per_scan), fractions, seed, split_by_scan)
    report(progress, 0.9, "writing splits")
    summary: dict = {
        "seed": seed,
        "fractions": list(fractions),
        "min_visible": min_visible,
        "views_per_image": views_per_image,
        "augment_3d": augment_3d,
        "include_full": include_full,
        "warnings": [w for im in images for w in im.warnings],
        "splits": {},
    }
    paths = _write_splits(Path(out_dir), per_scan, split, summary)
    report(progress, 1.0, "done")
    return paths


# ------------------------------------------------------------------ training data checks
def _project_images_and_fresh_folder(project, out_dir) -> tuple[list, Path]:
    """(the project's annotated images with pixels, ``out_dir`` emptied); ValueError when
    the project has no annotated image."""
    images = [im for im in project.images(load_pixels=True) if im.annotations]
    if not images:
        raise ValueError(f"{project.folder}: the project has no annotated image to train on")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    return images, out


def export_project_dataset(
    project: AnnotationProject,
    out_dir: str | os.PathLike,
    progress: ProgressCallback | None = None,
) -> list[str]:
    """Write an annotation project as COCO splits ``out_dir/{train,val,test}``.

    Uses :func:`build_dataset` (partial views, split by scan). A project of a single
    scan gets no validation images: then the training split is copied as ``val`` (its
    mAP is then measured on training images) and a note says so. Returns such notes.
    """
    images, out = _project_images_and_fresh_folder(project, out_dir)
    build_dataset(images, out, progress=progress)
    notes = []
    if val_split_problem(out):
        shutil.rmtree(out / "val", ignore_errors=True)
        shutil.copytree(out / "train", out / "val")
        scans = {im.scan for im in images}
        notes.append(
            f"the project holds {len(scans)} scan(s), too few for a validation split: "
            "validating on the training images (optimistic mAP)"
        )
    return notes


def fine_tune_dataset(
    project: AnnotationProject,
    out_dir: str | os.PathLike,
    replay: str | os.PathLike | None = None,
    class_set: str | None = None,
    progress: ProgressCallback | None = None,
) -> list[str]:
    """Write the training data of a fine-tuning run: the project's annotated MIPs and
    their partial views, plus the COCO images of ``replay`` (the starter model's real
    data, so that fine-tuning on a few scans keeps what the model knew; their levels
    outside ``class_set`` left out), all in ``out_dir/train``; ``val`` is the project's
    images. Returns notes for the user."""
    from napari_vertebra.core.labels import get_class_set

    images, out = _project_images_and_fresh_folder(project, out_dir)
    mixed: list[Input] = list(images)
    notes = [f"fine-tuning on {len(images)} annotated MIP(s) of the project"]
    if replay is not None:
        keep = set(get_class_set(class_set).ids)
        for im in read_coco(Path(replay) / "annotations.json", load_images=True):
            im.annotations = [a for a in im.annotations if a.class_id in keep]
            mixed.append(im)
        notes.append(f"with {len(mixed) - len(images)} MIPs of the starter's real scans")
    build_dataset(mixed, out, fractions=(1, 0, 0), progress=progress)
    cset = json.loads((out / "dataset.json").read_text(encoding="utf-8"))["class_set"]
    for name in ("val", "test"):
        shutil.rmtree(out / name, ignore_errors=True)
    write_coco(images, out / "val", class_set=cset)  # validated on the project's MIPs
    return notes


def check_dataset(data_dir: str | os.PathLike | None) -> Path:
    """The resolved COCO split folder if it has a train split; ValueError in plain words."""
    if not data_dir or str(data_dir) in ("", "."):
        raise ValueError("choose a dataset folder (with train/ and val/ splits)")
    data = Path(data_dir).expanduser().resolve()
    if not data.is_dir():
        raise ValueError(f"{data}: no such dataset folder")
    if not (data / "train" / "annotations.json").is_file():
        raise ValueError(
            f"{data} has no train split (no train/annotations.json): choose the folder "
            "that 'Export dataset' wrote, or train on the open annotation project"
        )
    return data


def dataset_class_set(data_dir: str | os.PathLike | None) -> str | None:
    """The class set a COCO dataset folder's labels need, or None when it cannot tell.

    ``dataset.json``'s ``class_set`` (written by ``dataset build`` / Export dataset: the
    smallest set holding every level used), else the levels the train split's
    annotations use: ``"extended"`` when they hold C7, T13, L6 or S1, else ``"paper"``.
    """
    if not data_dir or str(data_dir) in ("", "."):
        return None
    data = Path(data_dir).expanduser()
    try:
        meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
        name = meta.get("class_set") if isinstance(meta, dict) else None
        if isinstance(name, str) and name:
            return name
    except (OSError, ValueError):
        pass
    ann = data / "train" / "annotations.json"
    try:
        st = ann.stat()
        used = _used_levels(str(ann), st.st_mtime_ns, st.st_size)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # unreadable: the trainer says what is wrong with it
    ids = [LEVEL_IDS[n] for n in used if n in LEVEL_IDS]  # every level is in a set
    return class_set_for(ids).name if ids else None


@functools.lru_cache(maxsize=8)
def _used_levels(path: str, mtime_ns: int, size: int) -> frozenset[str | None]:
    """The category names a COCO file's annotations use; read once per version of the
    file (the Train form asks on every change of the folder and again at Start)."""
    coco = json.loads(Path(path).read_text(encoding="utf-8"))
    names = {int(c["id"]): str(c["name"]) for c in coco.get("categories") or []}
    return frozenset(names.get(int(a["category_id"])) for a in coco.get("annotations") or [])


def val_split_problem(data_dir: str | os.PathLike) -> str:
    """What is wrong with ``data_dir/val`` for validation: ``"is missing"``, ``"has no
    images"``, or "" when it holds images or cannot be read (its reader then says why)."""
    ann = Path(data_dir) / "val" / "annotations.json"
    if not ann.is_file():
        return "is missing"
    try:
        n = len(json.loads(ann.read_text(encoding="utf-8"))["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return "" if n else "has no images"


def validation_note(data_dir: str | os.PathLike) -> str:
    """A warning when ``data_dir/val`` is missing or holds no image (the trainer then
    validates on the train split, as it says in its output), else ''."""
    state = val_split_problem(data_dir)
    if not state:
        return ""
    return (
        f"the val split of {Path(data_dir).name} {state}: validating on the train split "
        "(its scores say little about new scans; export more scans for a val split)"
    )
