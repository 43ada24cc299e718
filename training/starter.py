"""Train the starter model in one command: real scans -> 3D-augmented MIPs -> Mask R-CNN.

    .venv/bin/python training/starter.py -o runs/starter            # the repo's 4 real scans, CPU
    .venv/bin/python training/starter.py VERSE_OR_TOTALSEG_FOLDER [more ...] \\
        -o runs/starter --device cuda --aug 10 --steps 20000            # your scans, a GPU

Inputs: pairs CSVs (``scan,ct,labels,convention``; default ``data/ct/scans.csv``),
folders in the VerSe or TotalSegmentator layout, or COCO files. Each CT with its label
map gives its own MIP and ``--aug`` MIPs of random 3D changes of the scan
(napari_vertebra.core.augment), each with ``--views`` partial views of 4..17 vertebrae;
all go to the training split. The ``starter`` configuration (napari_vertebra/configs/
starter.yaml) then trains for about ``--steps`` optimizer steps (on 2 CPU cores 1.3 to
2.3 s a step: the default 2000 steps take 45 to 80 minutes; the shipped model is these
defaults). ``--ship`` writes
RUN/last.pt as the package's starter model (napari_vertebra/weights/starter.pt, weights
in half precision), with the figures of ``--figures`` (a metrics JSON of
benchmarks/real_scans.py, measured on scans left out) as the validation figures every
naming is shown with, and its replay set (napari_vertebra/weights/starter_replay: each
scan's own MIP and ``--replay`` of its 3D changes, whole, that a fine-tuning run mixes
in). See docs/starter_model.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(inputs: list[str], out: Path, aug: int, views: int, seed: int) -> Path:
    """The training data folder (``out/train``, val = train) of ``inputs``."""
    from napari_vertebra.annotation.dataset import build_dataset, read_pairs_csv

    if (out / "train" / "annotations.json").is_file():
        print(f"reusing the dataset in {out}")
        return out
    items: list = []
    for i in inputs:
        items += read_pairs_csv(i) if i.endswith(".csv") else [i]
    t = time.time()
    build_dataset(
        items, out, views_per_image=views, seed=seed, fractions=(1, 0, 0),
        augment_3d=aug, class_set="extended", progress=_bar("dataset"),
    )  # fmt: skip
    print(f"dataset built in {time.time() - t:.0f} s: {out}")
    return out


def _bar(desc: str):
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, file=sys.stderr)

    def progress(fraction: float, message: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(message[:40])
        bar.refresh()

    return progress


def write_replay(data: Path, out: Path, per_scan: int) -> int:
    """Write the whole (not partial) MIPs of ``data/train``, each scan's own and its first
    ``per_scan`` 3D changes, as a COCO folder ``out``; the number of images."""
    import shutil

    from napari_vertebra.annotation.coco import read_coco, write_coco

    keep = []
    for im in read_coco(data / "train" / "annotations.json", load_images=True):
        aug = re.search(r"_aug(\d+)_full$", Path(im.file_name).stem)
        if im.meta.get("view") == "full" and (aug is None or int(aug[1]) < per_scan):
            keep.append(im)
    shutil.rmtree(out, ignore_errors=True)
    write_coco(keep, out, class_set="extended")
    return len(keep)


def train(data: Path, run: Path, steps: int, device: str, seed: int, config: str) -> dict:
    """Train the starter configuration for about ``steps`` steps; the trainer's result."""
    from napari_vertebra.model.config import load_config
    from napari_vertebra.model.train import train as run_training

    n = len(json.loads((data / "train" / "annotations.json").read_text())["images"])
    cfg = load_config(config)
    epochs = max(1, round(steps / max(1, n // cfg.batch_size)))
    cfg = cfg.replace(epochs=epochs, seed=seed)
    print(f"training {config}: {n} images, {epochs} epochs (~{steps} steps) on {device}")
    t = time.time()
    out = run_training(cfg, data, run, device=device, verbose=True)
    print(f"trained in {(time.time() - t) / 60:.1f} min: {run}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="pairs CSVs, VerSe/TotalSegmentator folders, COCO")
    p.add_argument("-o", "--output", type=Path, default=ROOT / "runs" / "starter")
    p.add_argument("--aug", type=int, default=40, help="3D augmentations per scan")
    p.add_argument("--views", type=int, default=4, help="partial views per MIP")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (about)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--config", default="starter", help="a shipped configuration or a YAML")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ship", action="store_true", help="write the package's starter.pt")
    p.add_argument("--figures", type=Path, help="benchmark metrics JSON to ship with it")
    p.add_argument(
        "--figures-on", default="a scan left out of training",
        help="what those figures were measured on (shown with every certain naming)",
    )  # fmt: skip
    p.add_argument("--replay", type=int, default=2, help="3D changes per scan to ship")
    args = p.parse_args()
    inputs = args.inputs or [str(ROOT / "data" / "ct" / "scans.csv")]
    data = build(inputs, args.output / "dataset", args.aug, args.views, args.seed)
    run = args.output / "run"
    if not (run / "last.pt").is_file():
        train(data, run, args.steps, args.device, args.seed, args.config)
    if args.ship:
        from napari_vertebra.model.starter import STARTER_NAME, export_starter

        figures = None
        if args.figures:  # a metrics.json of benchmarks/real_scans.py: val_* figures
            items = json.loads(args.figures.read_text()).items()
            figures = {f"val_{k}": v for k, v in items if isinstance(v, (int, float))}
        out = ROOT / "napari_vertebra" / "weights" / STARTER_NAME
        note = f"trained by {' '.join(sys.argv[1:])}"
        export_starter(run / "last.pt", out, figures, note, args.figures_on if figures else "")
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        n = write_replay(data, out.parent / "starter_replay", args.replay)
        print(f"wrote {n} replay MIPs to {out.parent / 'starter_replay'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
