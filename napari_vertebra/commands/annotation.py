"""Annotation sub-commands: ``convert``, ``labels-to-coco`` and ``dataset build``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from . import add_common_args, add_fractions, at_least, not_negative, probability

PAIRS_HELP = (
    "a CSV with a header row and columns 'ct' and 'labels' (paths relative to the CSV), "
    "optional 'scan' (name; default the CT file name) and 'convention' (per row)"
)
CONVENTION_HELP = (
    "label ids of the 3D label maps: 'totalsegmentator' (v2: 27 L5 .. 43 T1), 'verse' "
    '(8 T1 .. 24 L5) or a JSON file mapping ids to names, e.g. {"20": "L1"} '
    "(default: totalsegmentator)"
)


@contextlib.contextmanager
def _progress(enabled: bool = True):
    """A progress callback: a tqdm bar on stderr, or where stderr is no terminal (a log
    file, a pipe) one line per step; None when disabled."""
    if not enabled:
        yield None
        return
    if not sys.stderr.isatty():
        said = [""]

        def line(fraction: float, message: str) -> None:
            if message != said[0]:
                said[0] = message
                print(f"{100 * fraction:3.0f}% {message}", file=sys.stderr, flush=True)

        yield line
        return
    from tqdm import tqdm

    bar = tqdm(total=1000, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {desc}")

    def cb(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_description_str(message[:60])
        bar.refresh()

    try:
        yield cb
    finally:
        bar.close()


def _params(path: str | None):
    if path is None:
        return None
    from napari_vertebra.core.params import PreprocessParams

    p = Path(path)
    try:
        return PreprocessParams.from_json(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p}: file not found") from None
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from e


def _print_warning(message: str) -> None:
    """Print one ``warning:`` line on stderr."""
    print(f"warning: {message}", file=sys.stderr)


def _run_convert(args: argparse.Namespace) -> int:
    from napari_vertebra.annotation.convert import convert

    size = tuple(args.image_size) if args.image_size else None
    out = convert(args.input, args.output, args.to, args.attribute, size, warn=_print_warning)
    print(f"wrote {out}")
    return 0


def _pairs(args: argparse.Namespace) -> list:
    from napari_vertebra.annotation.dataset import CTLabelPair, read_pairs_csv

    pairs = []
    for ct, lab in getattr(args, "ct_labels", None) or []:
        pairs.append(CTLabelPair(ct, lab, args.convention))
    if args.pairs:
        pairs.extend(read_pairs_csv(args.pairs, args.convention))
    return pairs


def _run_labels_to_coco(args: argparse.Namespace) -> int:
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.annotation.dataset import CTLabelPair
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.core.io import read_ct, read_labels
    from napari_vertebra.core.progress import scaled

    pairs = _pairs(args)
    if args.ct is not None:
        if args.labels is None:
            raise ValueError("give both CT and LABELS (or --pairs CSV)")
        pairs.insert(0, CTLabelPair(args.ct, args.labels, args.convention, args.scan))
    if not pairs:
        raise ValueError("nothing to do: give CT LABELS or --pairs CSV")
    params = _params(args.params)
    images = []
    names: set[str] = set()
    with _progress(not args.quiet) as cb:
        for k, pair in enumerate(pairs):
            sub = scaled(cb, k / len(pairs), (k + 1) / len(pairs))
            ct = read_ct(pair.ct)
            labels = read_labels(pair.labels, like=ct)
            scan = pair.scan_name
            if scan in names:
                raise ValueError(f"scan name {scan!r} is used twice; set 'scan' in the CSV")
            names.add(scan)
            im = labels_to_annotations(
                ct,
                labels,
                pair.convention,
                params,
                min_visible=args.min_visible,
                tolerance_px=args.tolerance,
                progress=sub,
                scan=scan,
                file_name=f"images/{scan}.png",
                class_set=args.class_set,
                labels_name=str(pair.labels),
            )
            for note in im.warnings:
                _print_warning(note)
            dropped = im.meta.get("dropped") or []
            print(
                f"{scan}: {', '.join(a.name for a in im.annotations) or 'no vertebra'}"
                + (f" (dropped as cut: {', '.join(dropped)})" if dropped else "")
            )
            images.append(im)
    out = write_coco(images, args.output)
    print(f"wrote {out}")
    return 0


def _run_dataset_build(args: argparse.Namespace) -> int:
    from napari_vertebra.annotation.dataset import build_dataset

    if args.min_vertebrae > args.max_vertebrae:
        raise ValueError(
            f"--min-vertebrae {args.min_vertebrae} exceeds --max-vertebrae "
            f"{args.max_vertebrae}: a view holds min..max vertebrae (default 4..17)"
        )
    inputs = [*args.inputs, *_pairs(args)]
    if not inputs:
        raise ValueError("no inputs: give COCO files, --ct-labels CT LABELS or --pairs CSV")
    with _progress(not args.quiet) as cb:
        paths = build_dataset(
            inputs,
            args.output,
            views_per_image=args.views_per_image,
            seed=args.seed,
            fractions=tuple(args.fractions),
            min_visible=args.min_visible,
            include_full=not args.no_full,
            progress=cb,
            min_vertebrae=args.min_vertebrae,
            max_vertebrae=args.max_vertebrae,
            tolerance_px=args.tolerance,
            params=_params(args.params),
            class_set=args.class_set,
            augment_3d=args.augment_3d,
        )
    import json

    summary = json.loads((Path(args.output) / "dataset.json").read_text(encoding="utf-8"))
    for note in summary.get("warnings", []):
        _print_warning(note)
    for name, path in paths.items():
        s = summary["splits"][name]
        print(f"{name}: {s['images']} images from {len(s['scans'])} scan(s) -> {path}")
        if not s["scans"]:
            print(f"warning: the {name} split is empty (too few scans)", file=sys.stderr)
    return 0


def _common_3d(p: argparse.ArgumentParser) -> None:
    p.add_argument("--convention", default="totalsegmentator", help=CONVENTION_HELP)
    p.add_argument(
        "--class-set",
        choices=("paper", "extended"),
        default="paper",
        help="levels to outline: paper (T1..L5) or extended (also C7, T13, L6, sacrum as S1; "
        "docs/levels.md)",
    )
    p.add_argument("--pairs", metavar="CSV", help=f"many scans: {PAIRS_HELP}")
    p.add_argument(
        "--min-visible",
        type=probability,
        default=0.5,
        metavar="F",
        help="keep a vertebra cut by the scan edge / crop / view only if at least this "
        "fraction of its expected area is visible (default 0.5)",
    )
    p.add_argument(
        "--tolerance",
        type=not_negative,
        default=1.0,
        metavar="PX",
        help="polygon simplification tolerance in pixels (default 1)",
    )
    p.add_argument("--params", metavar="JSON", help="preprocessing parameters (JSON file)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    """Add the annotation commands to the ``napari-vertebra`` parser."""
    _add_convert(subparsers)
    _add_labels_to_coco(subparsers)
    _add_dataset(subparsers)


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert annotations between COCO and VIA",
        description="Convert vertebra annotations between COCO and VIA (VIA 2 project or "
        "VIA 1 region JSON). The input format is detected from the content; the output "
        "format comes from --to or OUT's name (a name containing 'via' gives a VIA 2 "
        "project, else COCO). Image files beside the input are copied beside the output. "
        "The input is validated (docs/annotations.md): malformed polygons (crossing, zero "
        "area, outside the image, non-finite), duplicate category ids and non-integer ids "
        "are refused and nothing is written; a polygon reaching past the image edge is "
        "clipped to the image with a warning.",
    )
    p.add_argument("input", metavar="IN", help="COCO or VIA JSON file")
    p.add_argument("output", metavar="OUT", help="output JSON file")
    p.add_argument("--to", choices=("coco", "via", "via1"), help="output format")
    p.add_argument(
        "--attribute",
        default="vertebra",
        help="VIA region attribute holding T1..L5 (default: vertebra)",
    )
    p.add_argument(
        "--image-size",
        nargs=2,
        type=at_least(1),
        metavar=("HEIGHT", "WIDTH"),
        help="image size in pixels for VIA images whose file is not beside the JSON",
    )
    p.set_defaults(func=_run_convert)


def _add_labels_to_coco(subparsers) -> None:
    p = subparsers.add_parser(
        "labels-to-coco",
        help="vertebra polygons on the MIP from a 3D label map, as COCO",
        description="Preprocess a CT with its 3D vertebra label map, project each "
        "vertebra onto the sagittal MIP and write DIR/annotations.json (COCO) with the "
        "MIP as DIR/images/<scan>.png. Vertebrae cut by the scan edge or crop are kept only "
        f"if --min-visible of them is visible. For many scans use --pairs: {PAIRS_HELP}; "
        "all go into one COCO file.",
    )
    p.add_argument("ct", metavar="CT", nargs="?", help="CT file or DICOM folder")
    p.add_argument("labels", metavar="LABELS", nargs="?", help="label map on the CT's grid")
    add_common_args(p, "output folder")
    p.add_argument("--scan", help="scan name (default: the CT file name)")
    _common_3d(p)
    p.set_defaults(func=_run_labels_to_coco)


def _add_dataset(subparsers) -> None:
    p = subparsers.add_parser(
        "dataset", help="build a train/val/test dataset", description="Dataset tools."
    )
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    b = dsub.add_parser(
        "build",
        help="full MIPs + partial views, split by scan, one COCO per split",
        description="Build DIR/{train,val,test}/annotations.json with images: each input "
        "image plus random partial views of 4..17 consecutive vertebrae (seeded), split "
        "by scan so that no scan is in two splits. Inputs are COCO files (with their "
        "images), folders in the VerSe layout (rawdata/ + derivatives/) or the "
        "TotalSegmentator one (s*/ct.nii.gz + s*/segmentations/), "
        f"--ct-labels CT LABELS (repeatable) or --pairs CSV ({PAIRS_HELP}). "
        "With fewer scans than splits, splits are filled train, val, test and the rest "
        "stay empty (a warning is printed). COCO inputs are validated like `convert`'s "
        "(docs/annotations.md).",
    )
    b.add_argument(
        "inputs", metavar="INPUT", nargs="*",
        help="COCO JSON files, or VerSe / TotalSegmentator folders",
    )  # fmt: skip
    add_common_args(b, "output folder")
    b.add_argument(
        "--augment-3d",
        type=at_least(0),
        default=0,
        metavar="N",
        help="per CT and label map, N more MIPs of random 3D changes of the scan (position, "
        "field of view, slice thickness, intensities; docs/starter_model.md), default 0",
    )
    b.add_argument(
        "--ct-labels",
        nargs=2,
        action="append",
        metavar=("CT", "LABELS"),
        help="a CT and its 3D label map (repeatable)",
    )
    b.add_argument(
        "--views-per-image",
        type=at_least(0),
        default=10,
        metavar="N",
        help="partial views per image (default 10)",
    )
    b.add_argument("--seed", type=at_least(0), default=0, help="random seed (default 0)")
    add_fractions(b, "split fractions by scan")
    b.add_argument("--no-full", action="store_true", help="partial views only")
    b.add_argument("--min-vertebrae", type=at_least(1), default=4, help="per view (default 4)")
    b.add_argument("--max-vertebrae", type=at_least(1), default=17, help="per view (default 17)")
    _common_3d(b)
    b.set_defaults(func=_run_dataset_build)
