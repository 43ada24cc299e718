"""Vertebrae on real CT, one scan left out (issue 18).

    .venv/bin/python benchmarks/real_scans.py [--arms synth,real,real3d,real3d+synth]
        [--folds all] [--aug 40] [--views 6] [--steps 2000] [--config starter]
        [--out runs/real_scans] [--reuse] [--device cpu]

For each real scan of ``data/ct/scans.csv`` (four labelled scans: a chest CT C7..L3, an
abdomen CT T12..sacrum, a lumbar crop L2..L4 and a 40 mm DICOM series T11..T12), a model
is trained on the other three and tested on the one left out: on its full MIP and on
partial views of 4..17 vertebrae cut from it (scans with fewer than 4 vertebrae give
their full MIP only). Nothing of the scan left out is seen in training or used to
choose anything. Printed per scan and pooled over the test images:

- detection recall: a true vertebra with a predicted one within 20 mm, whatever its label;
- the VerSe identification rate (``evaluate``'s: the prediction with the vertebra's
  label within 20 mm, and that vertebra the closest true one), mean over images;
- localisation (mm) of the identified vertebrae;
- Dice per vertebra: with the prediction of its label (``evaluate``'s mean Dice, a
  misnamed vertebra counts 0) and with the best-overlapping prediction whatever its
  label (how well the outlines fit);
- the level confidence's calibration: the share of images called certain (>= 0.9) and
  their identification rate;
- the training time of each fold.

Arms (training data), each trained for the same number of optimizer steps:
``synth`` synthetic drawings only (napari_vertebra.synth, 1 mm per pixel: the baseline
row; one model, tested on every scan); ``real`` the training scans' own MIPs and their
partial views; ``real3d`` plus ``--aug`` 3D augmentations of each training scan
(napari_vertebra.core.augment: position, field of view, slices, intensities) with their
partial views; ``real3d+synth`` plus synthetic columns. Prediction overlays are saved
as ``OUT/<arm>/<scan>/overlays/*.png``. ``--reuse`` evaluates the trained runs again.
The augmented scans are cached in ``OUT/cache`` under a tag of the code that made them.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCANS_CSV = ROOT / "data" / "ct" / "scans.csv"
ARMS = ("synth", "real", "real3d", "real3d+synth")
MAX_DIST_MM = 20.0
DATA_CODE = ("core/augment.py", "annotation/augmented.py", "annotation/from3d.py", "synth.py")


def code_tag() -> str:
    """8 hex digits of the code that makes the training images: a cache made by other
    code is not reused."""
    import hashlib

    h = hashlib.sha1()
    for name in DATA_CODE:
        h.update((ROOT / "napari_vertebra" / name).read_bytes())
    return h.hexdigest()[:8]


# ------------------------------------------------------------------------------- data
def load_scans(path: Path) -> dict[str, tuple]:
    """{scan: (CT Volume, label Volume, convention)} of a pairs CSV."""
    from napari_vertebra.annotation.dataset import read_pairs_csv
    from napari_vertebra.core import read_ct, read_labels

    out = {}
    for pair in read_pairs_csv(path):
        ct = read_ct(pair.ct)
        out[pair.scan_name] = (ct, read_labels(pair.labels, like=ct), pair.convention)
    return out


def test_images(name: str, scan: tuple, views: int, seed: int) -> list:
    """The scan's full MIP and ``views`` partial views of 4..17 vertebrae (when it has 4)."""
    from napari_vertebra.annotation.from3d import labels_to_annotations
    from napari_vertebra.annotation.partial import partial_views

    ct, labels, conv = scan
    full = labels_to_annotations(ct, labels, conv, class_set="extended", scan=name)
    full.file_name = f"{name}_full.png"
    full.meta["view"] = "full"
    out = [full]
    if len(full.annotations) >= 4:
        out += partial_views(full, views, np.random.default_rng(seed), 4, 17)
    return out


def augmented_coco(out: Path, name: str, scan: tuple, n: int, seed: int) -> Path:
    """COCO file of the scan's own MIP and ``n`` 3D augmentations (cached in ``out``)."""
    from napari_vertebra.annotation.augmented import augmented_images
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.annotation.from3d import labels_to_annotations

    folder = out / "cache" / f"{name}_aug{n}_seed{seed}_{code_tag()}"
    if (folder / "annotations.json").is_file():
        return folder / "annotations.json"
    ct, labels, conv = scan
    t = time.time()
    images = [labels_to_annotations(ct, labels, conv, class_set="extended", scan=name)]
    images += augmented_images(ct, labels, n, conv, seed=seed, scan=name, class_set="extended")
    write_coco(images, folder, class_set="extended")
    print(f"  {name}: {n} augmented scans in {time.time() - t:.0f} s", flush=True)
    return folder / "annotations.json"


def synth_coco(out: Path, columns: int, views: int, seed: int) -> Path:
    """COCO file of synthetic full columns and their partial views at 1 mm per pixel."""
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.synth import synth_column_dataset

    folder = out / "cache" / f"synth{columns}_v{views}_seed{seed}_{code_tag()}"
    if not (folder / "annotations.json").is_file():
        write_coco(synth_column_dataset(columns, views, "extended", seed=seed), folder)
    return folder / "annotations.json"


def fold_data(out: Path, arm: str, train: list[str], scans: dict, args) -> Path:
    """The training split of one fold and arm (``DATA/train``; val = train)."""
    from napari_vertebra.annotation.dataset import build_dataset

    data = out / arm / "data" / ("all" if arm == "synth" else "+".join(sorted(train)))
    if (data / "train" / "annotations.json").is_file():
        return data
    n = args.aug if arm.startswith("real3d") else 0
    inputs = [augmented_coco(out, s, scans[s], n, args.seed) for s in train]
    if arm == "synth":
        inputs = []
    if "synth" in arm:
        inputs.append(synth_coco(out, args.synth_columns, args.views, args.seed))
    build_dataset(inputs, data, views_per_image=args.views, seed=args.seed, fractions=(1, 0, 0))
    return data


# --------------------------------------------------------------------------- training
def train(cfg_name: str, data: Path, run: Path, steps: int, args) -> float:
    """Train ``cfg_name`` on ``data`` for about ``steps`` optimizer steps; seconds taken."""
    from napari_vertebra.model.config import load_config

    if (run / "last.pt").is_file():
        return float(json.loads((run / "time.json").read_text())["seconds"])
    cfg = load_config(cfg_name)
    n = len(json.loads((data / "train" / "annotations.json").read_text())["images"])
    per_epoch = max(1, n // cfg.batch_size)
    epochs = max(1, round(steps / per_epoch))
    over = [f"epochs={epochs}", f"seed={args.seed}", "val_max_images=4"]
    cmd = [sys.executable, "-m", "napari_vertebra.cli", "train", "--config", cfg_name]
    cmd += ["--data", str(data), "-o", str(run), "--device", args.device, *over]
    t = time.time()
    print(f"  training {run.parent.name}/{run.name}: {n} images, {epochs} epochs", flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - t
    (run / "time.json").write_text(json.dumps({"seconds": seconds, "epochs": epochs}))
    return seconds


# ------------------------------------------------------------------------- evaluation
def evaluate(ckpt: Path, images: list, out: Path, min_score: float | None) -> dict:
    """Metrics of a checkpoint on annotated test images; overlays in ``out/overlays``."""
    from napari_vertebra.annotation.coco import write_coco
    from napari_vertebra.model.evaluate import evaluate_predictor
    from napari_vertebra.model.predict import Predictor

    split = out / "test"
    write_coco(images, split, class_set="extended")
    predictor = Predictor(ckpt, device="cpu", min_score=min_score)
    m = evaluate_predictor(predictor, split)
    found, seg_dice, total = 0, [], 0
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    for im in images:
        pred = predictor.predict(im.image)
        f, d = _detection(im, pred)
        found, total, seg_dice = found + f, total + len(d), seg_dice + d
        _overlay(im, pred, out / "overlays" / Path(im.file_name).name)
    m["detection_recall"] = found / total if total else None
    m["segmentation_dice"] = float(np.mean(seg_dice)) if seg_dice else None
    m["n_vertebrae"] = total
    keep = {k: v for k, v in m.items() if not k.startswith("_") and not isinstance(v, list)}
    (out / "metrics.json").write_text(json.dumps(keep, indent=1, default=str))
    return m


def _detection(im, pred) -> tuple[int, list[float]]:
    """(true vertebrae with a prediction within 20 mm, best Dice of each with any one)."""
    from napari_vertebra.annotation.polygons import dice, rasterize

    shape = (im.height, im.width)
    pc = pred.centroids()
    found, best = 0, []
    for a in im.annotations:
        m = rasterize(a.polygons, shape)
        r, c = np.nonzero(m)
        if not len(r):
            continue
        if len(pc) and np.min(np.hypot(pc[:, 0] - r.mean(), pc[:, 1] - c.mean())) <= MAX_DIST_MM:
            found += 1
        best.append(max((dice(m, p) for p in pred.masks), default=0.0))
    return found, best


def _overlay(im, pred, path: Path) -> None:
    """PNG: the MIP with the true vertebrae (left) and the predicted ones (right), each
    filled in its level's colour and named; the level summary above."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from napari_vertebra.annotation.polygons import rasterize
    from napari_vertebra.core.labels import class_colour

    h, w = im.height, im.width
    truth = [(rasterize(a.polygons, (h, w)), a.class_id, a.name) for a in im.annotations]
    shown = list(zip(pred.masks, pred.classes, pred.names, strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.2 + w / 50), 0.8 + h / 50), dpi=100)
    for ax, items, title in ((axes[0], truth, "truth"), (axes[1], shown, "predicted")):
        ax.imshow(im.image, cmap="gray", vmin=0, vmax=1500)
        for m, c, name in items:
            rgba = matplotlib.colors.to_rgba(class_colour(int(c)), 0.45)
            layer = np.zeros((h, w, 4))
            layer[m] = rgba
            ax.imshow(layer)
            r, cc = np.nonzero(m)
            if len(r):
                ax.text(cc.mean(), r.mean(), name, color="white", fontsize=7,
                        ha="center", va="center", weight="bold")  # fmt: skip
        ax.set_title(title, color="white", fontsize=8)
        ax.axis("off")
    fig.suptitle(pred.level_summary or "nothing found", color="white", fontsize=7, wrap=True)
    fig.savefig(path, bbox_inches="tight", facecolor="black")
    plt.close(fig)


# ------------------------------------------------------------------------------ table
ROWS = (
    ("detection_recall", "recall"),
    ("id_rate", "id rate"),
    ("localisation_mm", "loc mm"),
    ("mean_dice", "Dice"),
    ("segmentation_dice", "Dice any"),
    ("level_certain_share", "certain"),
    ("level_certain_id_rate", "id certain"),
)


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_table(arm: str, results: dict[str, dict], seconds: dict[str, float]) -> None:
    """One row per scan left out, then the pooled row (mean over all test images)."""
    head = f"{'scan left out':<16}{'images':>7}{'vert':>6}" + "".join(f"{t:>11}" for _, t in ROWS)
    print(f"\n{arm}\n{head}{'train s':>9}")
    for scan, m in results.items():
        cells = "".join(f"{_f(m.get(k)):>11}" for k, _ in ROWS)
        print(f"{scan:<16}{m['n_images']:>7}{m['n_vertebrae']:>6}{cells}{seconds[scan]:>9.0f}")
    pooled = pool(results)
    cells = "".join(f"{_f(pooled.get(k)):>11}" for k, _ in ROWS)
    print(f"{'pooled':<16}{pooled['n_images']:>7}{pooled['n_vertebrae']:>6}{cells}")


def pool(results: dict[str, dict]) -> dict:
    """Metrics over all test images of every fold (image-weighted; recall and Dice
    vertebra-weighted; certainty over the images called certain)."""
    ms = list(results.values())
    n_img = sum(m["n_images"] for m in ms)
    n_v = sum(m["n_vertebrae"] for m in ms)

    def wmean(key: str, weight: str) -> float | None:
        pairs = [(m[key], m[weight]) for m in ms if m.get(key) is not None and m[weight]]
        return sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else None

    out = {"n_images": n_img, "n_vertebrae": n_v}
    out["id_rate"] = wmean("id_rate", "n_images")
    for k in ("detection_recall", "mean_dice", "segmentation_dice", "localisation_mm"):
        out[k] = wmean(k, "n_vertebrae")
    certain = [(m.get("level_certain_share") or 0) * m["n_images"] for m in ms]
    out["level_certain_share"] = sum(certain) / n_img if n_img else None
    pairs = [
        (m["level_certain_id_rate"], c)
        for m, c in zip(ms, certain, strict=True)
        if m.get("level_certain_id_rate") is not None and c
    ]
    out["level_certain_id_rate"] = (
        sum(v * c for v, c in pairs) / sum(c for _, c in pairs) if pairs else None
    )
    return out


# ------------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scans", type=Path, default=SCANS_CSV)
    p.add_argument("--arms", default="synth,real3d")
    p.add_argument("--folds", default="all", help="scans to leave out, comma-separated")
    p.add_argument("--aug", type=int, default=40, help="3D augmentations per training scan")
    p.add_argument("--views", type=int, default=6, help="partial views per image")
    p.add_argument("--test-views", type=int, default=10)
    p.add_argument("--synth-columns", type=int, default=40)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per training")
    p.add_argument("--config", default="starter")
    p.add_argument("--min-score", type=float, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "real_scans")
    p.add_argument("--reuse", action="store_true", help="evaluate existing runs only")
    args = p.parse_args()
    scans = load_scans(args.scans)
    folds = list(scans) if args.folds == "all" else args.folds.split(",")
    tests = {s: test_images(s, scans[s], args.test_views, args.seed + 7) for s in folds}
    for arm in args.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        results, seconds = {}, {}
        for scan in folds:
            run = args.out / arm / "runs" / ("all" if arm == "synth" else scan)
            if args.reuse and (run / "last.pt").is_file():
                seconds[scan] = json.loads((run / "time.json").read_text())["seconds"]
            else:
                data = fold_data(args.out, arm, [s for s in scans if s != scan], scans, args)
                seconds[scan] = train(args.config, data, run, args.steps, args)
            results[scan] = evaluate(
                run / "last.pt", tests[scan], args.out / arm / scan, args.min_score
            )
        print_table(arm, results, seconds)
        with (args.out / f"{arm}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["scan"] + [k for k, _ in ROWS] + ["n_images", "n_vertebrae"])
            for scan, m in {**results, "pooled": pool(results)}.items():
                w.writerow(
                    [scan] + [m.get(k) for k, _ in ROWS] + [m["n_images"], m["n_vertebrae"]]
                )


if __name__ == "__main__":
    main()
